"""ONNX export (dpdiff/inference/export.py) and the onnxruntime runner (dpdiff/inference/onnx_runtime.py): a
tiny trained model exported and run in onnxruntime scores like PyTorch (maps, scores, ranking, decisions), for any
batch size, with the thresholds and preprocessing in its metadata."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from dpdiff.cli import main
from dpdiff.inference.detector import Detector
from dpdiff.inference.export import ScoringGraph, export_onnx
from dpdiff.inference.onnx_runtime import OnnxDetector, sidecar_calibration_path
from dpdiff.utils.errors import ConfigError, RunFolderError
from dpdiff.workflows.train import train

SCORE_RTOL, MAP_ATOL = 1e-4, 1e-3  # the acceptance bounds of issue #14


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_dataset) -> Path:
    root = tmp_path_factory.mktemp("export") / "data"
    tiny_dataset(root, test_good_per_category=12, test_defect_per_category=4)
    return root


@pytest.fixture(scope="module")
def run(data, tmp_path_factory, tiny_config) -> Path:
    out = tmp_path_factory.mktemp("export_run") / "run"
    # maps at 48 px (the resize is in the graph); 3 independent draws: after 6 training steps an antithetic pair
    # reconstructs these tokens almost exactly (scores ~1e-6, where a relative comparison means nothing);
    # v-prediction, so the graph holds the conversion of the network's output to noise (model.prediction)
    cfg = tiny_config(data).override(
        {
            "inference.ensemble": 3,
            "inference.antithetic": False,
            "inference.ddim_steps": 2,
            "evaluation.resolution": 48,
            "model.prediction": "v",
        }
    )
    train(cfg, out)
    detector = Detector.load(out)
    detector.calibrate(sorted(data.glob("*/test/good/*.png")), target_fpr=0.1)  # 24 normal images
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    summary = export_onnx(Detector.load(run), path)
    return path, summary


def _defective(data: Path) -> list[Path]:
    return sorted(p for p in data.glob("*/test/*/*.png") if p.parent.name != "good")


def test_onnxruntime_scores_like_pytorch(run, data, exported):
    path, summary = exported
    assert summary["max_rel_score_diff"] < SCORE_RTOL and summary["max_abs_map_diff"] < MAP_ATOL
    assert summary["batch_independent"]
    images = _defective(data) + sorted(data.glob("*/train/good/*.png"))  # not the calibration images
    torch_pred = Detector.load(run).predict(images)
    onnx_detector = Detector.load(path)
    assert isinstance(onnx_detector, OnnxDetector)
    onnx_pred = onnx_detector.predict(images)
    s_t = np.array([p.score for p in torch_pred])
    s_o = np.array([p.score for p in onnx_pred])
    assert np.all(np.abs(s_o - s_t) <= SCORE_RTOL * np.abs(s_t))
    assert np.array_equal(np.argsort(s_t, kind="stable"), np.argsort(s_o, kind="stable"))  # the same ranking
    pairs = list(zip(torch_pred, onnx_pred, strict=True))
    assert max(float(np.abs(a.anomaly_map - b.anomaly_map).max()) for a, b in pairs) < MAP_ATOL
    # the thresholds travel in the metadata: the same decisions on every image, mostly the same mask pixels
    assert [p.is_anomalous for p in onnx_pred] == [p.is_anomalous for p in torch_pred]
    assert {p.is_anomalous for p in torch_pred} == {True, False}  # a threshold inside the scores: not trivial
    assert all(
        a.image_threshold == b.image_threshold and a.pixel_threshold == b.pixel_threshold
        for a, b in zip(torch_pred, onnx_pred, strict=True)
    )
    differing = sum(int((a.mask != b.mask).sum()) for a, b in zip(torch_pred, onnx_pred, strict=True))
    assert differing <= 1e-4 * sum(a.mask.size for a in torch_pred)


def test_batch_axis_is_dynamic(run, data, exported):
    detector = OnnxDetector.load(exported[0])
    images = _defective(data)[:7]
    batch = detector.preprocess(images)
    one_by_one = np.concatenate([detector.run(batch[i : i + 1])[1] for i in range(len(images))])
    for size in (3, 7):
        scores = np.concatenate([detector.run(batch[i : i + size])[1] for i in range(0, len(images), size)])
        np.testing.assert_allclose(scores, one_by_one, rtol=1e-5)
    # the normalised batch is the one PyTorch builds
    assert np.array_equal(batch, Detector.load(run).preprocess(images))


def test_graph_is_the_detector_pipeline_with_its_common_noise(run, data):
    """In PyTorch, the module that is exported (noise as buffers, static padding) gives the detector's numbers."""
    detector = Detector.load(run)
    graph = ScoringGraph(detector).eval()
    e = detector.cfg.inference.ensemble
    n, c = detector.model.grid_size[0] * detector.model.grid_size[1], detector.model.in_dim
    assert graph.noise_x.shape == (e, 1, n, c) and graph.noise_p.shape == (e, 1, detector.model.num_prototypes, c)
    assert not torch.equal(graph.noise_x[1], graph.noise_x[0])
    batch = torch.from_numpy(detector.preprocess(_defective(data)[:5]))
    scorer = detector.scorer()
    with torch.inference_mode():
        want_maps, want_scores = scorer.score_features(detector.features(batch), scorer.noise_source())
        maps, scores = graph(batch)
    torch.testing.assert_close(scores, want_scores, rtol=1e-6, atol=0)
    torch.testing.assert_close(maps, want_maps, rtol=0, atol=1e-5)
    detector.cfg = detector.cfg.override({"inference.antithetic": True, "inference.ensemble": 2})
    pair = ScoringGraph(detector).noise_x
    assert torch.equal(pair[1], -pair[0]) and torch.equal(pair[0], graph.noise_x[0])  # same seeded draws


