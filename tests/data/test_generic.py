"""Generic folder reader: a fixture written by the test, and MTD read both ways when present."""

from __future__ import annotations

from pathlib import Path

import pytest
from image_files import write_box_mask, write_image  # tests/data/image_files.py

from dpdiff.data import shared_data_dir
from dpdiff.data.readers import LayoutError, load_samples
from dpdiff.data.readers.generic import load_generic
from dpdiff.data.readers.mvtec import load_split


def _img(path: Path, size=(10, 8)):
    write_image(path, size, 90)


def _mask(path: Path, size=(10, 8)):
    write_box_mask(path, size, slice(1, 3), slice(2, 5))


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    r = tmp_path / "line7"
    for n in ("b.png", "a.jpg"):
        _img(r / "ok_train" / n)
    _img(r / "ok_test" / "c.bmp")
    (r / "ok_test" / "notes.txt").write_text("x")
    for n in ("s1.png", "s2.JPG"):
        _img(r / "scratch" / n)
    _img(r / "dent" / "d1.tif")
    _mask(r / "masks" / "scratch" / "s1_mask.png")  # <stem>_mask.png
    _mask(r / "masks" / "scratch" / "S2.png")  # <stem>.png, other case
    _mask(r / "masks" / "dent" / "d1_mask.bmp")  # any image extension
    return r


def test_generic_train_and_test(folders):
    train = load_generic(None, train_normal_dir=folders / "ok_train", split="train", category="line7")
    assert [(s.image_path.name, s.label, s.defect, s.category) for s in train] == [
        ("a.jpg", 0, "good", "line7"),
        ("b.png", 0, "good", "line7"),
    ]
    test = load_generic(folders / "ok_test", [folders / "scratch", folders / "dent"], folders / "masks")
    assert [(s.image_path.name, s.label, s.defect) for s in test] == [
        ("c.bmp", 0, "good"),
        ("s1.png", 1, "scratch"),
        ("s2.JPG", 1, "scratch"),
        ("d1.tif", 1, "dent"),
    ]
    assert [None if s.mask_path is None else s.mask_path.name for s in test] == [
        None,
        "s1_mask.png",
        "S2.png",
        "d1_mask.bmp",
    ]
    # aligned list of mask folders, single abnormal folder, no masks at all
    same = load_generic(
        folders / "ok_test",
        [folders / "scratch", folders / "dent"],
        [folders / "masks" / "scratch", folders / "masks" / "dent"],
    )
    assert same == test
    one = load_generic(None, folders / "dent", folders / "masks" / "dent")
    assert [(s.label, s.mask_path.name) for s in one] == [(1, "d1_mask.bmp")]
    nomask = load_generic(folders / "ok_test", folders / "scratch")
    assert all(s.mask_path is None for s in nomask) and [s.label for s in nomask] == [0, 1, 1]


def test_generic_errors(folders):
    (folders / "masks" / "scratch" / "S2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"s2\.JPG.*s2_mask\.png"):
        load_generic(folders / "ok_test", folders / "scratch", folders / "masks")
    test = load_generic(folders / "ok_test", folders / "scratch", folders / "masks", allow_missing_masks=True)
    assert [s.mask_path is None for s in test] == [True, False, True]
    with pytest.raises(LayoutError, match=r"'.*nope'.*does not exist") as e:
        load_generic(folders / "nope", folders / "scratch")
    assert e.value.path == folders / "nope"
    with pytest.raises(ValueError, match="train_normal_dir"):
        load_generic(folders / "ok_test", split="train")
    with pytest.raises(ValueError, match="one mask folder per abnormal folder"):
        load_generic(None, [folders / "scratch", folders / "dent"], [folders / "masks"])


def test_generic_through_registry(folders):
    opts = dict(normal_dir="ok_test", abnormal_dir=["scratch", "dent"], mask_dir="masks", train_normal_dir="ok_train")
    test = load_samples("generic", folders, None, "test", **opts)
    assert len(test) == 4 and test[1].image_path == folders / "scratch" / "s1.png"
    assert len(load_samples("generic", folders, ["generic"], "train", **opts)) == 2
    with pytest.raises(ValueError, match="single category"):
        load_samples("generic", folders, ["other"], "test", **opts)


# ----------------------------------------------------------------------------- real MTD data

MTD = shared_data_dir() / "mtd"


@pytest.mark.data
@pytest.mark.skipif(
    not (MTD / "magnetic_tile").is_dir(), reason=f"MTD data not found at {MTD} (set DPDIFF_SHARED_DATA)"
)
def test_mtd_generic_equals_mvtec_reader():
    cat = MTD / "magnetic_tile"
    defects = sorted(p.name for p in (cat / "test").iterdir() if p.is_dir() and p.name != "good")
    assert defects == ["blowhole", "break", "crack", "fray", "uneven"]

    def triples(samples):
        return {
            (s.image_path.resolve(), None if s.mask_path is None else s.mask_path.resolve(), s.label) for s in samples
        }

    train = load_generic(None, train_normal_dir=cat / "train" / "good", split="train", category="magnetic_tile")
    test = load_generic(
        cat / "test" / "good",
        [cat / "test" / d for d in defects],
        [cat / "ground_truth" / d for d in defects],
        category="magnetic_tile",
    )
    ref_train = load_split(MTD, "magnetic_tile", "train")
    ref_test = load_split(MTD, "magnetic_tile", "test")
    assert triples(train) == triples(ref_train) and len(train) == len(ref_train) == 762
    assert triples(test) == triples(ref_test) and len(test) == len(ref_test) == 582
    assert [(s.defect, s.category) for s in test] == [(s.defect, s.category) for s in ref_test]
