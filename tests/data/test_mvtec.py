"""MVTec-layout reader: fixture written by the test, and the real MTD data when present."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from image_files import write_box_mask, write_image  # tests/data/image_files.py
from PIL import Image

from dpdiff.data import shared_data_dir
from dpdiff.data.readers.mvtec import count_samples, list_categories, load_dataset, load_split
from dpdiff.data.types import IMAGE_EXTENSIONS, Sample


def _img(path: Path, size=(12, 10), value=128, mode="L"):
    write_image(path, size, value, mode)


def _mask(path: Path, size=(12, 10)):
    write_box_mask(path, size, slice(2, 5), slice(3, 7))


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    # category "tile": 3 train images, junk files, 2 good + 2 crack (<stem>_mask.png)
    # + 1 hole (<stem>.png, MPDD/VisA style)
    t = root / "tile"
    for n in ("002.png", "000.png", "001.jpg"):
        _img(t / "train" / "good" / n)
    (t / "train" / "good" / "readme.txt").write_text("not an image")
    (t / "train" / "good" / ".hidden.png").write_bytes(b"junk")
    (t / "train" / "good" / "Thumbs.db").write_bytes(b"junk")
    for n in ("001.png", "000.png"):
        _img(t / "test" / "good" / n)
    for n in ("000.png", "001.PNG"):
        _img(t / "test" / "crack" / n)
        _mask(t / "ground_truth" / "crack" / f"{Path(n).stem}_mask.png")
    _img(t / "test" / "hole" / "a.bmp")
    _mask(t / "ground_truth" / "hole" / "a.png")
    (t / "test" / "crack" / "notes.json").write_text("{}")
    (t / "test" / ".ipynb_checkpoints").mkdir()
    _img(t / "test" / ".ipynb_checkpoints" / "x.png")  # hidden folder: ignored
    # category "bottle": 2 train, 1 good, 1 broken whose mask is a .bmp
    b = root / "bottle"
    for n in ("x.png", "y.png"):
        _img(b / "train" / "good" / n)
    _img(b / "test" / "good" / "g.png")
    _img(b / "test" / "broken" / "z.tif")
    a = np.zeros((10, 12), np.uint8)
    a[0, 0] = 255
    (b / "ground_truth" / "broken").mkdir(parents=True)
    Image.fromarray(a).save(b / "ground_truth" / "broken" / "z_mask.bmp")
    # not categories: a folder without train/good, a stray file, a hidden folder
    (root / "license_files").mkdir()
    (root / "README.txt").write_text("x")
    (root / ".cache" / "train" / "good").mkdir(parents=True)
    return root


def test_list_categories(mvtec_root):
    assert list_categories(mvtec_root) == ["bottle", "tile"]


def test_list_categories_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        list_categories(tmp_path / "nope")
    (tmp_path / "a" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no category found"):
        list_categories(tmp_path)


def test_train_split_counts_and_skips(mvtec_root):
    s = load_split(mvtec_root, "tile", "train")
    assert [p.image_path.name for p in s] == ["000.png", "001.jpg", "002.png"]  # sorted, junk skipped
    assert all(x.label == 0 and x.defect == "good" and x.mask_path is None and x.category == "tile" for x in s)
    assert all(isinstance(x, Sample) for x in s)


def test_test_split_labels_and_masks(mvtec_root):
    s = load_split(mvtec_root, "tile", "test")
    assert [(x.defect, x.image_path.name) for x in s] == [
        ("good", "000.png"),
        ("good", "001.png"),
        ("crack", "000.png"),
        ("crack", "001.PNG"),
        ("hole", "a.bmp"),
    ]
    assert [x.label for x in s] == [0, 0, 1, 1, 1]
    for x in s:
        if x.label == 0:
            assert x.mask_path is None
        else:
            assert x.mask_path is not None and x.mask_path.is_file()
            assert x.mask_path.parent == mvtec_root / "tile" / "ground_truth" / x.defect
            assert x.mask_path.stem in (x.image_path.stem, x.image_path.stem + "_mask")
    assert s[4].mask_path.name == "a.png"  # <stem>.png variant
    b = load_split(mvtec_root, "bottle", "test")
    assert b[1].mask_path.name == "z_mask.bmp"  # any image extension for the mask


def test_deterministic(mvtec_root):
    assert load_split(mvtec_root, "tile", "test") == load_split(mvtec_root, "tile", "test")


def test_load_dataset_multi_class(mvtec_root):
    all_train = load_dataset(mvtec_root, None, "train")
    assert [x.category for x in all_train] == ["bottle"] * 2 + ["tile"] * 3
    assert load_dataset(mvtec_root, ["tile"], "test") == load_split(mvtec_root, "tile", "test")
    assert load_dataset(mvtec_root, "tile", "test") == load_split(mvtec_root, "tile", "test")
    assert count_samples(load_dataset(mvtec_root, None, "test")) == {
        ("bottle", "good"): 1,
        ("bottle", "broken"): 1,
        ("tile", "good"): 2,
        ("tile", "crack"): 2,
        ("tile", "hole"): 1,
    }
    with pytest.raises(ValueError, match="duplicate"):
        load_dataset(mvtec_root, ["tile", "tile"], "train")


def test_missing_mask_error_names_image_and_tried_paths(mvtec_root):
    (mvtec_root / "tile" / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_split(mvtec_root, "tile", "test")
    msg = str(e.value)
    assert "001.PNG" in msg and "001_mask.png" in msg and str(mvtec_root / "tile" / "ground_truth" / "crack") in msg
    s = load_split(mvtec_root, "tile", "test", allow_missing_masks=True)
    miss = [x for x in s if x.image_path.name == "001.PNG"][0]
    assert miss.label == 1 and miss.mask_path is None


def test_missing_ground_truth_folder_means_image_labels_only(mvtec_root, caplog):
    import shutil

    shutil.rmtree(mvtec_root / "tile" / "ground_truth" / "hole")
    with caplog.at_level("INFO", logger="dpdiff.data.readers.mvtec"):
        samples = load_split(mvtec_root, "tile", "test")
    holes = [s for s in samples if s.defect == "hole"]
    assert holes and all(s.label == 1 and s.mask_path is None and not s.mask_known for s in holes)
    assert "tile/hole" in caplog.text and "image labels only" in caplog.text


def test_empty_category_error(mvtec_root):
    empty = mvtec_root / "empty" / "train" / "good"
    empty.mkdir(parents=True)
    (empty / "notes.txt").write_text("x")
    assert "empty" in list_categories(mvtec_root)
    with pytest.raises(ValueError) as e:
        load_split(mvtec_root, "empty", "train")
    assert str(empty) in str(e.value)
    with pytest.raises(ValueError):
        load_dataset(mvtec_root, None, "train")


def test_bad_arguments(mvtec_root):
    with pytest.raises(ValueError, match="split"):
        load_split(mvtec_root, "tile", "val")
    with pytest.raises(FileNotFoundError, match="bottle"):  # lists available categories
        load_split(mvtec_root, "carpet", "train")
    _img(mvtec_root / "c2" / "train" / "good" / "a.png")
    with pytest.raises(ValueError, match="test folder"):
        load_split(mvtec_root, "c2", "test")


def test_extensions_case_insensitive(tmp_path):
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"} <= set(IMAGE_EXTENSIONS)
    _img(tmp_path / "c" / "train" / "good" / "A.JPEG")
    _img(tmp_path / "c" / "train" / "good" / "b.TiFf")
    assert [x.image_path.name for x in load_split(tmp_path, "c", "train")] == ["A.JPEG", "b.TiFf"]


# ----------------------------------------------------------------------------- real MTD data

MTD = shared_data_dir() / "mtd"


@pytest.mark.data
@pytest.mark.skipif(
    not (MTD / "magnetic_tile").is_dir(), reason=f"MTD data not found at {MTD} (set DPDIFF_SHARED_DATA)"
)
def test_real_mtd_counts():
    assert list_categories(MTD) == ["magnetic_tile"]
    train = load_split(MTD, "magnetic_tile", "train")
    test = load_split(MTD, "magnetic_tile", "test")
    assert len(train) == 762 and all(s.label == 0 for s in train)
    assert len(test) == 582
    counts = Counter(s.defect for s in test)
    assert counts == {"good": 190, "blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}
    defective = [s for s in test if s.label == 1]
    assert len(defective) == 392
    for s in defective:
        assert s.mask_path is not None and s.mask_path.name == f"{s.image_path.stem}_mask.png"
    # masks have the size of their images (header reads only)
    for s in defective[::7]:
        with Image.open(s.image_path) as im, Image.open(s.mask_path) as m:
            assert im.size == m.size, s


def test_shared_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DPDIFF_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.delenv("DPDIFF_SHARED_DATA")
    d = shared_data_dir()
    assert d.parts[-2:] == ("shared", "data")
    assert d.parent.parent == Path(__file__).resolve().parents[2].parent
