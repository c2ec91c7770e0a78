"""Non-square inputs end to end (issue #24): a tiny model with ``backbone.image_size: [64, 128]`` trained on wide
images (40 x 100) through training, evaluation at the native aspect (maps and masks 32 x 64), the ONNX export
(scores as PyTorch's, as for square inputs), ``dpdiff serve``, the letterbox and the region of interest at
test time; and the square default unchanged (fingerprints, cache keys, results files)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

import dpdiff
from dpdiff.config import Config
from dpdiff.data.geometry import ImageGeometry
from dpdiff.inference.detector import Detector, apply_test_overrides, scoring_settings
from dpdiff.inference.export import export_onnx
from dpdiff.inference.onnx_runtime import OnnxDetector
from dpdiff.model.checkpoint import load_model
from dpdiff.serve.app import ServeSettings, create_app
from dpdiff.serve.model import ServedModel
from dpdiff.utils.errors import DataError
from dpdiff.workflows.evaluate import protocol_description
from dpdiff.workflows.reporting import evaluate_and_report
from dpdiff.workflows.train import train

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("single_thread")]

DATA_HW = (40, 100)  # the images: 2.5:1
INPUT = [64, 128]  # the model input: 2:1, a 4 x 8 token grid at stride 16
SCORE_RTOL = 1e-4  # as the square export test (issue #14)
ROI = [10, 5, 80, 35]  # pixels of the 100 x 40 images


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_dataset) -> Path:
    root = tmp_path_factory.mktemp("wide") / "data"
    tiny_dataset(root, image_size=DATA_HW, test_good_per_category=3, test_defect_per_category=3)
    return root


@pytest.fixture(scope="module")
def run(data, tmp_path_factory, tiny_config) -> Path:
    out = tmp_path_factory.mktemp("wide_run") / "run"
    cfg = tiny_config(data).override(
        {
            "backbone.image_size": INPUT,
            "train.steps": 20,
            "evaluation.resolution": 64,  # the long side: maps 32 x 64
            # independent draws: an antithetic pair of a barely trained model scores ~1e-6 (rounding noise)
            "inference.antithetic": False,
        }
    )
    train(cfg, out)
    return out


def _images(data: Path) -> list[Path]:
    return sorted(data.glob("*/test/*/*.png"))


def test_training_builds_the_non_square_grid(run):
    model, cfg, _ = load_model(run, "cpu")
    assert model.grid_size == (4, 8) and cfg.backbone.image_size == INPUT
    assert json.loads((run / "config.json").read_text())["grid_size"] == [4, 8]


def test_evaluation_compares_maps_and_masks_at_the_native_aspect(run, data):
    result = evaluate_and_report(run, report=True)
    assert result["report_data"].map_size == (32, 64)
    for row in result["per_category"].values():
        assert 0.0 <= row["I-AUROC"] <= 1.0 and 0.0 <= row["P-AUROC"] <= 1.0 and np.isfinite(row["P-AUPRO"])
    doc = json.loads((run / "eval" / "results.json").read_text())
    assert doc["protocol"]["evaluation_resolution"] == [32, 64] and doc["protocol"]["input_resolution"] == INPUT
    assert "64x128" in doc["protocol"]["resize"] and "geometry" not in doc["protocol"]  # stretch, no ROI: plain
    overlays = sorted((run / "eval" / "overlays").rglob("*.png"))
    assert overlays
    w, h = Image.open(overlays[0]).size
    assert w > h  # the panels keep the wide frame (3 panels of 64 x 32 side by side, a title band on top)
    assert (run / "eval" / "report.html").is_file()


def test_predictions_at_the_image_size_and_onnx_scores_like_pytorch(run, data, tmp_path):
    detector = Detector.load(run)
    images = _images(data)
    torch_pred = detector.predict(images)
    assert all(p.anomaly_map.shape == DATA_HW and p.model_map.shape == (32, 64) for p in torch_pred)
    path = tmp_path / "model.onnx"
    summary = export_onnx(detector, path)
    assert summary["image_size"] == INPUT and summary["map_size"] == [32, 64]
    assert summary["max_rel_score_diff"] < SCORE_RTOL and summary["batch_independent"]
    onnx_detector = Detector.load(path)
    assert isinstance(onnx_detector, OnnxDetector) and onnx_detector.geometry == detector.geometry
    onnx_pred = onnx_detector.predict(images)
    s_t = np.array([p.score for p in torch_pred])
    s_o = np.array([p.score for p in onnx_pred])
    assert np.all(np.abs(s_o - s_t) <= SCORE_RTOL * np.abs(s_t))
    assert all(p.anomaly_map.shape == DATA_HW for p in onnx_pred)


def test_letterbox_and_roi_at_test_time_in_both_runtimes(run, data, tmp_path):
    detector = Detector.load(run)
    detector.cfg = apply_test_overrides(detector.cfg, {"data.resize": "keep_aspect", "data.roi": ROI})
    images = _images(data)[:4]
    preds = detector.predict(images)
    x0, y0, x1, y1 = ROI
    for p in preds:
        assert p.anomaly_map.shape == DATA_HW and p.roi == ROI and p.to_dict()["roi"] == ROI
        outside = np.ones(DATA_HW, bool)
        outside[y0:y1, x0:x1] = False
        assert np.all(p.anomaly_map[outside] == 0) and np.all(p.anomaly_map[~outside] > 0)
    # the letterbox: the 70 x 30 ROI (7:3) fits a 2:1 input 128 x 55 (rows 4..58); the padding rows never reach
    # the map at the image's size (checked above: every ROI pixel > 0 comes from the content)
    assert detector.geometry.content_box((70, 30)) == (0, 4, 128, 59)
    # the exported model carries the geometry: the ONNX predictor cuts and places the maps the same way
    path = tmp_path / "roi.onnx"
    export_onnx(detector, path, verify=False)
    onnx_preds = Detector.load(path).predict(images)
    for p, q in zip(preds, onnx_preds, strict=True):
        assert q.roi == ROI and abs(q.score - p.score) <= SCORE_RTOL * abs(p.score)
        assert np.allclose(q.anomaly_map, p.anomaly_map, atol=1e-3)
    small = tmp_path / "small.png"
    Image.new("RGB", (60, 30)).save(small)
    with pytest.raises(DataError, match=r"small.png.*smaller than data.roi"):
        detector.predict([small])


def test_serve_answers_at_the_image_size_with_the_roi(run, data):
    served = ServedModel.load(run, device="cpu")
    assert served.info["image_size"] == INPUT and served.info["map_size"] == [32, 64]
    served.detector.cfg = apply_test_overrides(served.detector.cfg, {"data.roi": ROI})
    image = _images(data)[-1].read_bytes()
    with TestClient(create_app(served, ServeSettings(max_wait_ms=1))) as client:
        r = client.post("/predict", content=image, params={"overlay": "true"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["width"], body["height"]) == (DATA_HW[1], DATA_HW[0]) and body["roi"] == ROI
        reference = dpdiff.Detector.load(run)
        reference.cfg = served.detector.cfg
        (want,) = reference.predict([_images(data)[-1]])
        assert body["score"] == pytest.approx(want.score, rel=1e-6)
        small = Image.new("RGB", (50, 20))  # smaller than the pixel ROI: refused before it joins a batch
        out = io.BytesIO()
        small.save(out, format="PNG")
        r = client.post("/predict", content=out.getvalue())
        assert r.status_code == 422 and r.json()["error"] == "roi_outside_image", r.text


def test_square_default_is_unchanged():
    cfg = Config()
    # the fingerprint thresholds are checked against, and the results protocol, as before [H, W] existed
    settings = scoring_settings(cfg)
    assert settings["map_size"] == 256 and settings["backbone"]["image_size"] == 256 and "geometry" not in settings
    proto = protocol_description(cfg)
    assert proto["evaluation_resolution"] == 256 and proto["input_resolution"] == 256 and "geometry" not in proto
    assert proto["resize"] == (
        "images: direct resize to 256^2 (aspect not kept); maps: token grid bilinearly upsampled to 256^2"
    )
    assert proto["mask_rule"] == "mask values in [0,1] resized (nearest) to 256^2, defect where > 0.0"
    assert ImageGeometry.from_config(cfg).input_key() == {"image_size": 256}  # the feature cache key


def test_comparison_maps_are_brought_to_the_evaluation_frame(data):
    """The kNN comparison's maps (on the model's input frame) go to the masks' frame: a letterboxed map's padding
    is cut off, a stretched one is used as it is."""
    from dpdiff.data.dataset import ImageDataset
    from dpdiff.data.readers import load_samples
    from dpdiff.experiments.compare import eval_frame_maps, masks_and_labels

    samples = load_samples("mvtec", data, None, "test")[:3]
    letterbox = ImageDataset(samples, ImageGeometry((64, 64), "keep_aspect", map_size=(32, 32)))
    top, bottom = letterbox.geometry.content_box((DATA_HW[1], DATA_HW[0]), (32, 32))[1::2]
    maps = np.full((3, 32, 32), 99.0, np.float32)
    maps[:, top:bottom] = 1.0  # the content rows; the padding rows hold 99
    framed = eval_frame_maps(maps, letterbox)
    assert framed.shape == masks_and_labels(letterbox)[0].shape == (3, 32, 32) and np.allclose(framed, 1.0)
    stretched = ImageDataset(samples, ImageGeometry((64, 64), map_size=(32, 32)))
    assert np.array_equal(eval_frame_maps(maps, stretched), maps)
