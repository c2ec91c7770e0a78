"""The image geometry (dpdiff/data/geometry.py): non-square inputs, the letterbox (keep_aspect) and its inverse,
the region of interest in pixels or fractions, the evaluation frame, and their errors; the plain geometry gives
exactly what the direct resize gave before."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dpdiff.config import Config
from dpdiff.data.dataset import ImageDataset
from dpdiff.data.geometry import ImageGeometry, as_geometry, evaluation_size, resize_map
from dpdiff.data.images import normalized_image_array
from dpdiff.data.types import Sample
from dpdiff.scoring.scorer import map_size
from dpdiff.utils.errors import ConfigError, DataError
from dpdiff.utils.sizes import as_hw, hw_json

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _denorm(x: np.ndarray) -> np.ndarray:
    return x * np.array(STD, np.float32)[:, None, None] + np.array(MEAN, np.float32)[:, None, None]


# ---------------------------------------------------------------------------------------------- sizes, config
def test_sizes_are_one_int_or_height_width():
    assert as_hw(256) == (256, 256) and as_hw([64, 128]) == (64, 128) and as_hw((np.int64(3), 5)) == (3, 5)
    for bad in ([64], [64, 128, 3], [64.0, 128], [0, 64], True, "64"):
        with pytest.raises(ConfigError, match="image_size"):
            as_hw(bad)
    assert hw_json((256, 256)) == 256 and hw_json((64, 128)) == [64, 128]


def test_config_keys_validated_with_the_key_named():
    cfg = Config().override(
        {"backbone.image_size": [64, 128], "data.resize": "keep_aspect", "data.roi": [1, 2, 30, 40]}
    )
    assert cfg.backbone.image_size == [64, 128]
    cases = [
        ({"backbone.image_size": [64]}, "backbone.image_size"),
        ({"backbone.image_size": [64, 0]}, "backbone.image_size"),
        ({"evaluation.resolution": [32, 64, 1]}, "evaluation.resolution"),
        ({"data.resize": "crop"}, "data.resize"),
        ({"data.roi": [10, 0, 5, 20]}, "data.roi: need x0 < x1"),
        ({"data.roi": [0.1, 0.2, 1.5, 0.9]}, "data.roi: .* fractions"),
        ({"data.roi": [-1, 0, 5, 5]}, "data.roi: pixel coordinates"),
        ({"data.roi": [0, 0, 5]}, "data.roi"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            Config().override(overrides)


def test_backbone_refuses_sides_off_the_feature_stride():
    from dpdiff.backbones import build_backbone

    with pytest.raises(ConfigError, match=r"backbone.image_size=\[64, 120\].*feature stride 16"):
        build_backbone("tf_efficientnet_lite0", image_size=[64, 120])
    backbone = build_backbone("tf_efficientnet_lite0", image_size=[64, 128])
    assert backbone.grid_size((64, 128)) == (4, 8) and backbone.grid_size(64) == (4, 4)
    import torch

    with torch.no_grad():
        assert backbone(torch.zeros(1, 3, 64, 128)).shape[-2:] == (4, 8)


def test_evaluation_size_follows_the_input_aspect():
    assert evaluation_size(256, None) == (256, 256) and evaluation_size(256, 128) == (128, 128)
    assert evaluation_size([64, 128], None) == (64, 128)
    assert evaluation_size([64, 128], 100) == (50, 100)  # the long side; the short one keeps the aspect
    assert evaluation_size([300, 100], 60) == (60, 20)
    assert evaluation_size([64, 128], [40, 50]) == (40, 50)
    cfg = Config().override({"backbone.image_size": [64, 128], "evaluation.resolution": 32})
    assert map_size(cfg) == (16, 32) == ImageGeometry.from_config(cfg).map_hw
    assert map_size(Config()) == (256, 256)


# ---------------------------------------------------------------------------------------------- image -> model
def test_plain_geometry_is_the_direct_resize_bit_for_bit():
    im = _image(90, 50)
    for size in (64, (32, 80)):
        want = normalized_image_array(im, size, MEAN, STD)
        got = ImageGeometry(as_hw(size)).model_input(im, MEAN, STD)
        assert got.dtype == np.float32 and got.shape == (3, *as_hw(size)) and np.array_equal(got, want)
    assert as_geometry(64).is_plain and as_geometry(64).input_key() == {"image_size": 64}


def test_letterbox_keeps_the_aspect_and_pads_with_the_mean():
    im = _image(100, 50)  # 2:1 into a square 64 x 64: content 64 x 32, centred, rows 16..47
    g = ImageGeometry((64, 64), "keep_aspect")
    assert g.content_box((100, 50)) == (0, 16, 64, 48)
    x = g.model_input(im, MEAN, STD)
    assert x.shape == (3, 64, 64)
    assert np.all(x[:, :16] == 0) and np.all(x[:, 48:] == 0)  # the mean, 0 after normalisation
    assert np.array_equal(x[:, 16:48], normalized_image_array(im, (32, 64), MEAN, STD))
    tall = ImageGeometry((64, 128), "keep_aspect").content_box((30, 60))  # 1:2 into 2:1: columns 48..79
    assert tall == (48, 0, 80, 64)
    # an image of the input's own aspect fills it: the letterbox is the direct resize then
    same = _image(256, 128)
    assert np.array_equal(
        ImageGeometry((64, 128), "keep_aspect").model_input(same, MEAN, STD),
        ImageGeometry((64, 128)).model_input(same, MEAN, STD),
    )


def test_roi_from_pixels_and_fractions():
    im = _image(200, 100)
    pix = ImageGeometry((32, 32), roi=(50, 20, 150, 80))
    frac = ImageGeometry((32, 32), roi=(0.25, 0.2, 0.75, 0.8))
    assert pix.roi_box((200, 100)) == (50, 20, 150, 80) == frac.roi_box((200, 100))
    want = normalized_image_array(im.crop((50, 20, 150, 80)), 32, MEAN, STD)
    assert np.array_equal(pix.model_input(im, MEAN, STD), want)
    assert np.array_equal(frac.model_input(im, MEAN, STD), want)
    assert frac.roi_box((400, 50)) == (100, 10, 300, 40)  # fractions follow each image's size
    # a tile inside the ROI (the tiling hook): ROI coordinates
    assert pix.crop_box((200, 100), (10, 5, 30, 25)) == (60, 25, 80, 45)
    tile = pix.model_input(im, MEAN, STD, crop=(10, 5, 30, 25))
    assert np.array_equal(tile, normalized_image_array(im.crop((60, 25, 80, 45)), 32, MEAN, STD))
    with pytest.raises(ValueError, match="not inside the region of interest"):
        pix.crop_box((200, 100), (0, 0, 101, 10))


def test_pixel_roi_larger_than_the_image_names_the_file():
    g = ImageGeometry((32, 32), roi=(0, 0, 150, 80))
    with pytest.raises(DataError, match=r"'small.png' is 100x100.*data.roi"):
        g.model_input(_image(100, 100), MEAN, STD, source="small.png")
    with pytest.raises(ConfigError, match="x0 < x1"):
        ImageGeometry((32, 32), roi=(5, 0, 5, 10))


# ---------------------------------------------------------------------------------------------- model map -> image
def test_letterbox_inverse_puts_the_map_back_on_the_content():
    g = ImageGeometry((64, 64), "keep_aspect")
    model_map = np.zeros((64, 64), np.float32)
    model_map[16:48] = np.linspace(0, 1, 64, dtype=np.float32)[None, :]  # the content rows: a ramp along x
    model_map[:16] = model_map[48:] = 99.0  # the padding: must never reach the image
    full = g.map_to_image(model_map, (50, 100))
    assert full.shape == (50, 100) and full.max() <= 1.0 + 1e-6
    assert np.allclose(full, resize_map(model_map[16:48], (50, 100)))
    # the evaluation frame: the content stretched back to the map size, no padding
    ev = g.eval_map(model_map, (50, 100))
    assert ev.shape == (64, 64) and ev.max() <= 1.0 + 1e-6
    # a map at another size than the input (evaluation.resolution: 32) is cut at the scaled box, rows 8..23
    small = np.full((32, 32), 99.0, np.float32)
    small[8:24] = np.linspace(0, 1, 32, dtype=np.float32)[None, :]
    half = g.map_to_image(small, (50, 100))
    assert half.shape == (50, 100) and half.max() <= 1.0 + 1e-6


def test_roi_map_is_zero_outside_the_box():
    g = ImageGeometry((32, 32), roi=(50, 20, 150, 80))
    full = g.map_to_image(np.ones((32, 32), np.float32), (100, 200))
    assert full.shape == (100, 200)
    assert np.all(full[20:80, 50:150] == 1.0) and full.sum() == 100 * 60
    assert g.roi_pixels((100, 200)) == [50, 20, 150, 80] and ImageGeometry((32, 32)).roi_pixels((1, 1)) is None
    plain = ImageGeometry((32, 32)).map_to_image(np.arange(32 * 32, dtype=np.float32).reshape(32, 32), (64, 48))
    assert np.array_equal(plain, resize_map(np.arange(32 * 32, dtype=np.float32).reshape(32, 32), (64, 48)))


def test_masks_cut_to_the_roi_on_the_evaluation_frame(tmp_path):
    img, mask = tmp_path / "a.png", tmp_path / "a_mask.png"
    _image(200, 100).save(img)
    m = np.zeros((100, 200), np.uint8)
    m[20:40, 60:100] = 255  # inside the ROI
    m[90:, :10] = 255  # outside it: not evaluated
    Image.fromarray(m).save(mask)
    g = ImageGeometry((32, 64), roi=(50, 20, 150, 80), map_size=(30, 50))
    ds = ImageDataset([Sample(img, mask, 1, "cut", "c")], g, MEAN, STD)
    item = ds[0]
    assert item["image"].shape == (3, 32, 64) and item["mask"].shape == (1, 30, 50)
    want = np.asarray(Image.fromarray(m[20:80, 50:150].astype(np.float32) / 255).resize((50, 30), Image.NEAREST)) > 0
    assert np.array_equal(item["mask"][0].numpy() > 0.5, want) and want.any()
    assert item["image_hw"].tolist() == [100, 200]


def test_geometry_round_trips_through_its_dict_and_the_config():
    cfg = Config().override(
        {"backbone.image_size": [64, 128], "data.resize": "keep_aspect", "data.roi": [0.1, 0.0, 0.9, 1.0]}
    )
    g = ImageGeometry.from_config(cfg)
    assert g == ImageGeometry((64, 128), "keep_aspect", (0.1, 0.0, 0.9, 1.0), (64, 128))
    assert ImageGeometry.from_dict(g.to_dict()) == g
    assert g.input_key() == {"image_size": [64, 128], "resize": "keep_aspect", "roi": [0.1, 0.0, 0.9, 1.0]}
    assert not g.is_plain and "letterboxed" in g.describe() and "region of interest" in g.describe()
