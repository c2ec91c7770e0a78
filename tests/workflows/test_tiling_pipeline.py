"""Tiles end to end (issue #24 item 2, ``data.tiling``): a tiny model trained on the tiles of wide images (64 x 160,
tiles of 64 x 64, three per image), evaluated (tables and report), exported to ONNX (the graph scores a batch of
tiles; the predictor cuts and stitches: scores as PyTorch's), served; a single tile covering the image gives
exactly the untiled map and score; a 20-megapixel image predicted with bounded memory; the stitching puts every
tile's map in its place; and the untiled default unchanged."""

from __future__ import annotations

import json
import resource
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from dpdiff.config import Config
from dpdiff.data.geometry import ImageGeometry
from dpdiff.data.tiling import TilingSpec, frame_score
from dpdiff.inference.calibration import Thresholds
from dpdiff.inference.detector import Detector, apply_test_overrides, scoring_settings
from dpdiff.inference.export import export_onnx
from dpdiff.inference.onnx_runtime import OnnxDetector
from dpdiff.inference.predictor import Predictor, Preprocessing
from dpdiff.serve.app import ServeSettings, create_app
from dpdiff.serve.model import ServedModel
from dpdiff.utils.errors import ConfigError
from dpdiff.workflows.evaluate import protocol_description
from dpdiff.workflows.reporting import evaluate_and_report
from dpdiff.workflows.train import train

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("single_thread")]

DATA_HW = (64, 160)  # the images: 2.5:1
TILING = {"tile": [64, 64], "overlap": 0.25}  # three tiles per image: columns 0, 48, 96
TILES_PER_IMAGE = 3
SCORE_RTOL = 1e-4  # as the square export test (issue #14)


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_dataset) -> Path:
    root = tmp_path_factory.mktemp("tiled") / "data"
    tiny_dataset(root, image_size=DATA_HW, test_good_per_category=3, test_defect_per_category=3)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tile_cache")


@pytest.fixture(scope="module")
def run(data, cache_dir, tmp_path_factory, tiny_config) -> Path:
    out = tmp_path_factory.mktemp("tiled_run") / "run"
    cfg = tiny_config(data).override(
        {
            "data.tiling": TILING,
            "train.steps": 20,
            "train.feature_cache": True,
            "train.cache_dir": str(cache_dir),
            "train.calibration_fraction": 0.25,  # held-out whole images, calibrated through the tiled path
            "train.calibration_fpr": 0.25,
            # independent draws: an antithetic pair of a barely trained model scores ~1e-6 (rounding noise)
            "inference.antithetic": False,
        }
    )
    train(cfg, out)
    return out


def _images(data: Path) -> list[Path]:
    return sorted(data.glob("*/test/*/*.png"))


def _with(detector, **overrides):
    detector.cfg = apply_test_overrides(detector.cfg, overrides)
    return detector


# ---------------------------------------------------------------------------------------------- config
def test_the_config_key_is_checked_at_the_boundary():
    cfg = Config().override({"data.tiling": {"grid": [2, 4]}})
    assert ImageGeometry.from_config(cfg).tiling == TilingSpec(grid=(2, 4), overlap=0.25)
    for bad, fault in (
        ({"tile": [0, 64]}, r"data\.tiling\.tile"),
        ({"tile": [64, 64], "grid": [2, 2]}, r"data\.tiling needs exactly one"),
        ({"tile": [64, 64], "overlap": 0.95}, r"data\.tiling\.overlap"),
        ({"tiles": [64, 64]}, r"data\.tiling: unknown keys"),
    ):
        with pytest.raises(ConfigError, match=fault):
            Config().override({"data.tiling": bad})


@pytest.mark.parametrize(
    "value",
    [
        {"tile": [64, 32]},
        {"tile": 64, "overlap": 0},
        {"grid": [2, 4], "overlap": 0.9},
        {"tile": [64, 64], "overlap": 0.91},
        {"tile": [64, 0]},
        {"tile": [64, 64.0]},
        {"tile": [True, 64]},
        {"grid": [2, 2, 2]},
        {"grid": [2, 2], "tile": [64, 64]},
        {"overlap": 0.5},
        {"tile": [64, 64], "overlap": "0.2"},
        {"tile": [64, 64], "stride": 8},
        [64, 64],
    ],
)
def test_the_config_check_and_the_tiling_parser_agree(value):
    """config_checks.check_tiling (the config boundary) and TilingSpec.parse (what the geometry uses) accept and
    refuse the same values (the parser applies the check, then builds the spec)."""
    from dpdiff.config_checks import check_tiling

    def accepted(check) -> bool:
        try:
            check(value)
        except ValueError:
            return False
        return True

    assert accepted(check_tiling) == accepted(TilingSpec.parse)


