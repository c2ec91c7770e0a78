"""The public-set converters (dpdiff.data.public_sets) on tiny fake copies of their sources: the split never
trains on a defective image, masks are the rasterised polygons, a finished conversion is not redone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpdiff.data.public_sets import convert_bsdata, convert_kolektorsdd, split_normals
from dpdiff.utils.errors import DataError


def _grey(path: Path, size=(20, 50)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0]), 128, np.uint8)).save(path)


def test_split_normals_is_fixed_and_disjoint():
    names = [f"{i:03}.png" for i in range(10)]
    train, test = split_normals(names, 0.8, seed=0)
    assert (train, test) == split_normals(list(reversed(names)), 0.8, seed=0)
    assert len(train) == 8 and not set(train) & set(test) and sorted(train + test) == names
    with pytest.raises(ValueError, match="train_fraction"):
        split_normals(names, 1.0, seed=0)


def test_kolektorsdd_masks_from_yolo_polygons_and_defects_only_in_test(tmp_path):
    src = tmp_path / "src"
    for i in range(6):
        _grey(src / "Datasets" / "images" / "train" / f"{i:03}.jpg")
        label = src / "Datasets" / "labels" / "train" / f"{i:03}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        # images 4 and 5 have a crack: a box from (0.25, 0.2) to (0.75, 0.4) of the image
        label.write_text("0 0.25 0.2 0.75 0.2 0.75 0.4 0.25 0.4" if i >= 4 else "")
    record = convert_kolektorsdd(src, tmp_path / "out", train_fraction=0.5)
    cat = tmp_path / "out" / "commutator"
    assert record["counts"]["commutator"] == {"train": 2, "test_good": 2, "test_defective": 2}
    assert {p.name for p in (cat / "test" / "crack").iterdir()} == {"004.jpg", "005.jpg"}
    assert not {p.name for p in (cat / "train" / "good").iterdir()} & {"004.jpg", "005.jpg"}
    mask = np.asarray(Image.open(cat / "ground_truth" / "crack" / "004_mask.png")) > 0
    assert mask.shape == (50, 20)
    ys, xs = np.nonzero(mask)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 20, 5, 15)
    # done.json: a second call with the same source and split does not redo (or change) anything
    stamp = (cat / "train" / "good").stat().st_mtime_ns
    assert convert_kolektorsdd(src, tmp_path / "out", train_fraction=0.5) == record
    assert (cat / "train" / "good").stat().st_mtime_ns == stamp


def test_kolektorsdd_names_a_missing_label_or_source(tmp_path):
    with pytest.raises(DataError, match="KolektorSDD: no"):
        convert_kolektorsdd(tmp_path, tmp_path / "out")
    _grey(tmp_path / "Datasets" / "images" / "val" / "000.jpg")
    with pytest.raises(DataError, match="000.txt missing"):
        convert_kolektorsdd(tmp_path, tmp_path / "out")


def test_bsdata_type_2_only_with_polygon_masks(tmp_path):
    src = tmp_path / "src"
    images = []
    for i in range(5):
        name = f"img{i}.jpg"
        _grey(src / "data" / name, size=(40, 16))
        entry = {"filename": name, "type": 2, "annotations": None}
        if i == 4:
            entry["annotations"] = f"img{i}.json"
            shapes = [{"points": [[10, 4], [20, 4], [20, 8], [10, 8]]}]
            (src / "label").mkdir(parents=True, exist_ok=True)
            (src / "label" / entry["annotations"]).write_text(json.dumps({"shapes": shapes}))
        images.append(entry)
    images.append({"filename": "type1.jpg", "type": 1, "annotations": None})
    (src / "image_data.json").write_text(json.dumps({"images": images}))
    record = convert_bsdata(src, tmp_path / "out", train_fraction=0.5)
    assert record["counts"]["ball_screw"] == {"train": 2, "test_good": 2, "test_defective": 1}
    cat = tmp_path / "out" / "ball_screw"
    assert not (cat / "train" / "good" / "img4.jpg").exists()
    mask = np.asarray(Image.open(cat / "ground_truth" / "pitting" / "img4_mask.png")) > 0
    assert mask.shape == (16, 40) and mask[6, 15] and not mask[0, 0]
