"""VisA reader: a fixture in the exact VisA layout (split_csv/1cls.csv + Data/Images, Data/Masks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpdiff.data.readers import LayoutError, detect_format, list_categories_for, load_samples
from dpdiff.data.readers.visa import SPLIT_CSV, list_categories, load_visa

HEADER = "object,split,label,image,mask"


def _jpg(path: Path, size=(16, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 90, 60)).save(path, format="JPEG")


def _visa_mask(path: Path, class_id: int, size=(16, 12)):
    """VisA masks store the defect class id per pixel (0 background, 1..9), not 0/255."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size[1], size[0]), np.uint8)
    a[3:6, 4:9] = class_id
    Image.fromarray(a, mode="L").save(path)


@pytest.fixture
def visa_root(tmp_path: Path) -> Path:
    root = tmp_path / "VisA"
    rows = [HEADER]
    # candle: 3 train normal, 2 test normal, 2 anomalies (mask values 1 and 2); rows shuffled like the real CSV
    for n in ("0836", "0451", "0516"):
        rows.append(f"candle,train,normal,candle/Data/Images/Normal/{n}.JPG,")
    rows.append("candle,test,anomaly,candle/Data/Images/Anomaly/001.JPG,candle/Data/Masks/Anomaly/001.png")
    for n in ("0790", "0107"):
        rows.append(f"candle,test,normal,candle/Data/Images/Normal/{n}.JPG,")
    rows.append("candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png")
    # pcb1: 2 train, 1 test normal, 1 anomaly
    rows += [
        "pcb1,train,normal,pcb1/Data/Images/Normal/0001.JPG,",
        "pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,",
        "pcb1,test,normal,pcb1/Data/Images/Normal/0002.JPG,",
        "pcb1,test,anomaly,pcb1/Data/Images/Anomaly/000.JPG,pcb1/Data/Masks/Anomaly/000.png",
    ]
    (root / "split_csv").mkdir(parents=True)
    (root / SPLIT_CSV).write_text("\n".join(rows) + "\n")
    for r in rows[1:]:
        obj, _split, label, image, mask = r.split(",")
        _jpg(root / image)
        if label == "anomaly":
            _visa_mask(root / mask, class_id=2 if image.endswith("001.JPG") else 1)
    return root


def test_counts_labels_and_mask_pairing(visa_root):
    assert list_categories(visa_root) == ["candle", "pcb1"]
    train = load_visa(visa_root, None, "train")
    assert [(s.category, s.label, s.defect, s.mask_path) for s in train].count(("candle", 0, "good", None)) == 3
    assert len(train) == 5 and all(s.label == 0 and s.mask_path is None for s in train)
    # deterministic order: by category, then by image path
    assert [s.image_path.name for s in train] == ["0451.JPG", "0516.JPG", "0836.JPG", "0000.JPG", "0001.JPG"]

    test = load_visa(visa_root, ["candle"], "test")
    assert [(s.image_path.name, s.label, s.defect) for s in test] == [
        ("0107.JPG", 0, "good"),
        ("0790.JPG", 0, "good"),
        ("000.JPG", 1, "anomaly"),
        ("001.JPG", 1, "anomaly"),
    ]
    for s in test:
        assert s.image_path.is_file() and s.category == "candle"
        if s.label:
            assert s.mask_path == visa_root / "candle/Data/Masks/Anomaly" / (s.image_path.stem + ".png")
        else:
            assert s.mask_path is None
    assert len(load_visa(visa_root, "pcb1", "test")) == 2


def test_class_id_masks_are_binarised(visa_root):
    from dpdiff.data.dataset import load_mask

    test = load_visa(visa_root, ["candle"], "test")
    for s in (x for x in test if x.label):
        raw = np.asarray(Image.open(s.mask_path))
        assert raw.max() in (1, 2)  # stored as class ids
        m = load_mask(s.mask_path, 16)
        assert m.dtype == bool and m.sum() > 0 and m.mean() < 0.5


def test_missing_split_csv_names_the_path(tmp_path):
    root = tmp_path / "VisA"
    (root / "candle" / "Data" / "Images" / "Normal").mkdir(parents=True)
    with pytest.raises(LayoutError) as e:
        load_visa(root, None, "train")
    assert str(root / "split_csv" / "1cls.csv") in str(e.value) and "VisA" in str(e.value)
    assert e.value.path == root / "split_csv" / "1cls.csv"
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)