def test_untiled_default_is_unchanged():
    cfg = Config()
    geometry = ImageGeometry.from_config(cfg)
    assert geometry.tiling is None and geometry.is_plain and "tiling" not in geometry.to_dict()
    assert geometry.input_key() == {"image_size": 256}  # the feature cache key of every cache made before
    assert "geometry" not in scoring_settings(cfg) and "geometry" not in protocol_description(cfg)
    tiled = Config().override({"data.tiling": TILING})
    assert scoring_settings(tiled)["geometry"]["tiling"] == TILING  # thresholds are not shared across tilings
    assert ImageGeometry.from_config(tiled).input_key()["tiling"] == TILING
    assert ImageGeometry.from_dict(ImageGeometry.from_config(tiled).to_dict()) == ImageGeometry.from_config(tiled)


# ---------------------------------------------------------------------------------------------- training
def test_training_learns_on_the_tiles_keyed_per_tile_in_the_cache(run, data, cache_dir):
    state = __import__("torch").load(run / "train_state.pt", weights_only=False)
    from dpdiff.training.inputs import split_samples

    trained, held = split_samples(Detector.load(run).cfg)
    n_train = len(trained)
    assert n_train + len(held) == len(list(data.glob("*/train/good/*.png")))
    ids = state["data"]["images"]
    assert state["data"]["num_images"] == len(ids) == TILES_PER_IMAGE * n_train
    assert all("#tile=" in i for i in ids) and ids[0].endswith("#tile=0,0,64,64")
    (index,) = sorted(cache_dir.rglob("shard-*.json"))
    items = json.loads(index.read_text())["items"]
    assert len(items) == TILES_PER_IMAGE * n_train and {i[0].rpartition("#tile=")[2] for i in items} == {
        "0,0,64,64",
        "48,0,112,64",
        "96,0,160,64",
    }
    key = json.loads((index.parent / "key.json").read_text())
    assert key["tiling"] == TILING


# ---------------------------------------------------------------------------------------------- scoring
def test_a_single_tile_covering_the_image_is_exactly_the_untiled_run(run, data):
    """Stitching returns a map at the image's size whose values equal the untiled run's where one tile covers
    the whole image (and the score is the untiled one)."""
    images = _images(data)[:4]
    one_tile = _with(Detector.load(run), **{"data.tiling": {"tile": list(DATA_HW)}}).predict(images)
    untiled = _with(Detector.load(run), **{"data.tiling": None}).predict(images)
    for a, b in zip(one_tile, untiled, strict=True):
        assert a.anomaly_map.shape == DATA_HW and np.array_equal(a.anomaly_map, b.anomaly_map)
        assert np.array_equal(a.model_map, b.model_map) and a.score == b.score


def test_tiled_predictions_stitch_the_tiles_at_the_image_size(run, data):
    detector = Detector.load(run)
    images = _images(data)
    preds = detector.predict(images, batch_size=2)  # batches of 2 tiles: an image's tiles span batches
    inf = detector.cfg.inference
    for p in preds:
        assert p.anomaly_map.shape == DATA_HW and p.model_map.shape == detector.map_size
        assert np.isfinite(p.anomaly_map).all() and p.anomaly_map.min() > 0
    # the same numbers whatever the batching (common noise), and the score is the rule on the stitched frame
    again = detector.predict(images, batch_size=7)
    assert np.allclose([p.score for p in preds], [p.score for p in again], rtol=1e-5)
    (name, frame, score, hw), *_ = detector._iter_scored(images[:1], None, False, None)
    assert frame.shape == (64, 160) and hw == DATA_HW  # 64 px tiles with 64 x 64 maps: the frame is 1:1
    assert score == pytest.approx(frame_score(frame, inf.image_score, inf.pool_size, inf.top_percent))
    maps, scores = detector.score_images(images[:3])
    assert maps.shape == (3, *detector.map_size) and np.allclose(scores, [p.score for p in preds[:3]], rtol=1e-5)


