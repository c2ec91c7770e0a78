"""Anomaly-map overlays composed with numpy + Pillow (no matplotlib figure: ~10 ms per image)."""

from __future__ import annotations

import io
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from dpdiff.figure_data import OverlayItem
from dpdiff.utils.io import atomic_write_bytes
from dpdiff.utils.progress import progress

__all__ = [
    "save_overlay",
    "save_overlay_items",
    "compose_overlay",
    "heat_colors",
    "mask_boundary",
    "PANEL_GAP",
    "TITLE_HEIGHT",
]

#: White gap (pixels) between panels.
PANEL_GAP = 4
#: Height (pixels) of the title band when a title is given.
TITLE_HEIGHT = 22
#: Ground-truth contour colour.
CONTOUR_RGB = (255, 0, 0)
HEAT_ALPHA = 0.5


@lru_cache(maxsize=4)
def _lut(cmap_name: str) -> np.ndarray:
    import matplotlib  # colormap tables only; no backend / figure involved

    cmap = matplotlib.colormaps[cmap_name]
    return np.round(cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


def heat_colors(
    anomaly_map: np.ndarray, vmin: float | None = None, vmax: float | None = None, cmap: str = "jet"
) -> np.ndarray:
    """(H,W) scores -> (H,W,3) uint8 colours; scale fixed by vmin/vmax (default: map min/max)."""
    m = np.asarray(anomaly_map, dtype=np.float32)
    finite = np.isfinite(m)
    lo = float(np.min(m[finite])) if vmin is None and finite.any() else (0.0 if vmin is None else float(vmin))
    hi = float(np.max(m[finite])) if vmax is None and finite.any() else (1.0 if vmax is None else float(vmax))
    if hi > lo:
        norm = (m - lo) / (hi - lo)
    else:
        norm = np.zeros_like(m)
    norm = np.nan_to_num(norm, nan=0.0, posinf=1.0, neginf=0.0)
    idx = np.clip(norm * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return _lut(cmap)[idx]


def mask_boundary(mask: np.ndarray, thickness: int | None = None) -> np.ndarray:
    """Inner boundary of a binary mask: ``mask XOR eroded(mask)``; thickness grows with image size."""
    mask = _binary(mask)
    if not mask.any():
        return mask
    if thickness is None:
        thickness = max(1, int(round(min(mask.shape) / 256)))
    eroded = ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), iterations=thickness)
    return mask & ~eroded


def _binary(mask) -> np.ndarray:
    m = np.asarray(mask)
    return m > 0.5 if m.dtype.kind == "f" else m != 0


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be (H,W,3) (or (H,W)); got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img[..., :3]
    if img.dtype != np.uint8:
        if img.dtype.kind == "f" and float(np.nanmax(img, initial=0.0)) <= 1.0:
            img = img * 255.0
        img = np.clip(np.nan_to_num(img), 0, 255).astype(np.uint8)
    return img


def _resize(arr: np.ndarray, size_hw: tuple[int, int], nearest: bool) -> np.ndarray:
    if arr.shape[:2] == size_hw:
        return arr
    pil = Image.fromarray(
        arr.astype(np.uint8) * 255 if nearest else arr.astype(np.float32), mode="L" if nearest else "F"
    )
    pil = pil.resize((size_hw[1], size_hw[0]), Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR)
    out = np.asarray(pil)
    return out > 127 if nearest else out


def compose_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    mask: np.ndarray | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
) -> np.ndarray:
    """The panels of :func:`save_overlay` as one (H', W', 3) uint8 array."""
    img = _to_rgb_uint8(image)
    h, w = img.shape[:2]
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.ndim == 3 and amap.shape[0] == 1:
        amap = amap[0]
    if amap.ndim != 2:
        raise ValueError(f"anomaly_map must be (H,W); got shape {amap.shape}")
    amap = _resize(amap, (h, w), nearest=False)

    heat = heat_colors(amap, vmin, vmax)
    blend = img.astype(np.float32) * (1.0 - HEAT_ALPHA) + heat.astype(np.float32) * HEAT_ALPHA
    blend = np.clip(blend + 0.5, 0, 255).astype(np.uint8)

    panels = [img]
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim == 3 and m.shape[0] == 1:
            m = m[0]
        m = _resize(_binary(m), (h, w), nearest=True)
        edge = mask_boundary(m)
        gt = img.copy()
        gt[edge] = CONTOUR_RGB
        blend[edge] = CONTOUR_RGB
        panels.append(gt)
    panels.append(blend)

    top = TITLE_HEIGHT if title else 0
    width = len(panels) * w + (len(panels) - 1) * PANEL_GAP
    canvas = np.full((top + h, width, 3), 255, dtype=np.uint8)
    for i, p in enumerate(panels):
        x = i * (w + PANEL_GAP)
        canvas[top : top + h, x : x + w] = p
    if title:
        pil = Image.fromarray(canvas)
        draw = ImageDraw.Draw(pil)
        draw.text((4, 3), str(title), fill=(0, 0, 0), font=_font())
        canvas = np.asarray(pil)
    return canvas


@lru_cache(maxsize=1)
def _font():
    try:
        return ImageFont.load_default(size=14)
    except TypeError:  # very old Pillow without scalable default font
        return ImageFont.load_default()


def save_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    out_path,
    mask: np.ndarray | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG with panels side by side (white gap of ``PANEL_GAP`` px):

    1. the input image; 2. the image with the ground-truth contour in red (only when ``mask`` is
    given); 3. the jet heat-map of ``anomaly_map`` blended over the image (alpha 0.5) with the GT
    contour.  The colour scale is fixed by ``vmin``/``vmax`` (default: the map's own min/max), so
    pass run-wide values to make overlays comparable.  A ``title`` adds a band of
    ``TITLE_HEIGHT`` px on top.  ``anomaly_map``/``mask`` are resized to the image if needed.
    Written atomically; returns the path.
    """
    canvas = compose_overlay(image, anomaly_map, mask=mask, vmin=vmin, vmax=vmax, title=title)
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG", compress_level=3)
    return atomic_write_bytes(out_path, buf.getvalue())


def save_overlay_items(items: Iterable[OverlayItem], folder: str | Path) -> list[Path]:
    """Draw the overlays kept by evaluation or prediction (:class:`~dpdiff.figure_data.OverlayItem`): each
    image read, cut to its region of interest and resized to the map's frame, its map on top, written to
    ``folder / item.file``."""
    from dpdiff.data.geometry import eval_image_array

    written = []
    for it in progress(list(items), desc="overlays", leave=False):
        written.append(
            save_overlay(
                eval_image_array(it.image, it.size, getattr(it, "roi", None)),
                it.map,
                Path(folder) / it.file,
                mask=it.mask,
                vmin=it.vmin,
                vmax=it.vmax,
                title=it.title,
            )
        )
    return written
