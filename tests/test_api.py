"""The Python API (dpdiff/__init__.py, issue #14): the documented example runs, every input kind gives the same
prediction, fit trains and calibrates, and bad inputs are errors naming the file (or skipped rows)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dpdiff
from dpdiff.cli import main
from dpdiff.utils.errors import DataError
from dpdiff.utils.run_files import CALIBRATION_FILE
from dpdiff.workflows.train import train

REPO = Path(__file__).resolve().parents[1]
#: the page of the documentation site that holds the example ("Use from Python")
EXAMPLE_PAGE = REPO / "docs" / "guides" / "python-api.md"
EXAMPLE = re.compile(r"<!-- api-example:start -->\s*```python\n(.*?)```\s*<!-- api-example:end -->", re.S)


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory, tiny_config, tiny_dataset) -> Path:
    """A folder laid out as `make demo` leaves it (runs/demo/data, runs/demo/run), with a tiny run."""
    base = tmp_path_factory.mktemp("api")
    data = base / "runs" / "demo" / "data"
    tiny_dataset(data, test_good_per_category=10, test_defect_per_category=4)
    # independent draws: after 6 steps an antithetic pair would reconstruct the tokens almost exactly (scores ~1e-6)
    train(tiny_config(data).override({"inference.antithetic": False}), base / "runs" / "demo" / "run")
    return base


def test_documented_example_runs(demo_like, monkeypatch, capsys):
    """The "Use from Python" example of the docs, as written, on a folder laid out like the demo's output."""
    match = EXAMPLE.search(EXAMPLE_PAGE.read_text(encoding="utf-8"))
    assert match, f"{EXAMPLE_PAGE} has no api-example block"
    code = match.group(1)
    assert len(code.strip().splitlines()) <= 6
    monkeypatch.chdir(demo_like)
    exec(compile(code, str(EXAMPLE_PAGE), "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 10 + 4  # every synth_nut test image
    assert all(re.fullmatch(r"\S+\.png \d+\.\d\d (True|False) \d+", line) for line in lines), lines
    saved = json.loads((demo_like / "runs" / "demo" / "run" / CALIBRATION_FILE).read_text())
    assert saved["global"]["target_fpr"] == 0.05 and saved["global"]["num_images"] == 20


def test_public_names_and_lazy_import():
    assert set(dpdiff.__all__) >= {"load_config", "fit", "Detector", "Prediction", "OnnxDetector"}
    torch_detector = __import__("dpdiff.inference.detector", fromlist=["Detector"]).Detector
    assert issubclass(torch_detector, dpdiff.Detector) and issubclass(dpdiff.OnnxDetector, dpdiff.Detector)
    assert dpdiff.load_config("lite0_cpu").backbone.image_size == 256
    with pytest.raises(AttributeError):
        _ = dpdiff.nothing_here
    code = "import sys, dpdiff, dpdiff.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.stdout.strip() == "False", out.stderr  # `import dpdiff` does not load torch


def test_every_input_kind_gives_the_same_prediction(demo_like):
    detector = dpdiff.Detector.load(demo_like / "runs" / "demo" / "run")
    normal = sorted((demo_like / "runs" / "demo" / "data").glob("*/test/good/*.png"))
    detector.calibrate(normal, target_fpr=0.1, save=False)
    paths = sorted((demo_like / "runs" / "demo" / "data" / "synth_nut" / "test").glob("*/*.png"))[:5]
    arrays = [np.array(Image.open(p).convert("RGB")) for p in paths]
    tensors = [torch.from_numpy(a).permute(2, 0, 1).float() / 255.0 for a in arrays]
    want = detector.predict(paths)
    variants = {
        "str paths": [str(p) for p in paths],
        "PIL": [Image.open(p) for p in paths],
        "arrays": arrays,
        "tensors": tensors,
        "one batch tensor": torch.stack(tensors),
    }
    for name, images in variants.items():
        got = detector.predict(images)
        for a, b in zip(want, got, strict=True):
            assert a.score == b.score and a.is_anomalous == b.is_anomalous, name
            assert np.array_equal(a.anomaly_map, b.anomaly_map) and np.array_equal(a.mask, b.mask), name
        assert all(p.image is None for p in got) or name == "str paths"
    # another batching: the same noise for every image, so the same scores up to float rounding of the GEMMs
    one_by_one = detector.predict(arrays, batch_size=1)
    np.testing.assert_allclose([p.score for p in one_by_one], [p.score for p in want], rtol=1e-5)
    p = want[0]
    assert p.image == str(paths[0]) and p.anomaly_map.shape == (64, 64) == p.mask.shape
    assert p.anomaly_map.dtype == np.float32 and p.mask.dtype == bool
    assert p.normalized_score == pytest.approx(p.score / p.image_threshold)
    assert p.is_anomalous == (p.normalized_score > 1.0)
    assert json.loads(json.dumps(p.to_dict()))["defect_pixels"] == int(p.mask.sum())


def test_predictions_are_at_the_images_own_size(demo_like):
    detector = dpdiff.Detector.load(demo_like / "runs" / "demo" / "run")
    big = Image.open(sorted((demo_like / "runs" / "demo" / "data").glob("*/test/*/*.png"))[0]).resize((150, 90))
    (p,) = detector.predict(big)
    assert p.anomaly_map.shape == (90, 150)
    if not detector.calibrated:
        assert p.is_anomalous is None and p.mask is None and p.normalized_score is None


def test_fit_trains_holds_out_and_calibrates(demo_like, tmp_path, tiny_config):
    data = demo_like / "runs" / "demo" / "data"
    detector = dpdiff.fit(
        data,
        config=tiny_config(),
        output=tmp_path / "run",
        categories=["synth_nut"],
        train__steps=3,
        train__calibration_fraction=0.5,
        train__calibration_fpr=0.25,
    )
    assert isinstance(detector, dpdiff.Detector) and detector.calibrated
    assert json.loads((tmp_path / "run" / "config.json").read_text())["categories"] == ["synth_nut"]
    assert detector.thresholds().num_images == 3  # half of the 6 training images
    (p,) = detector.predict(sorted((data / "synth_nut" / "test" / "good").glob("*.png"))[:1])
    assert p.is_anomalous is not None and p.mask is not None


# ------------------------------------------------------------------------------------------------ bad input
@pytest.fixture
def folder_with_a_corrupt_image(demo_like, tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted((demo_like / "runs" / "demo" / "data" / "synth_nut" / "test" / "good").glob("*.png"))[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def test_corrupt_image_is_an_error_naming_it_or_a_skipped_row(demo_like, folder_with_a_corrupt_image, tmp_path, capsys):
    run = demo_like / "runs" / "demo" / "run"
    detector = dpdiff.Detector.load(run)
    with pytest.raises(DataError, match="broken.png"):
        detector.predict(folder_with_a_corrupt_image)
    assert main(["predict", str(run), str(folder_with_a_corrupt_image), "-o", str(tmp_path / "p")]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert not (tmp_path / "p" / "scores.csv").exists()
    assert main(["predict", str(run), str(folder_with_a_corrupt_image), "-o", str(tmp_path / "p"), "--skip-bad"]) == 0
    rows = list(csv.DictReader((tmp_path / "p" / "scores.csv").open()))
    assert [r["status"].split(":")[0] for r in rows] == ["ok", "ok", "ok", "skipped"]  # sorted: broken.png last
    assert rows[-1]["image"].endswith("broken.png") and rows[-1]["score"] == ""
    assert len(list((tmp_path / "p" / "overlays").glob("*.png"))) == 3


def test_cli_calibrate_then_predict_writes_decisions_and_masks(demo_like, tmp_path, capsys):
    run = tmp_path / "run"
    import shutil

    shutil.copytree(demo_like / "runs" / "demo" / "run", run)
    (run / CALIBRATION_FILE).unlink(missing_ok=True)
    data = demo_like / "runs" / "demo" / "data"
    assert main(["calibrate", str(run), "--normal", str(data / "synth_nut" / "test" / "good"), "--fpr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "needs at least 99 normal images, got 10" in err and not (run / CALIBRATION_FILE).exists()
    assert main(["calibrate", str(run), "--normal", str(data / "synth_nut" / "test" / "good"), "--fpr", "0.1"]) == 0
    assert "global thresholds (false-alarm rate 0.1 per image, 0.001 per pixel, 10 images)" in capsys.readouterr().out
    assert main(["predict", str(run), str(data / "synth_nut" / "test"), "-o", str(tmp_path / "p")]) == 0
    rows = list(csv.DictReader((tmp_path / "p" / "scores.csv").open()))
    assert len(rows) == 14 and all(r["is_anomalous"] in ("true", "false") for r in rows)
    assert all(
        float(r["normalized_score"])
        == pytest.approx(
            float(r["score"]) / json.loads((run / CALIBRATION_FILE).read_text())["global"]["image_threshold"], rel=1e-5
        )
        for r in rows
    )
    masks = sorted((tmp_path / "p" / "masks").rglob("*.png"))
    anomalous = [r for r in rows if r["is_anomalous"] == "true"]
    assert 0 < len(anomalous) < 14 and len(masks) == len(anomalous)  # masks on images judged anomalous only
    assert all(int(r["defect_pixels"]) == 0 for r in rows if r["is_anomalous"] == "false")
    m = np.asarray(Image.open(masks[0]))
    assert m.shape == (64, 64) and set(np.unique(m)) <= {0, 255}
    assert sum(int(r["defect_pixels"]) for r in rows) == sum(int((np.asarray(Image.open(p)) > 0).sum()) for p in masks)