class _ImageEcho(Predictor):
    """A stand-in runtime whose map of a tile is its input's first channel: the stitched map must then be the
    image's own (normalised) first channel, every tile in its place."""

    def __init__(self, geometry: ImageGeometry) -> None:
        self.cfg = Config().override({"inference.pool_size": 1})
        self._pre = Preprocessing(geometry, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.batches: list[int] = []

    @property
    def map_size(self):
        return self.geometry.map_hw

    @property
    def preprocessing(self):
        return self._pre

    def fingerprint(self) -> dict:
        return {}

    def _run_batches(self, batches):
        for batch in batches:
            self.batches.append(len(batch))
            yield batch[:, 0].copy(), batch[:, 0].max(axis=(1, 2))


def test_stitching_puts_every_tile_in_its_place():
    h, w = 96, 250
    ramp = (np.add.outer(np.arange(h) * 0.5, np.arange(w) * 0.8) % 256).astype(np.uint8)
    image = np.repeat(ramp[:, :, None], 3, axis=2)
    geometry = ImageGeometry((32, 32), tiling=TilingSpec(tile=(48, 48), overlap=0.5))
    echo = _ImageEcho(geometry)
    (p,) = echo.predict(image, batch_size=5)
    want = ramp.astype(np.float32) / 255.0
    assert p.anomaly_map.shape == (h, w)
    assert np.abs(p.anomaly_map - want)[2:-2, 2:-2].max() < 0.02  # a map at the image's size, tiles in place
    assert p.score == pytest.approx(float(p.anomaly_map.max()), abs=0.02)  # pool_size 1: the frame's max
    assert max(echo.batches) == 5 and sum(echo.batches) == len(geometry.tile_plan((w, h)).crops)


def test_a_20_megapixel_image_is_predicted_with_bounded_memory(run, capsys):
    detector = _with(Detector.load(run), **{"data.tiling": {"tile": [512, 512], "overlap": 0.25}})
    h, w = 3648, 5472  # 20 megapixels, a plain generated texture
    y, x = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    texture = (128 + 60 * np.sin(x / 37.0) * np.cos(y / 23.0)).astype(np.uint8)
    image = np.repeat(texture[:, :, None], 3, axis=2)
    del texture
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        (p,) = detector.predict(image)
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    with capsys.disabled():
        print(
            f"\n20 MP tiled predict: {seconds:.2f} s, peak traced (numpy + Python) {peak / 1e6:.0f} MB, "
            f"ru_maxrss growth {rss_kb / 1e3:.0f} MB, "
            f"{len(detector.geometry.tile_plan((w, h)).crops)} tiles"
        )
    assert p.anomaly_map.shape == (h, w) and np.isfinite(p.score)
    assert peak < 1.5e9 and rss_kb * 1024 < 1.5e9


# ---------------------------------------------------------------------------------------------- workflows
def test_evaluation_writes_the_tables_and_the_report(run):
    result = evaluate_and_report(run, report=True)
    for row in result["per_category"].values():
        assert 0.0 <= row["I-AUROC"] <= 1.0 and 0.0 <= row["P-AUROC"] <= 1.0 and np.isfinite(row["P-AUPRO"])
    doc = json.loads((run / "eval" / "results.json").read_text())
    assert doc["protocol"]["geometry"]["tiling"] == TILING and "tiles of 64x64" in doc["protocol"]["resize"]
    assert result["report_data"].map_size == (64, 64)
    assert (run / "eval" / "report.html").is_file()


def test_onnx_scores_tiles_like_pytorch(run, data, tmp_path):
    detector = Detector.load(run)
    images = _images(data)
    scores = np.sort([p.score for p in detector.predict(images)])
    middle = float((scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2)  # some of each decision
    detector.set_thresholds({None: Thresholds(middle, None, "fpr", len(images))}, save=False)
    torch_pred = detector.predict(images)
    assert len({p.is_anomalous for p in torch_pred}) == 2
    path = tmp_path / "tiled.onnx"
    summary = export_onnx(detector, path)
    assert summary["max_rel_score_diff"] < SCORE_RTOL and summary["batch_independent"]
    onnx_detector = Detector.load(path)
    assert isinstance(onnx_detector, OnnxDetector) and onnx_detector.geometry == detector.geometry
    assert onnx_detector.geometry.tiling == TilingSpec(tile=(64, 64), overlap=0.25)
    onnx_pred = onnx_detector.predict(images)
    s_t = np.array([p.score for p in torch_pred])
    s_o = np.array([p.score for p in onnx_pred])
    assert np.all(np.abs(s_o - s_t) <= SCORE_RTOL * np.abs(s_t))
    assert [p.is_anomalous for p in onnx_pred] == [p.is_anomalous for p in torch_pred]
    assert all(p.anomaly_map.shape == DATA_HW for p in onnx_pred)


def test_serve_answers_a_tiled_request_at_the_image_size(run, data):
    served = ServedModel.load(run, device="cpu")
    assert served.info["tiling"] == TILING
    image_path = _images(data)[-1]
    with TestClient(create_app(served, ServeSettings(max_wait_ms=1))) as client:
        r = client.post("/predict", content=image_path.read_bytes(), params={"overlay": "true"})
        assert r.status_code == 200, r.text
        body = r.json()
    assert (body["height"], body["width"]) == DATA_HW
    (want,) = Detector.load(run).predict([image_path])
    assert body["score"] == pytest.approx(want.score, rel=1e-6)


def test_calibration_images_are_scored_whole_and_stitched(run):
    """The held-out images are whole images (not tiles): their tiles are scored and stitched like test images,
    and the thresholds of calibration.json come from those stitched maps and scores."""
    from dpdiff.inference.calibration import fpr_thresholds
    from dpdiff.training.inputs import split_samples

    detector = Detector.load(run)
    assert detector.calibrated
    cfg = detector.cfg
    held = split_samples(cfg)[1]
    assert held and all(s.crop is None for s in held)
    maps, scores = detector.score_images([s.image_path for s in held])
    assert maps.shape == (len(held), *detector.map_size)
    want = fpr_thresholds(scores, maps, cfg.train.calibration_fpr, cfg.train.calibration_pixel_fpr)
    got = detector.thresholds()
    assert got is not None and got.image == pytest.approx(want.image, rel=1e-6)
    assert got.pixel == pytest.approx(want.pixel, rel=1e-6)
