"""Format registry: names, errors, MVTec/MPDD through the registry, format detection."""

from __future__ import annotations

from pathlib import Path

import pytest
from image_files import write_box_mask, write_image  # tests/data/image_files.py

from dpdiff.data.readers import FORMATS, LayoutError, detect_format, list_categories_for, load_samples
from dpdiff.data.readers.mvtec import load_dataset


def _img(path: Path, size=(8, 8)):
    write_image(path, size, 70)


def _mask(path: Path, size=(8, 8)):
    write_box_mask(path, size, slice(2, 4), slice(2, 4))


def _mpdd(root: Path, cats=("metal_plate", "tubes")) -> Path:
    """MPDD layout: MVTec folders, masks <stem>_mask.png."""
    for c in cats:
        _img(root / c / "train" / "good" / "000.png")
        _img(root / c / "test" / "good" / "000.png")
        _img(root / c / "test" / "major_rust" / "000.png")
        _mask(root / c / "ground_truth" / "major_rust" / "000_mask.png")
    return root


def test_registry_names():
    assert set(FORMATS) == {"mvtec", "mpdd", "btad", "visa", "realiad", "realiad_variety", "generic"}
    for name, spec in FORMATS.items():
        assert spec.name == name and callable(spec.load) and callable(spec.list_categories)


def test_unknown_format_and_option(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset format 'dagm'.*'btad', 'generic', 'mpdd', 'mvtec'"):
        load_samples("dagm", tmp_path, None, "test")
    with pytest.raises(ValueError, match=r"unknown dataset format"):
        list_categories_for("kolektor", tmp_path)
    root = _mpdd(tmp_path / "mpdd")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['resolution'\] for dataset format 'mpdd'"):
        load_samples("mpdd", root, None, "test", resolution=256)
    with pytest.raises(ValueError, match="split must be"):
        load_samples("mpdd", root, None, "val")


def test_mpdd_and_mvtec_through_registry(tmp_path):
    root = _mpdd(tmp_path / "mpdd")
    assert detect_format(root) == "mpdd"
    assert list_categories_for("mpdd", root) == ["metal_plate", "tubes"]
    test = load_samples("auto", root, None, "test")
    assert test == load_dataset(root, None, "test")
    assert [(s.category, s.defect, s.label) for s in test] == [
        ("metal_plate", "good", 0),
        ("metal_plate", "major_rust", 1),
        ("tubes", "good", 0),
        ("tubes", "major_rust", 1),
    ]
    assert all((s.mask_path is None) == (s.label == 0) for s in test)
    assert test[1].mask_path.name == "000_mask.png"
    _img(root / "bottle" / "train" / "good" / "000.png")
    assert detect_format(root) == "mvtec"
    assert len(load_samples("mvtec", root, ["tubes"], "train")) == 1


def test_mvtec_layout_error_names_path(tmp_path):
    root = tmp_path / "notmvtec"
    (root / "bottle" / "training").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"expected '.*bottle/train/good' for MVTec-AD") as e:
        load_samples("mvtec", root, None, "train")
    assert e.value.path == root / "bottle" / "train" / "good"
    with pytest.raises(LayoutError, match=r"expected directory '.*missing'.*does not exist"):
        list_categories_for("mpdd", tmp_path / "missing")


def test_detect_format(tmp_path):
    (tmp_path / "v" / "split_csv").mkdir(parents=True)
    (tmp_path / "v" / "split_csv" / "1cls.csv").write_text("object,split,label,image,mask\n")
    assert detect_format(tmp_path / "v") == "visa"
    (tmp_path / "r" / "realiad_jsons").mkdir(parents=True)
    assert detect_format(tmp_path / "r") == "realiad"
    (tmp_path / "r2" / "realiad_256").mkdir(parents=True)
    assert detect_format(tmp_path / "r2") == "realiad"
    (tmp_path / "rv" / "realiadvariety_raw").mkdir(parents=True)
    (tmp_path / "rv" / "realiad_jsons").mkdir(parents=True)  # Dinomaly2 README puts Variety JSONs here
    assert detect_format(tmp_path / "rv") == "realiad_variety"
    (tmp_path / "x" / "images").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"cannot detect the dataset format.*split_csv/1cls\.csv.*generic"):
        detect_format(tmp_path / "x")
    with pytest.raises(LayoutError, match="cannot detect"):
        load_samples("auto", tmp_path / "x", None, "test")


def test_list_categories_ignores_load_only_options(tmp_path):
    root = _mpdd(tmp_path / "mpdd", cats=("tubes",))
    assert list_categories_for("mpdd", root, allow_missing_masks=True) == ["tubes"]
    assert list_categories_for("generic", root, category="line", normal_dir="x") == ["line"]


def test_load_samples_never_returns_anomalies_for_training(tmp_path, monkeypatch, caplog):
    """Whatever a reader returns, the training split of load_samples holds normal samples only."""
    import logging

    from dpdiff.data.readers import registry
    from dpdiff.data.types import Sample

    def leaky(root, categories, split):
        return [Sample(root / "a.png", None, 0, "good", "c"), Sample(root / "b.png", root / "m.png", 1, "bad", "c")]

    monkeypatch.setitem(registry.FORMATS, "leaky", registry.FormatSpec("leaky", "test", lambda root: ["c"], leaky))
    with caplog.at_level(logging.WARNING, logger="dpdiff.data"):
        train = load_samples("leaky", tmp_path, None, "train")
    assert [s.image_path.name for s in train] == ["a.png"]
    assert any("left out 1 anomalous training row" in r.getMessage() for r in caplog.records)
    assert len(load_samples("leaky", tmp_path, None, "test")) == 2


def test_detect_btad(tmp_path):
    (tmp_path / "b" / "01" / "train" / "ok").mkdir(parents=True)
    (tmp_path / "b" / "02" / "train" / "ok").mkdir(parents=True)
    assert detect_format(tmp_path / "b") == "btad"
    (tmp_path / "x" / "01" / "train" / "okay").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"train/ok sub-folders \(BTAD\)"):
        detect_format(tmp_path / "x")
