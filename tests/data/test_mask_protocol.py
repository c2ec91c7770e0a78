"""Mask reading and binarisation rules of the evaluation protocol (issue #3)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dpdiff.data.dataset import ImageDataset, load_mask, read_mask_values, resize_binarise_mask
from dpdiff.data.types import Sample


def _save(tmp_path, name, array, mode=None):
    path = tmp_path / name
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(path)
    return path


def test_mask_encodings_read_as_unit_values(tmp_path):
    a = np.zeros((8, 8), np.uint8)
    a[2:4, 2:4] = 255
    v255 = read_mask_values(_save(tmp_path, "m255.png", a))
    v01 = read_mask_values(_save(tmp_path, "m01.png", (a > 0).astype(np.uint8)))  # VisA stores 0/1
    v16 = read_mask_values(_save(tmp_path, "m16.png", (a > 0).astype(np.uint16) * 65535))
    ids = (a > 0).astype(np.uint8) * 7  # VisA-style class id
    vid = read_mask_values(_save(tmp_path, "mid.png", ids))
    for v in (v255, v01, v16, vid):
        assert v.dtype == np.float32 and v.max() == 1.0 and v.sum() == 4.0
    # a 0/1 mask must survive an ADer-style 0.5 threshold (value/255 would be 0.004 and vanish)
    assert load_mask(tmp_path / "m01.png", 8, threshold=0.5).sum() == 4


def test_threshold_and_resampling_change_a_downsampled_mask():
    v = np.zeros((8, 8), np.float32)
    v[0:2, 0:1] = 1.0  # a thin region: bilinear downsampling to 4x4 leaves partial values
    nearest_any = resize_binarise_mask(v, 4, 0.0, "nearest")
    bilinear_any = resize_binarise_mask(v, 4, 0.0, "bilinear")
    bilinear_half = resize_binarise_mask(v, 4, 0.5, "bilinear")
    assert bilinear_half.sum() < bilinear_any.sum()
    assert nearest_any.dtype == bool and nearest_any.shape == (4, 4)
    with pytest.raises(ValueError, match="mask_resize"):
        resize_binarise_mask(v, 4, 0.0, "cubic")
    with pytest.raises(ValueError, match="mask_threshold"):
        resize_binarise_mask(v, 4, 1.0)


def test_dataset_returns_masks_at_the_evaluation_resolution(tmp_path):
    img = _save(tmp_path, "img.png", np.full((20, 20, 3), 128, np.uint8))
    m = np.zeros((20, 20), np.uint8)
    m[5:15, 5:15] = 255
    mask = _save(tmp_path, "img_mask.png", m)
    ds = ImageDataset([Sample(img, mask, 1, "c", "d")], 16, mask_size=10)
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (1, 10, 10)
    assert item["mask"].sum() == 25
    with pytest.raises(ValueError, match="mask_threshold"):
        ImageDataset([], 16, mask_threshold=2.0)
