"""Image and mask reading, in numpy and Pillow only (no torch): what training, evaluation, the Python API and
the onnxruntime runner share (``dpdiff.data.dataset`` builds the torch ``Dataset`` on it).

Image conversion (:func:`load_image_rgb`)
    Grayscale (``L``), 1-bit, palette, CMYK, YCbCr ... are converted to RGB with PIL. 16-bit
    grayscale (``I;16*``, and 32-bit ``I``) is scaled with the *fixed* 16-bit range (value/257),
    never per-image min/max, so that brightness anomalies survive. Float images (``F``) are taken
    as [0, 1] if their maximum is <= 1, else as [0, 255]. Alpha is dropped (not composited), as
    ``PIL.Image.convert("RGB")`` does in the reference implementations. EXIF orientation is *not*
    applied (masks have none, and the reference implementations do not either).
    Model input (:func:`normalized_image_array`): direct bicubic resize to ``H x W``, float in [0, 1], then
    ``(x - mean) / std`` per channel. The region of interest and the letterbox (``data.roi``,
    ``data.resize``) are :mod:`dpdiff.data.geometry`'s, around this function.

Masks (:func:`read_mask_values`, :func:`resize_binarise_mask`)
    Read as values in [0, 1] (0/1-encoded masks as 0/1), resized nearest and binarised with ``> 0``
    by default (any channel); threshold and resampling are protocol options (``evaluation`` config).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dpdiff.choices import MASK_RESIZE_MODES
from dpdiff.utils.errors import DataError
from dpdiff.utils.sizes import as_hw

__all__ = [
    "MASK_RESIZE_MODES",
    "load_image_rgb",
    "load_image_array",
    "load_mask",
    "normalized_image_array",
    "read_mask",
    "read_mask_values",
    "resize_binarise_mask",
]


_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def _open(path: Path | str) -> Image.Image:
    """Open and fully decode ``path``; any decoding problem becomes a ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            # Image.open is lazy and keeps the file handle; copy() detaches the decoded data.
            return im.copy()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ... on bad files
        raise DataError(f"cannot read image file {str(path)!r} (corrupt or truncated?): {e}") from e


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        a = np.asarray(im).astype(np.float64)
        a = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a).convert("RGB")
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(a).convert("RGB")
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        return _to_rgb(im)
    # L, LA, 1, RGBA, RGBX, CMYK, YCbCr, LAB, HSV, La, PA ...: PIL drops alpha when converting
    return im.convert("RGB")


def load_image_rgb(path: Path | str) -> Image.Image:
    """Load any supported image as an 8-bit RGB PIL image (see module docstring)."""
    return _to_rgb(_open(path))


def _resize_rgb(im: Image.Image, size: int | Sequence[int]) -> Image.Image:
    h, w = as_hw(size)
    if im.size == (w, h):
        return im
    return im.resize((w, h), Image.Resampling.BICUBIC)


def normalized_image_array(
    im: Image.Image,
    size: int | Sequence[int],
    mean: Sequence[float] | np.ndarray,
    std: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """The model input of one image, float32 ``(3, H, W)`` (``size``: a square side or ``(H, W)``): converted to
    8-bit RGB (module docstring), resized directly to ``H x W`` (PIL bicubic, aspect not kept), scaled to [0, 1],
    then ``(x - mean) / std`` per channel. Training, evaluation, ``Detector.preprocess`` and the onnxruntime
    runner all use it, through :class:`dpdiff.data.geometry.ImageGeometry` (in float32, so every runtime gets
    the same bits)."""
    a = np.asarray(_resize_rgb(_to_rgb(im), size), dtype=np.float32) / np.float32(255.0)
    mean_a = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3)
    std_a = np.asarray(std, dtype=np.float32).reshape(1, 1, 3)
    return np.ascontiguousarray(((a - mean_a) / std_a).transpose(2, 0, 1))


def load_image_array(path: Path | str, size: int | Sequence[int]) -> np.ndarray:
    """``uint8`` array ``(H, W, 3)`` (``size``: a square side or ``(H, W)``), resized like the model input (for
    visualisation)."""
    return np.asarray(_resize_rgb(load_image_rgb(path), size), dtype=np.uint8).copy()


#: Integer masks whose largest value is at most this are label ids (0/1, class ids), not intensities.
LABEL_ID_MAX = 15


def read_mask_values(path: Path | str) -> np.ndarray:
    """Mask at its native size as float32 ``(H, W)`` in [0, 1]: the maximum over the colour channels
    (alpha ignored) divided by the format's full scale (255 for 8-bit, 65535 for 16-bit). Integer
    masks whose maximum is at most ``LABEL_ID_MAX`` are label encodings (0/1 copies, VisA class ids
    1..9) and read as 0/1, not as 0/(1/255), so a 0.5 threshold keeps them."""
    im = _open(path)
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    a = np.asarray(im)
    if a.ndim == 3:
        # ignore alpha: a 0/255 mask saved with an opaque alpha must not become all-foreground
        keep = [k for k, b in enumerate(im.getbands()) if b not in ("A", "a")]
        a = a[..., keep].max(axis=2)
    if a.dtype == bool:
        return a.astype(np.float32)
    if a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float32), nan=0.0)
        return np.clip(a / 255.0 if a.max(initial=0.0) > 1.0 else a, 0.0, 1.0)
    peak = int(a.max(initial=0))
    if peak <= LABEL_ID_MAX:  # 0/1 or class-id encodings (VisA 1..9): any label is defect
        return (a != 0).astype(np.float32)
    full = 65535.0 if (im.mode in _SIXTEEN_BIT_MODES or im.mode == "I" or peak > 255) else 255.0
    return np.clip(a.astype(np.float32) / full, 0.0, 1.0)


def read_mask(path: Path | str) -> np.ndarray:
    """Mask at its native size as a bool array ``(H, W)``: ``True`` where any channel is > 0."""
    return read_mask_values(path) > 0


def resize_binarise_mask(
    values: np.ndarray, size: int | Sequence[int], threshold: float = 0.0, mode: str = "nearest"
) -> np.ndarray:
    """Mask values in [0, 1] -> bool ``(H, W)`` (``size``: a square side or ``(H, W)``): resampled with ``mode``
    (nearest | bilinear),
    then ``> threshold``. The defaults (nearest, > 0) keep every labelled pixel; ``bilinear`` + 0.5
    is the rule of repositories that resize masks like images and threshold at one half."""
    if mode not in MASK_RESIZE_MODES:
        raise ValueError(f"mask_resize must be one of {MASK_RESIZE_MODES}, got {mode!r}")
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"mask_threshold must be in [0, 1), got {threshold}")
    h, w = as_hw(size)
    if values.shape != (h, w):
        resample = Image.Resampling.NEAREST if mode == "nearest" else Image.Resampling.BILINEAR
        values = np.asarray(Image.fromarray(np.ascontiguousarray(values, dtype=np.float32)).resize((w, h), resample))
    return values > float(threshold)


def load_mask(path: Path | str, size: int | Sequence[int], threshold: float = 0.0, mode: str = "nearest") -> np.ndarray:
    """Mask resized to ``size`` (a square side or ``(H, W)``) and binarised (default: nearest, ``> 0``) as a bool
    array."""
    return resize_binarise_mask(read_mask_values(path), size, threshold, mode)
