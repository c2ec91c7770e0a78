"""torch Dataset and image/mask loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dpdiff.data import shared_data_dir
from dpdiff.data.dataset import ImageDataset, load_image_array, load_image_rgb, load_mask
from dpdiff.data.readers.mvtec import load_split
from dpdiff.data.types import Sample

S = 16
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)


def _sample(img: Path, mask: Path | None = None, label: int | None = None) -> Sample:
    lab = (1 if mask is not None else 0) if label is None else label
    return Sample(img, mask, lab, "good" if lab == 0 else "defect", "cat")


def _denorm(x: torch.Tensor) -> np.ndarray:
    m = torch.tensor(MEAN).view(3, 1, 1)
    s = torch.tensor(STD).view(3, 1, 1)
    return (x * s + m).numpy()


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    p = {}
    p["gray"] = tmp_path / "gray.png"
    Image.new("L", (30, 20), 100).save(p["gray"])
    p["rgba"] = tmp_path / "rgba.png"
    Image.new("RGBA", (20, 30), (10, 200, 30, 0)).save(p["rgba"])  # fully transparent: alpha dropped
    p["gray16"] = tmp_path / "gray16.png"
    Image.fromarray(np.full((20, 20), 32896, np.uint16)).save(p["gray16"])  # 32896 / 257 = 128
    p["palette"] = tmp_path / "pal.png"
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(p["palette"])
    p["rgb_jpg"] = tmp_path / "rgb.jpg"
    Image.new("RGB", (40, 24), (50, 100, 150)).save(p["rgb_jpg"], quality=100)
    p["bw"] = tmp_path / "bw.png"
    Image.new("1", (20, 20), 1).save(p["bw"])
    return p


def test_image_modes_become_rgb(images):
    ds = ImageDataset([_sample(p) for p in images.values()], S, MEAN, STD)
    for i, name in enumerate(images):
        item = ds[i]
        assert item["image"].shape == (3, S, S) and item["image"].dtype == torch.float32, name
        assert load_image_rgb(images[name]).mode == "RGB"
    px = {name: _denorm(ds[i]["image"])[:, S // 2, S // 2] * 255 for i, name in enumerate(images)}
    np.testing.assert_allclose(px["gray"], [100, 100, 100], atol=0.5)
    np.testing.assert_allclose(px["rgba"], [10, 200, 30], atol=0.5)
    np.testing.assert_allclose(px["gray16"], [128, 128, 128], atol=0.5)  # fixed 16-bit scaling, not min-max
    np.testing.assert_allclose(px["palette"], [255, 0, 0], atol=0.5)
    np.testing.assert_allclose(px["rgb_jpg"], [50, 100, 150], atol=3)
    np.testing.assert_allclose(px["bw"], [255, 255, 255], atol=0.5)


def test_item_fields_and_normalisation(images):
    ds = ImageDataset([_sample(images["gray"])], S, MEAN, STD)
    item = ds[0]
    assert set(item) == {"image", "mask", "label", "index", "image_hw"}
    assert item["label"] == 0 and item["index"] == 0
    h, w = np.asarray(load_image_rgb(images["gray"])).shape[:2]
    assert item["image_hw"].tolist() == [h, w]  # the image's own size, to bring its maps back
    assert item["mask"].shape == (1, S, S) and item["mask"].dtype == torch.float32 and item["mask"].sum() == 0
    expected = (100 / 255 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(item["image"][:, 5, 5].numpy(), expected, atol=1e-5)
    batch = next(
        iter(
            torch.utils.data.DataLoader(ImageDataset([_sample(p) for p in images.values()], S, MEAN, STD), batch_size=3)
        )
    )
    assert batch["image"].shape == (3, 3, S, S) and batch["label"].tolist() == [0, 0, 0]


def test_mask_binarised_and_resized_nearest(tmp_path):
    img = tmp_path / "img.png"
    Image.new("L", (40, 20), 80).save(img)  # non-square: resized directly to SxS
    a = np.zeros((20, 40), np.uint8)
    a[:, :20] = 1  # left half, value 1 (> 0 counts as defect)
    a[0, 39] = 128
    m = tmp_path / "img_mask.png"
    Image.fromarray(a).save(m)
    got = load_mask(m, S)
    assert got.dtype == bool and got.shape == (S, S)
    assert got[:, : S // 2].all() and not got[1:, S // 2 :].any()
    item = ImageDataset([_sample(img, m)], S, MEAN, STD)[0]
    assert set(torch.unique(item["mask"]).tolist()) == {0.0, 1.0}
    assert item["label"] == 1
    np.testing.assert_array_equal(item["mask"][0].numpy() > 0, got)
    # load_masks=False -> zeros
    assert ImageDataset([_sample(img, m)], S, MEAN, STD, load_masks=False)[0]["mask"].sum() == 0


def test_mask_with_alpha_and_rgb(tmp_path):
    a = np.zeros((10, 10, 4), np.uint8)
    a[..., 3] = 255  # opaque alpha must not turn the whole mask on
    a[2:4, 2:4, 0] = 255
    p = tmp_path / "m.png"
    Image.fromarray(a).save(p)
    got = load_mask(p, 10)
    assert got.sum() == 4 and got[2:4, 2:4].all()


def test_mask_size_mismatch(tmp_path):
    img, m = tmp_path / "a.png", tmp_path / "a_mask.png"
    Image.new("L", (30, 20)).save(img)
    Image.new("L", (20, 30)).save(m)
    with pytest.raises(ValueError) as e:
        ImageDataset([_sample(img, m)], S, MEAN, STD)[0]
    msg = str(e.value)
    assert "a.png" in msg and "a_mask.png" in msg and "30x20" in msg and "20x30" in msg


def test_corrupt_and_truncated_files(tmp_path):
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"this is not a png at all")
    with pytest.raises(ValueError, match="garbage.png"):
        load_image_rgb(bad)
    good = tmp_path / "full.jpg"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(good)
    trunc = tmp_path / "truncated.jpg"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.jpg"):
        ImageDataset([_sample(trunc)], S, MEAN, STD)[0]
    mask = tmp_path / "m_mask.png"
    mask.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match="m_mask.png"):
        load_mask(mask, S)


def test_load_image_array(images):
    a = load_image_array(images["rgb_jpg"], 24)
    assert a.shape == (24, 24, 3) and a.dtype == np.uint8
    assert abs(int(a[12, 12, 2]) - 150) <= 3


def test_bad_arguments(images):
    with pytest.raises(ValueError):
        ImageDataset([], S, MEAN, (0.1, 0.0, 0.1))
    with pytest.raises(ValueError):
        ImageDataset([], S, (0.5, 0.5), STD)
    with pytest.raises(ValueError):
        ImageDataset([], 0, MEAN, STD)


MTD = shared_data_dir() / "mtd"


@pytest.mark.data
@pytest.mark.skipif(
    not (MTD / "magnetic_tile").is_dir(), reason=f"MTD data not found at {MTD} (set DPDIFF_SHARED_DATA)"
)
def test_real_mtd_items():
    test = load_split(MTD, "magnetic_tile", "test")
    ds = ImageDataset(test, 64, MEAN, STD)
    defective = [i for i, s in enumerate(test) if s.label == 1]
    good = [i for i, s in enumerate(test) if s.label == 0]
    for i in defective[:3] + good[:1]:
        item = ds[i]
        assert item["image"].shape == (3, 64, 64)
        d = _denorm(item["image"])
        np.testing.assert_allclose(d[0], d[1], atol=1e-5)  # grayscale replicated
    assert ds[good[0]]["mask"].sum() == 0
    assert ds[defective[0]]["mask"].sum() > 0


def test_the_numpy_preprocessing_is_the_torch_one_bit_for_bit(tmp_path):
    """normalized_image_array (numpy + Pillow: the onnxruntime path, no torch) gives the very bits of the torch
    preprocessing: (x / 255 - mean) / std in float32."""
    import numpy as np
    import torch
    from PIL import Image

    from dpdiff.data.dataset import IMAGENET_MEAN, IMAGENET_STD, normalized_image_tensor
    from dpdiff.data.images import normalized_image_array

    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    got = normalized_image_array(im, 32, IMAGENET_MEAN, IMAGENET_STD)
    resized = torch.from_numpy(np.asarray(im.resize((32, 32), Image.Resampling.BICUBIC), np.float32)).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    want = (resized / 255.0 - mean) / std
    assert got.dtype == np.float32 and np.array_equal(got, want.numpy())
    assert torch.equal(normalized_image_tensor(im, 32, IMAGENET_MEAN, IMAGENET_STD), want)
