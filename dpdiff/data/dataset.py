"""The torch ``Dataset`` used for training and evaluation (image and mask reading: :mod:`dpdiff.data.images`).

Resize policy
    By default every image is resized directly to ``S x S`` (aspect ratio *not* kept, no crop), as Dinomaly,
    ADer and MambaAD do for MVTec-AD/VisA/MPDD. This matters for MTD, whose images are not
    square and vary in size (103-632 x 222-403): a crop would cut defects off. Images use PIL
    bicubic resampling (PIL's resize is antialiased: the filter support grows when downscaling);
    masks use nearest neighbour so they stay binary and aligned with the image. Non-square inputs, the
    letterbox (``data.resize: keep_aspect``) and the region of interest (``data.roi``) are
    :class:`dpdiff.data.geometry.ImageGeometry`'s: the dataset takes one and applies it to images and masks.

Image conversion and the model input: :mod:`dpdiff.data.images` (numpy and Pillow, shared with the onnxruntime
runner); :func:`normalized_image_tensor` is its torch form.

Masks
    MTD and MVTec-AD masks are 0/255, and Dinomaly's loaders likewise treat every non-zero pixel as
    defective (:mod:`dpdiff.data.images` reads them). A mask whose size differs from its image is an error
    (:class:`ValueError` naming both files and sizes), never silently resized.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from dpdiff.backbones.base import IMAGENET_MEAN, IMAGENET_STD  # the default normalisation (re-exported)
from dpdiff.data.geometry import ImageGeometry, as_geometry
from dpdiff.data.images import (
    load_image_array,
    load_image_rgb,
    load_mask,
    normalized_image_array,
    read_mask,
    read_mask_values,
    resize_binarise_mask,
)
from dpdiff.data.types import Sample
from dpdiff.utils.errors import DataError
from dpdiff.utils.sizes import as_hw

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


def normalized_image_tensor(
    im: Image.Image,
    size: int | Sequence[int],
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """:func:`~dpdiff.data.images.normalized_image_array` as a ``FloatTensor (3, H, W)``."""
    as_list = [np.asarray(v, dtype=np.float32).reshape(-1) for v in (mean, std)]
    return torch.from_numpy(normalized_image_array(im, size, as_list[0], as_list[1]))


def _as_triple(v, name: str) -> tuple[float, float, float]:
    values = (float(v),) * 3 if np.ndim(v) == 0 else tuple(float(x) for x in v)
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 values (one per RGB channel), got {values}")
    return values[0], values[1], values[2]


class ImageDataset(torch.utils.data.Dataset):
    """Samples -> ``{"image", "mask", "label", "index", "image_hw"}``.

    ``image_size``: an :class:`~dpdiff.data.geometry.ImageGeometry` (input size, resize mode, region of
    interest), or a size (one int or ``(H, W)``: the plain geometry, a direct resize of the whole image).
    ``image``: ``FloatTensor (3, H, W)`` normalised with ``mean``/``std`` (:meth:`ImageGeometry.model_input`);
    ``mask``: ``FloatTensor (1, Hm, Wm)`` in {0, 1} on the evaluation frame (``mask_size``, default the
    geometry's map size; the ROI cut out, binarised with ``mask_threshold`` after ``mask_resize`` resampling)
    (zeros for good images, for samples without a mask, and for every sample when ``load_masks=False``);
    ``label``: 0 good / 1 defective; ``index``: position in ``samples`` (use ``dataset.samples[index]`` for
    path/category/defect); ``image_hw``: the image's own (H, W) (``LongTensor (2,)``), to bring its maps back.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int | Sequence[int] | ImageGeometry,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        load_masks: bool = True,
        mask_size: int | Sequence[int] | None = None,
        mask_threshold: float = 0.0,
        mask_resize: str = "nearest",
    ):
        self.samples = list(samples)
        geometry = as_geometry(image_size)
        if mask_size:
            geometry = dataclasses.replace(geometry, map_size=as_hw(mask_size, "mask_size"))
        self.geometry = geometry
        self.image_size = geometry.size
        self.mean = _as_triple(mean, "mean")
        self.std = _as_triple(std, "std")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        self.load_masks = bool(load_masks)
        # evaluation protocol (config ``evaluation``): masks at their own resolution and binarisation rule
        self.mask_size = geometry.map_hw
        self.mask_threshold = float(mask_threshold)
        self.mask_resize = mask_resize
        resize_binarise_mask(np.zeros((1, 1), np.float32), 1, self.mask_threshold, self.mask_resize)  # validate
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._std_t = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def to_tensor(
        self, im: Image.Image, source: str | None = None, crop: tuple[int, int, int, int] | None = None
    ) -> torch.Tensor:
        return torch.from_numpy(self.geometry.model_input(im, self.mean, self.std, crop=crop, source=source))

    def eval_mask(self, i: int, image_wh: Sequence[int]) -> np.ndarray:
        """Sample ``i``'s mask on the evaluation frame, bool ``(Hm, Wm)`` (all False without one or with
        ``load_masks=False``); ``image_wh``: its image's ``(W, H)``, which the mask must match."""
        s = self.samples[i]
        if not (self.load_masks and s.mask_path is not None):
            return np.zeros(self.mask_size, dtype=bool)
        m = read_mask_values(s.mask_path)
        if (m.shape[1], m.shape[0]) != tuple(image_wh):
            raise DataError(
                f"mask {str(s.mask_path)!r} has size {m.shape[1]}x{m.shape[0]} (WxH) but its image "
                f"{str(s.image_path)!r} has size {image_wh[0]}x{image_wh[1]}"
            )
        return self.geometry.eval_mask(m, self.mask_threshold, self.mask_resize, str(s.mask_path))

    def __getitem__(self, i: int) -> dict:
        if i < 0:
            i += len(self.samples)
        s = self.samples[i]
        im = load_image_rgb(s.image_path)
        image = self.to_tensor(im, str(s.image_path), s.crop)  # a tile (data.tiling) when the sample is one
        if self.load_masks and s.mask_path is not None:
            mask = torch.from_numpy(self.eval_mask(i, im.size).astype(np.float32))[None]
        else:
            mask = torch.zeros(1, *self.mask_size, dtype=torch.float32)
        image_hw = torch.tensor([im.size[1], im.size[0]], dtype=torch.int64)
        return {"image": image, "mask": mask, "label": int(s.label), "index": i, "image_hw": image_hw}