def test_metadata_holds_preprocessing_and_thresholds(run, exported):
    model = onnx.load(str(exported[0]))
    meta = {p.key: p.value for p in model.metadata_props}
    thresholds = Detector.load(run).thresholds()
    assert float(meta["dpdiff.image_threshold"]) == thresholds.image
    assert float(meta["dpdiff.pixel_threshold"]) == thresholds.pixel
    pre = json.loads(meta["dpdiff.preprocess"])
    assert pre["image_size"] == 64 and len(pre["mean"]) == 3 and "bicubic" in pre["resize"]
    assert model.opset_import[0].version >= 17
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value


def test_calibrating_the_onnx_model_writes_beside_it(exported, data, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(exported[0].read_bytes())
    detector = Detector.load(path)
    t = detector.calibrate(sorted(data.glob("*/test/good/*.png")), target_fpr=0.2)
    assert sidecar_calibration_path(path).is_file()
    assert Detector.load(path).thresholds().target_fpr == 0.2 == t.target_fpr


def test_export_refuses_what_it_cannot_honour(run, exported, tmp_path):
    with pytest.raises(RunFolderError, match="--overwrite"):
        export_onnx(Detector.load(run), exported[0])
    detector = Detector.load(run)
    detector.cfg = detector.cfg.override({"inference.common_noise": False})
    with pytest.raises(ConfigError, match="common_noise"):
        export_onnx(detector, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_int8_export_keeps_the_metadata_and_stays_close(run, data, exported, tmp_path):
    path = tmp_path / "model.int8.onnx"
    summary = export_onnx(Detector.load(run), path, quantize="int8")
    assert summary["quantization"] == "int8" and summary["bytes"] < exported[1]["bytes"]
    int8 = OnnxDetector.load(path)
    float_model = OnnxDetector.load(exported[0])
    assert "int8" in int8.metadata["quantization"] and int8.fingerprint() != float_model.fingerprint()
    assert float_model.calibrated and not int8.calibrated  # the float thresholds do not travel: calibrate it
    images = _defective(data) + sorted(data.glob("*/test/good/*.png"))
    s_f = np.array([p.score for p in OnnxDetector.load(exported[0]).predict(images)])
    s_q = np.array([p.score for p in int8.predict(images)])
    assert not np.array_equal(s_f, s_q)  # it is quantised ...
    assert np.corrcoef(s_f, s_q)[0, 1] > 0.9  # ... and still scores the images alike
    with pytest.raises(ConfigError, match="quantize"):
        export_onnx(Detector.load(run), tmp_path / "x.onnx", quantize="int4")


@pytest.mark.integration
def test_cli_export_then_predict_with_the_onnx_model(run, data, tmp_path, capsys):
    model = tmp_path / "model.onnx"
    assert main(["export", str(run), "--format", "onnx", "--output", str(model)]) == 0
    assert "onnxruntime vs PyTorch" in capsys.readouterr().out
    assert main(["predict", str(model), str(data / "synth_nut" / "test"), "-o", str(tmp_path / "pred")]) == 0
    rows = (tmp_path / "pred" / "scores.csv").read_text().splitlines()
    assert len(rows) == 1 + 16 and all(r.endswith(",ok") for r in rows[1:])
    anomalous = sum(r.split(",")[3] == "true" for r in rows[1:])
    assert len(list((tmp_path / "pred" / "masks").rglob("*.png"))) == anomalous  # masks on anomalous images only
    assert main(["export", str(run), "--output", str(model)]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err


def test_the_onnx_runtime_and_its_service_need_no_torch(exported, data):
    """`Detector.load("model.onnx")` and `dpdiff serve model.onnx` in a process where importing torch, torchvision
    or timm fails (an edge box with onnxruntime and the light packages only): same scores."""
    path = exported[0]
    images = [str(p) for p in _defective(data)[:3]]
    code = textwrap.dedent(
        f"""
        import json, sys
        for name in ("torch", "torchvision", "timm"):
            sys.modules[name] = None  # any import of them now raises ImportError
        import dpdiff
        from dpdiff.serve.model import ServedModel
        detector = dpdiff.Detector.load({str(path)!r})
        scores = [p.score for p in detector.predict({images!r})]
        served = ServedModel.load({str(path)!r}, device="cpu")
        print(json.dumps({{"type": type(detector).__name__, "scores": scores, "runtime": served.runtime}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["type"] == "OnnxDetector" and got["runtime"] == "onnx"
    want = [p.score for p in OnnxDetector.load(path).predict(images)]  # here, with torch loaded
    np.testing.assert_allclose(got["scores"], want, rtol=1e-6)


def test_openvino_export_scores_like_onnxruntime_with_the_same_thresholds(run, data, exported, tmp_path):
    """`dpdiff export --format openvino`: the IR (float32 weights) loads through `Detector.load`, scores like the
    ONNX export (same decisions, thresholds from the metadata), and an existing output is refused."""
    pytest.importorskip("openvino")
    from dpdiff.inference.openvino_runtime import OpenVinoDetector

    xml = tmp_path / "model.xml"
    assert main(["export", str(run), "--format", "openvino", "--output", str(xml)]) == 0
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    images = _defective(data) + sorted(data.glob("*/train/good/*.png"))
    ov_detector = Detector.load(xml)
    assert isinstance(ov_detector, OpenVinoDetector)
    ov_pred, onnx_pred = ov_detector.predict(images), Detector.load(exported[0]).predict(images)
    s_v = np.array([p.score for p in ov_pred])
    s_o = np.array([p.score for p in onnx_pred])
    assert np.all(np.abs(s_v - s_o) <= SCORE_RTOL * np.abs(s_o))
    assert (
        max(float(np.abs(a.anomaly_map - b.anomaly_map).max()) for a, b in zip(ov_pred, onnx_pred, strict=True))
        < MAP_ATOL
    )
    assert [p.is_anomalous for p in ov_pred] == [p.is_anomalous for p in onnx_pred]
    assert ov_pred[0].image_threshold == onnx_pred[0].image_threshold is not None
    from dpdiff.serve.model import ServedModel  # `dpdiff serve model.xml` loads it the same way

    served = ServedModel.load(xml)
    assert served.detector.predict(images[:2])[0].score == pytest.approx(ov_pred[0].score, rel=1e-6)
    before = xml.read_bytes()
    assert main(["export", str(run), "--format", "openvino", "--output", str(xml)]) != 0  # exists: refused
    assert xml.read_bytes() == before
