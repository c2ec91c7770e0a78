"""Image helpers of the report: PNG encoding, resizing maps and masks for display, labelled panel strips."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dpdiff.viz.overlay import CONTOUR_RGB, HEAT_ALPHA, heat_colors

__all__ = [
    "display_size",
    "heat_blend",
    "labelled_panels",
    "png_bytes",
    "resize_map",
    "resize_mask",
    "upsample_grid",
]


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def resize_map(m: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """A float map at ``size`` (a square side or (H, W)), bilinear."""
    h, w = _hw(size)
    if m.shape == (h, w):
        return m
    return np.asarray(Image.fromarray(np.asarray(m, np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR))


def resize_mask(m: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """A bool mask at ``size`` (a square side or (H, W)), nearest neighbour."""
    h, w = _hw(size)
    if m.shape == (h, w):
        return m
    return np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 127


def upsample_grid(grid_map: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """A (h, w) token-grid map at ``size`` (a square side or (H, W)), bilinear as the anomaly maps are upsampled
    (Eq. 23)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.asarray(grid_map, np.float32))[None, None]
    return F.interpolate(t, size=_hw(size), mode="bilinear", align_corners=False)[0, 0].numpy()


def display_size(map_size: int | tuple[int, int], largest: int) -> tuple[int, int]:
    """(H, W) of a figure panel: the map size, scaled down (aspect kept) so its long side is at most ``largest``."""
    h, w = _hw(map_size)
    f = min(1.0, largest / max(h, w))
    return max(1, round(h * f)), max(1, round(w * f))


def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - very old Pillow
        return ImageFont.load_default()


def labelled_panels(
    panels: list[np.ndarray], labels: list[str], title: str | None = None, gap: int = 4, band: int = 18
) -> np.ndarray:
    """Panels side by side, each with a label band on top, and an optional title band over all."""
    h = max(p.shape[0] for p in panels)
    w = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    top = (band if title else 0) + band
    canvas = Image.new("RGB", (w, top + h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    if title:
        draw.text((3, 2), title, fill=(0, 0, 0), font=font)
    x = 0
    for p, lab in zip(panels, labels, strict=True):
        canvas.paste(Image.fromarray(p), (x, top))
        draw.text((x + 3, top - band + 2), lab, fill=(0, 0, 0), font=font)
        x += p.shape[1] + gap
    return np.asarray(canvas)


def heat_blend(img: np.ndarray, m: np.ndarray, vmin: float, vmax: float, edge: np.ndarray | None) -> np.ndarray:
    """``img`` with the heat colours of ``m`` blended on top and the ``edge`` pixels in the contour colour."""
    heat = heat_colors(m, vmin, vmax).astype(np.float32)
    out = np.clip(img.astype(np.float32) * (1 - HEAT_ALPHA) + heat * HEAT_ALPHA + 0.5, 0, 255).astype(np.uint8)
    if edge is not None:
        out[edge] = CONTOUR_RGB
    return out