def test_missing_image_and_mask_name_the_first_offender(visa_root):
    (visa_root / "candle/Data/Images/Normal/0107.JPG").unlink()
    with pytest.raises(LayoutError, match="0107.JPG") as e:
        load_visa(visa_root, ["candle"], "test")
    assert e.value.path == visa_root / "candle/Data/Images/Normal/0107.JPG"
    assert len(load_visa(visa_root, ["candle"], "test", verify_files=False)) == 4

    _jpg(visa_root / "candle/Data/Images/Normal/0107.JPG")
    (visa_root / "candle/Data/Masks/Anomaly/000.png").unlink()
    with pytest.raises(LayoutError, match=r"Masks/Anomaly/000\.png"):
        load_visa(visa_root, ["candle"], "test")
    test = load_visa(visa_root, ["candle"], "test", allow_missing_masks=True)
    assert [s.mask_path is None for s in test if s.label] == [True, False]


def test_bad_csv_and_unknown_category(visa_root, tmp_path):
    with pytest.raises(ValueError, match="not in the split file"):
        load_visa(visa_root, ["bottle"], "test")
    bad = tmp_path / "bad.csv"
    bad.write_text("object,set,label,image_path,mask_path\ncandle,test,normal,a.JPG,\n")
    with pytest.raises(LayoutError, match=r"missing \['split', 'image', 'mask'\]"):
        load_visa(visa_root, None, "test", split_csv=bad)
    bad.write_text(HEADER + "\ncandle,test,good,candle/Data/Images/Normal/0107.JPG,\n")
    with pytest.raises(LayoutError, match="line 2: label 'good'"):
        load_visa(visa_root, None, "test", split_csv=bad)


def test_through_the_registry(visa_root):
    assert detect_format(visa_root) == "visa"
    assert list_categories_for("auto", visa_root) == ["candle", "pcb1"]
    test = load_samples("visa", visa_root, None, "test")
    assert len(test) == 6 and sum(s.label for s in test) == 3
    assert load_samples("auto", visa_root, ["pcb1"], "train") == load_visa(visa_root, ["pcb1"], "train")


def test_2cls_split_file_never_puts_anomalies_in_training(visa_root, caplog):
    """spot-diff's split_csv/2cls_highshot.csv / 2cls_fewshot.csv list anomalies among the training
    rows: training keeps the normal rows only and logs how many it left out, naming the file."""
    import logging

    two_cls = visa_root / "split_csv" / "2cls_highshot.csv"
    two_cls.write_text(
        "\n".join(
            [
                HEADER,
                "candle,train,normal,candle/Data/Images/Normal/0836.JPG,",
                "candle,train,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png",
                "candle,train,normal,candle/Data/Images/Normal/0451.JPG,",
                "pcb1,train,anomaly,pcb1/Data/Images/Anomaly/000.JPG,pcb1/Data/Masks/Anomaly/000.png",
                "pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,",
                "candle,test,normal,candle/Data/Images/Normal/0790.JPG,",
                "candle,test,anomaly,candle/Data/Images/Anomaly/001.JPG,candle/Data/Masks/Anomaly/001.png",
                "pcb1,test,normal,pcb1/Data/Images/Normal/0002.JPG,",
            ]
        )
        + "\n"
    )
    with caplog.at_level(logging.WARNING, logger="dpdiff.data"):
        train = load_samples("visa", visa_root, None, "train", split_csv="split_csv/2cls_highshot.csv")
    assert [(s.category, s.image_path.name) for s in train] == [
        ("candle", "0451.JPG"),
        ("candle", "0836.JPG"),
        ("pcb1", "0000.JPG"),
    ]
    assert all(s.label == 0 and s.mask_path is None and s.defect == "good" for s in train)
    msgs = [r.getMessage() for r in caplog.records if r.name == "dpdiff.data.readers.visa"]
    assert len(msgs) == 1 and "left out 2 anomalous training rows" in msgs[0] and str(two_cls) in msgs[0]
    # only the requested categories are counted
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dpdiff.data"):
        assert len(load_visa(visa_root, ["pcb1"], "train", split_csv=two_cls)) == 1
    assert "left out 1 anomalous training row " in caplog.records[0].getMessage()
    # the test split keeps its anomalies; the 1cls split logs nothing
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dpdiff.data"):
        test = load_visa(visa_root, None, "test", split_csv=two_cls)
        load_visa(visa_root, None, "train")
    assert sum(s.label for s in test) == 1
    assert not caplog.records
