"""inference.knn_weight (beyond the paper): a coreset bank of normal training tokens whose nearest-neighbour distance
is added, z-scored, to the z-scored reconstruction error; built by `dpdiff train`, used by the Detector and the
ONNX graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dpdiff.features import tokens_from_maps
from dpdiff.inference.detector import Detector, apply_test_overrides
from dpdiff.inference.export import export_onnx
from dpdiff.inference.onnx_runtime import OnnxDetector
from dpdiff.scoring.token_bank import TokenBank
from dpdiff.utils.errors import CheckpointError
from dpdiff.utils.run_files import TOKEN_BANK_FILE
from dpdiff.workflows.train import train


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory, tiny_config) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("bank")
    cfg = tiny_config(tiny_data).override({"inference.antithetic": False})
    with_bank = train(cfg.override({"inference.knn_weight": 1.0}), base / "with_bank")
    plain = train(cfg, base / "plain")
    return with_bank, plain


def _test_images(data: Path) -> list[Path]:
    return sorted(data.glob("*/test/*/*.png"))


@pytest.mark.integration
def test_training_builds_the_bank_and_scores_add_the_two_z_scores(runs, tiny_data):
    with_bank, plain = runs
    assert (with_bank / TOKEN_BANK_FILE).is_file() and not (plain / TOKEN_BANK_FILE).exists()
    detector = Detector.load(with_bank)
    bank = detector.bank()
    assert 0 < bank.tokens.shape[0] and bank.tokens.shape[1] == detector.model.in_dim
    tokens = tokens_from_maps(detector.features(torch.from_numpy(detector.preprocess(_test_images(tiny_data)[:4]))))
    x0 = detector.model.standardize(tokens)
    plain_cfg = apply_test_overrides(detector.cfg, {"knn_weight": 0.0})
    plain_scorer, scorer = detector.scorer(plain_cfg.inference), detector.scorer()
    assert plain_scorer.bank is None and scorer.bank is bank
    errors = plain_scorer.token_scores(tokens, plain_scorer.noise_source())
    nearest = torch.cdist(x0, bank.tokens.expand(x0.shape[0], -1, -1)).amin(-1).view_as(errors)  # brute force
    mu_e, sd_e, mu_d, sd_d = bank.stats.tolist()
    want = (errors - mu_e) / sd_e + (nearest - mu_d) / sd_d
    torch.testing.assert_close(scorer.token_scores(tokens, scorer.noise_source()), want, rtol=1e-4, atol=1e-4)


@pytest.mark.integration
def test_a_run_without_a_bank_says_how_to_get_one(runs, tiny_data):
    _, plain = runs
    detector = Detector.load(plain)
    detector.cfg = apply_test_overrides(detector.cfg, {"knn_weight": 1.0})
    with pytest.raises(CheckpointError, match="knn_bank.safetensors.*knn_weight"):
        detector.predict(_test_images(tiny_data)[:1])


@pytest.mark.integration
def test_the_bank_travels_into_the_onnx_graph(runs, tiny_data, tmp_path):
    with_bank, _ = runs
    summary = export_onnx(Detector.load(with_bank), tmp_path / "bank.onnx")
    assert summary["max_rel_score_diff"] < 1e-4
    images = _test_images(tiny_data)
    s_torch = np.array([p.score for p in Detector.load(with_bank).predict(images)])
    s_onnx = np.array([p.score for p in OnnxDetector.load(tmp_path / "bank.onnx").predict(images)])
    np.testing.assert_allclose(s_onnx, s_torch, rtol=1e-4, atol=1e-5)


def test_bank_round_trip(tmp_path):
    bank = TokenBank(torch.randn(5, 3), torch.tensor([0.1, 2.0, 0.3, 4.0]))
    bank.save(tmp_path)
    back = TokenBank.load(tmp_path)
    assert torch.equal(back.tokens, bank.tokens) and torch.equal(back.stats, bank.stats)
    x0 = torch.randn(2, 4, 3)
    assert torch.allclose(
        back.distances(x0), torch.cdist(x0, bank.tokens.expand(x0.shape[0], -1, -1)).amin(-1), atol=1e-5
    )
