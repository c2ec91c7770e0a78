"""Data sets with image labels only (no defect masks), and mixed ones, end to end: train, test (tables, report),
calibrate and predict with no extra flag; pixel metrics "not available" (null / em dash), never 0 or a crash."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dpdiff.cli import main
from dpdiff.data.readers import load_samples
from dpdiff.inference.detector import Detector
from dpdiff.metrics.tables import NOT_AVAILABLE
from dpdiff.utils.run_files import CALIBRATION_FILE
from dpdiff.workflows.reporting import evaluate_and_report

TINY_DATA_CHANGES = {"test_good_per_category": 4, "test_defect_per_category": 4}  # read by tiny_data
PIXEL_METRICS = ("P-AUROC", "P-AP", "P-F1max", "P-AUPRO")


@pytest.fixture(scope="module")
def labels_only(tiny_data, tmp_path_factory) -> Path:
    """The tiny set without any ``ground_truth/`` folder: good and defective test images, no masks."""
    root = tmp_path_factory.mktemp("labels_only") / "data"
    shutil.copytree(tiny_data, root)
    for gt in root.glob("*/ground_truth"):
        shutil.rmtree(gt)
    return root


@pytest.fixture(scope="module")
def mixed(tiny_data, tmp_path_factory) -> Path:
    """The tiny set with the masks of one defect type per category removed (its folder gone)."""
    root = tmp_path_factory.mktemp("mixed") / "data"
    shutil.copytree(tiny_data, root)
    for cat in sorted(p for p in root.iterdir() if p.is_dir()):
        folders = sorted(p for p in (cat / "ground_truth").iterdir() if p.is_dir())
        assert len(folders) >= 2, folders
        shutil.rmtree(folders[0])
    return root


@pytest.fixture(scope="module")
def run(labels_only, tmp_path_factory, tiny_config, train_tiny_run) -> Path:
    return train_tiny_run(labels_only, tmp_path_factory, tiny_config, "labels_only_run")


def test_reader_accepts_a_set_without_masks_and_says_so(labels_only, caplog):
    with caplog.at_level("INFO", logger="dpdiff.data.readers.mvtec"):
        samples = load_samples("mvtec", labels_only, None, "test")
    defective = [s for s in samples if s.label == 1]
    assert defective and all(s.mask_path is None and not s.mask_known for s in defective)
    assert all(s.mask_known for s in samples if s.label == 0)
    lines = [r.message for r in caplog.records if "no ground-truth masks" in r.message]
    assert len(lines) == 1 and "image labels only" in lines[0]  # one log line for the whole load


def test_a_half_filled_mask_folder_is_still_an_error(tiny_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    one_mask = next(iter(sorted(root.glob("*/ground_truth/*/*.png"))))
    one_mask.unlink()
    with pytest.raises(FileNotFoundError, match=one_mask.name.replace("_mask.png", "")):
        load_samples("mvtec", root, None, "test")


@pytest.mark.integration
def test_test_writes_image_metrics_and_marks_pixel_metrics_not_available(run, labels_only, tmp_path, capsys):
    out = tmp_path / "eval"
    result = evaluate_and_report(run, output_dir=out, data_root=str(labels_only), overlays_per_category=2)
    saved = json.loads((out / "results.json").read_text())
    for row in [*saved["per_category"].values(), saved["mean"]]:
        assert 0.0 <= row["I-AUROC"] <= 1.0 and 0.0 <= row["I-AP"] <= 1.0
        assert all(row[k] is None for k in (*PIXEL_METRICS, "mAD"))
    assert all(result["mean"][k] is None for k in PIXEL_METRICS)
    assert saved["protocol"]["defective_images_without_mask"]
    md = (out / "results.md").read_text()
    assert NOT_AVAILABLE in md and "no defect masks" in md
    first = next(csv.DictReader((out / "results.csv").open()))
    assert first["P-AUROC"] == NOT_AVAILABLE and float(first["I-AUROC"]) >= 0.0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert NOT_AVAILABLE in html
    # the CLI prints the same table and exits 0
    assert main(["test", str(run), "--data", str(labels_only), "--output", str(tmp_path / "cli"), "--no-report"]) == 0
    assert NOT_AVAILABLE in capsys.readouterr().out


@pytest.mark.integration
def test_mixed_set_scores_pixels_over_the_masked_images(run, mixed, tmp_path):
    result = evaluate_and_report(run, output_dir=tmp_path / "eval", data_root=str(mixed), report=False)
    for row in result["per_category"].values():
        assert all(row[k] is not None for k in (*PIXEL_METRICS, "mAD"))
    protocol = json.loads((tmp_path / "eval" / "results.json").read_text())["protocol"]
    assert set(protocol["defective_images_without_mask"].values()) == {1}  # one defect type of 1 image each
    assert "left out of the pixel metrics" in protocol["pixel_metrics"]


@pytest.mark.integration
def test_calibrate_labelled_without_masks_sets_the_image_threshold_only(run, labels_only, capsys, tmp_path):
    work = tmp_path / "run"
    shutil.copytree(run, work)
    assert main(["calibrate", str(work), "--labelled", str(labels_only)]) == 0
    assert "pixel none (no masks)" in capsys.readouterr().out
    saved = json.loads((work / CALIBRATION_FILE).read_text())["global"]
    assert saved["method"] == "f1" and saved["pixel_threshold"] is None
    predictions = Detector.load(work).predict(sorted((labels_only).glob("*/test/*/*.png")))
    assert all(p.is_anomalous is not None and p.mask is None for p in predictions)


@pytest.mark.integration
def test_calibrate_takes_several_normal_folders_and_its_own_pixel_rate(run, labels_only, tmp_path, capsys):
    work = tmp_path / "run"
    shutil.copytree(run, work)
    folders = sorted(str(p) for p in labels_only.glob("*/test/good"))
    train_folders = sorted(str(p) for p in labels_only.glob("*/train/good"))
    assert len(folders) == 2
    args = ["calibrate", str(work), "--normal", *folders, *train_folders, "--fpr", "0.1", "--pixel-fpr", "0.01"]
    assert main(args) == 0
    assert "false-alarm rate 0.1 per image, 0.01 per pixel, 20 images" in capsys.readouterr().out
    t = Detector.load(work).thresholds()
    assert t.details["target_pixel_fpr"] == 0.01
    # the pixel threshold marks about 1 % of the calibration images' map pixels, not the image rate's 10 %
    images = [p for f in folders + train_folders for p in sorted(Path(f).glob("*.png"))]
    maps = np.stack([p.anomaly_map for p in Detector.load(work).predict(images)])
    assert np.mean(maps > t.pixel) < 0.03
