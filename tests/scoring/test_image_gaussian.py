"""inference.image_gaussian_weight (beyond the paper): a Gaussian of normal training images' mean backbone token
whose Mahalanobis distance is added, z-scored, to the z-scored image score; built by `dpdiff train`, used by the
Detector and the ONNX graph; the pixel maps are unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.covariance import LedoitWolf

from dpdiff.config import Config
from dpdiff.features import tokens_from_maps
from dpdiff.inference.detector import Detector, apply_test_overrides
from dpdiff.inference.export import export_onnx
from dpdiff.inference.onnx_runtime import OnnxDetector
from dpdiff.scoring.image_gaussian import ImageGaussian
from dpdiff.utils.errors import CheckpointError, ConfigError
from dpdiff.utils.run_files import IMAGE_GAUSSIAN_FILE, TOKEN_BANK_FILE
from dpdiff.workflows.train import train


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory, tiny_config) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("gaussian")
    cfg = tiny_config(tiny_data).override({"inference.antithetic": False})
    # with the token bank too, as lite0_cpu ships them: the bank is built first, the Gaussian's statistics on its scores
    both = {"inference.image_gaussian_weight": 0.5, "inference.knn_weight": 1.0}
    with_gaussian = train(cfg.override(both), base / "with_gaussian")
    plain = train(cfg, base / "plain")
    return with_gaussian, plain


def _test_images(data: Path) -> list[Path]:
    return sorted(data.glob("*/test/*/*.png"))


@pytest.mark.integration
def test_training_builds_the_gaussian_and_image_scores_add_the_two_z_scores(runs, tiny_data):
    with_gaussian, plain = runs
    assert (with_gaussian / IMAGE_GAUSSIAN_FILE).is_file() and not (plain / IMAGE_GAUSSIAN_FILE).exists()
    assert (with_gaussian / TOKEN_BANK_FILE).is_file()
    detector = Detector.load(with_gaussian)
    gaussian = detector.image_gaussian()
    tokens = tokens_from_maps(detector.features(torch.from_numpy(detector.preprocess(_test_images(tiny_data)[:4]))))
    plain_cfg = apply_test_overrides(detector.cfg, {"image_gaussian_weight": 0.0})
    plain_scorer, scorer = detector.scorer(plain_cfg.inference), detector.scorer()
    assert plain_scorer.image_gaussian is None and scorer.image_gaussian is gaussian
    maps0, s0 = plain_scorer.score_tokens(tokens, plain_scorer.noise_source())
    maps1, s1 = scorer.score_tokens(tokens, scorer.noise_source())
    torch.testing.assert_close(maps1, maps0)  # the pixel maps are the reconstruction's
    d = tokens.mean(1).double() - gaussian.mean.double()
    precision = gaussian.whitening.double() @ gaussian.whitening.double().T
    g = ((d @ precision) * d).sum(-1).sqrt()  # Mahalanobis, by hand
    mu_s, sd_s, mu_g, sd_g = gaussian.stats.double().tolist()
    want = (s0.double() - mu_s) / sd_s + 0.5 * (g - mu_g) / sd_g
    torch.testing.assert_close(s1.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.integration
def test_an_image_darker_than_every_normal_one_gets_a_larger_distance(runs, tiny_data, tmp_path):
    """The reason for the option (issue #21): an image-wide shift is far from the normal images' mean token."""
    with_gaussian, _ = runs
    detector = Detector.load(with_gaussian)
    good = sorted(tiny_data.glob("*/test/good/*.png"))[:3]
    dark = []
    for i, p in enumerate(good):
        arr = np.asarray(Image.open(p).convert("RGB"), np.float32) * 0.35
        dark.append(tmp_path / f"dark{i}.png")
        Image.fromarray(arr.astype(np.uint8)).save(dark[-1])

    def distances(paths):
        feats = detector.features(torch.from_numpy(detector.preprocess(paths)))
        return detector.image_gaussian().distances(tokens_from_maps(feats))

    assert distances(dark).min() > distances(good).max()


def test_gaussian_round_trip_matches_sklearn(tmp_path):
    rng = np.random.default_rng(0)
    fit = LedoitWolf().fit(rng.normal(size=(40, 6)))
    gaussian = ImageGaussian.from_precision(fit.location_, fit.precision_, torch.arange(4.0) + 1)
    gaussian.save(tmp_path)
    back = ImageGaussian.load(tmp_path)
    assert torch.equal(back.whitening, gaussian.whitening) and torch.equal(back.stats, gaussian.stats)
    tokens = torch.as_tensor(rng.normal(size=(3, 5, 6)), dtype=torch.float32)
    want = np.sqrt(fit.mahalanobis(tokens.mean(1).double().numpy()))
    np.testing.assert_allclose(back.distances(tokens).numpy(), want, rtol=1e-4)


@pytest.mark.integration
def test_a_run_without_the_gaussian_says_how_to_get_one(runs, tiny_data):
    _, plain = runs
    detector = Detector.load(plain)
    detector.cfg = apply_test_overrides(detector.cfg, {"image_gaussian_weight": 0.5})
    with pytest.raises(CheckpointError, match="image_gaussian.safetensors.*image_gaussian_weight"):
        detector.predict(_test_images(tiny_data)[:1])


@pytest.mark.integration
def test_the_gaussian_travels_into_the_onnx_graph(runs, tiny_data, tmp_path):
    with_gaussian, _ = runs
    summary = export_onnx(Detector.load(with_gaussian), tmp_path / "gaussian.onnx")
    # the z-score divides the maps' image score by its spread on normal images, which on this tiny fixture is
    # 1e-4 of its value: float32 rounding of the score (1e-7 relative) becomes 1e-3 of a z unit, hence 1e-3 here
    assert summary["max_rel_score_diff"] < 1e-3 and summary["max_abs_map_diff"] < 1e-4
    images = _test_images(tiny_data)
    s_torch = np.array([p.score for p in Detector.load(with_gaussian).predict(images)])
    s_onnx = np.array([p.score for p in OnnxDetector.load(tmp_path / "gaussian.onnx").predict(images)])
    np.testing.assert_allclose(s_onnx, s_torch, rtol=1e-3, atol=1e-2)


def test_tiling_refuses_the_image_gaussian():
    with pytest.raises(ConfigError, match="image_gaussian_weight.*data.tiling"):
        Config().override({"data.tiling": {"grid": [2, 2]}, "inference.image_gaussian_weight": 0.5})


def test_too_few_training_images_are_refused_before_the_steps(tiny_data, tiny_config, tmp_path):
    good = sorted(tiny_data.glob("*/train/good/*.png"))[:3]
    (tmp_path / "data" / "widget" / "train" / "good").mkdir(parents=True)
    for p in good:
        shutil.copy(p, tmp_path / "data" / "widget" / "train" / "good" / p.name)
    overrides = {"data.root": str(tmp_path / "data"), "data.categories": ["widget"]}
    cfg = tiny_config(tiny_data).override(overrides | {"inference.image_gaussian_weight": 0.5, "train.steps": 10**6})
    with pytest.raises(ConfigError, match="at least 4 training images, this run has 3"):
        train(cfg, tmp_path / "run")  # 10**6 steps: the refusal comes before them
