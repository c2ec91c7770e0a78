"""Image loading and the torch ``Dataset`` used for training and evaluation.

Resize policy
    Every image is resized directly to ``S x S`` (aspect ratio *not* kept, no crop), as Dinomaly,
    ADer and MambaAD do for MVTec-AD/VisA/MPDD. This matters for MTD, whose images are not
    square and vary in size (103-632 x 222-403): a crop would cut defects off. Images use PIL
    bicubic resampling (PIL's resize is antialiased: the filter support grows when downscaling);
    masks use nearest neighbour so they stay binary and aligned with the image.

Image conversion (:func:`load_image_rgb`)
    Grayscale (``L``), 1-bit, palette, CMYK, YCbCr ... are converted to RGB with PIL. 16-bit
    grayscale (``I;16*``, and 32-bit ``I``) is scaled with the *fixed* 16-bit range (value/257),
    never per-image min/max, so that brightness anomalies survive. Float images (``F``) are taken
    as [0, 1] if their maximum is <= 1, else as [0, 255]. Alpha is dropped (not composited), as
    ``PIL.Image.convert("RGB")`` does in the reference implementations. EXIF orientation is *not*
    applied (masks have none, and the reference implementations do not either).
    Tensor: float in [0, 1], then ``(x - mean) / std`` per channel.

Masks (:func:`load_mask`)
    Read as values in [0, 1] (0/1-encoded masks as 0/1), resized nearest and binarised with ``> 0``
    by default (any channel); threshold and resampling are protocol options (``evaluation``
    config): MTD and MVTec-AD masks are 0/255, and Dinomaly's
    loaders likewise treat every non-zero pixel as defective. A mask whose size differs from its
    image is an error (:class:`ValueError` naming both files and sizes), never silently resized.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..backbones.base import IMAGENET_MEAN, IMAGENET_STD  # the default normalisation (re-exported)
from ..errors import DataError
from .mvtec import Sample

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageDataset",
    "load_image_rgb",
    "load_image_array",
    "load_mask",
    "normalized_image_tensor",
    "read_mask",
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


def _resize_rgb(im: Image.Image, size: int) -> Image.Image:
    if im.size == (size, size):
        return im
    return im.resize((size, size), Image.Resampling.BICUBIC)


def normalized_image_tensor(
    im: Image.Image, size: int, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """The model input of one image, ``FloatTensor (3, size, size)``: converted to 8-bit RGB (module
    docstring), resized directly to ``size x size`` (PIL bicubic, aspect not kept), scaled to [0, 1], then
    ``(x - mean) / std`` per channel. Training, evaluation and ``Detector.preprocess`` all use it."""
    a = np.asarray(_resize_rgb(_to_rgb(im), int(size)), dtype=np.float32) / 255.0
    x = torch.from_numpy(a.transpose(2, 0, 1).copy())
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean_t) / std_t


def load_image_array(path: Path | str, size: int) -> np.ndarray:
    """``uint8`` array ``(size, size, 3)``, resized like the model input (for visualisation)."""
    return np.asarray(_resize_rgb(load_image_rgb(path), int(size)), dtype=np.uint8).copy()


MASK_RESIZE_MODES = ("nearest", "bilinear")
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


def resize_binarise_mask(values: np.ndarray, size: int, threshold: float = 0.0, mode: str = "nearest") -> np.ndarray:
    """Mask values in [0, 1] -> bool ``(size, size)``: resampled with ``mode`` (nearest | bilinear),
    then ``> threshold``. The defaults (nearest, > 0) keep every labelled pixel; ``bilinear`` + 0.5
    is the rule of repositories that resize masks like images and threshold at one half."""
    if mode not in MASK_RESIZE_MODES:
        raise ValueError(f"mask_resize must be one of {MASK_RESIZE_MODES}, got {mode!r}")
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"mask_threshold must be in [0, 1), got {threshold}")
    if values.shape != (size, size):
        resample = Image.Resampling.NEAREST if mode == "nearest" else Image.Resampling.BILINEAR
        values = np.asarray(
            Image.fromarray(np.ascontiguousarray(values, dtype=np.float32)).resize((size, size), resample)
        )
    return values > float(threshold)


def load_mask(path: Path | str, size: int, threshold: float = 0.0, mode: str = "nearest") -> np.ndarray:
    """Mask resized to ``(size, size)`` and binarised (default: nearest, ``> 0``) as a bool array."""
    return resize_binarise_mask(read_mask_values(path), int(size), threshold, mode)


def _as_triple(v, name: str) -> tuple[float, float, float]:
    values = (float(v),) * 3 if np.ndim(v) == 0 else tuple(float(x) for x in v)
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 values (one per RGB channel), got {values}")
    return values[0], values[1], values[2]


class ImageDataset(torch.utils.data.Dataset):
    """Samples -> ``{"image", "mask", "label", "index"}``.

    ``image``: ``FloatTensor (3, S, S)`` normalised with ``mean``/``std``;
    ``mask``: ``FloatTensor (1, R, R)`` in {0, 1} (``R = mask_size``, default ``S``; binarised with
    ``mask_threshold`` after ``mask_resize`` resampling) (zeros for good images, for samples without a
    mask, and for every sample when ``load_masks=False``); ``label``: 0 good / 1 defective;
    ``index``: position in ``samples`` (use ``dataset.samples[index]`` for path/category/defect).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        load_masks: bool = True,
        mask_size: int | None = None,
        mask_threshold: float = 0.0,
        mask_resize: str = "nearest",
    ):
        self.samples = list(samples)
        self.image_size = int(image_size)
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.mean = _as_triple(mean, "mean")
        self.std = _as_triple(std, "std")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        self.load_masks = bool(load_masks)
        # evaluation protocol (config ``evaluation``): masks at their own resolution and binarisation rule
        self.mask_size = int(mask_size) if mask_size else self.image_size
        self.mask_threshold = float(mask_threshold)
        self.mask_resize = mask_resize
        resize_binarise_mask(np.zeros((1, 1), np.float32), 1, self.mask_threshold, self.mask_resize)  # validate
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._std_t = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def to_tensor(self, im: Image.Image) -> torch.Tensor:
        return normalized_image_tensor(im, self.image_size, self._mean_t, self._std_t)

    def __getitem__(self, i: int) -> dict:
        if i < 0:
            i += len(self.samples)
        s = self.samples[i]
        im = load_image_rgb(s.image_path)
        S = self.mask_size
        if self.load_masks and s.mask_path is not None:
            m = read_mask_values(s.mask_path)
            if (m.shape[1], m.shape[0]) != im.size:
                raise DataError(
                    f"mask {str(s.mask_path)!r} has size {m.shape[1]}x{m.shape[0]} (WxH) but its image "
                    f"{str(s.image_path)!r} has size {im.size[0]}x{im.size[1]}"
                )
            mask = torch.from_numpy(
                resize_binarise_mask(m, S, self.mask_threshold, self.mask_resize).astype(np.float32)
            )[None]
        else:
            mask = torch.zeros(1, S, S, dtype=torch.float32)
        return {"image": self.to_tensor(im), "mask": mask, "label": int(s.label), "index": i}
