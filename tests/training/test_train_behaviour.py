"""Behaviour, fast: a tiny DPDiff-AD trained by ``train`` on normal tokens scores planted anomalies higher.

Normal "backbone maps" put every token on a fixed 3-dimensional subspace of the 16 channels (plus a little
noise); an anomalous map has one token replaced by a vector orthogonal to that subspace. After 60 steps the
checkpoint's reconstruction error (Eq. 22) must rank anomalous maps above normal ones and peak at the planted
token. The backbone is skipped (``train(features=...)``), so this runs in seconds on one CPU core.
"""

from __future__ import annotations

import torch
from sklearn.metrics import roc_auc_score

from dpdiff.features import tokens_from_maps
from dpdiff.model.checkpoint import load_model
from dpdiff.scoring.noise import IndependentNoise
from dpdiff.scoring.scorer import Scorer, ScoringSettings
from dpdiff.workflows.train import train

C, H, W = 16, 4, 4  # channels, token grid
RANK = 3  # dimension of the normal tokens' subspace
ANOMALY_NORM = 3.0  # a normal token's norm is about sqrt(RANK) = 1.7


def _subspaces(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    q, _ = torch.linalg.qr(torch.randn(C, C, generator=g))
    return q[:, :RANK], q[:, RANK:]  # normal directions, and the directions orthogonal to them


def _normal_maps(n: int, basis: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    z = torch.randn(n, RANK, H, W, generator=g)
    return torch.einsum("cr,nrhw->nchw", basis, z) + 0.05 * torch.randn(n, C, H, W, generator=g)


def _plant_anomalies(maps: torch.Tensor, odd: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, list[int]]:
    """One off-subspace token per map; returns the maps and each planted token's row-major index."""
    maps, where = maps.clone(), []
    for i in range(maps.shape[0]):
        k = int(torch.randint(0, H * W, (1,), generator=g))
        direction = odd @ torch.randn(odd.shape[1], generator=g)
        maps[i, :, k // W, k % W] = direction / direction.norm() * ANOMALY_NORM
        where.append(k)
    return maps, where


def test_trained_model_scores_planted_anomalies_higher(tmp_path, tiny_config):
    g = torch.Generator().manual_seed(0)
    basis, odd = _subspaces(g)
    cfg = tiny_config()
    cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.train.warmup_steps = 60, 8, 1e-3, 0
    cfg.train.log_every = cfg.train.checkpoint_every = 60
    cfg.train.device = "cpu"
    run = train(cfg, tmp_path / "run", features=_normal_maps(32, basis, g))

    model, saved, _ = load_model(run)
    good = _normal_maps(8, basis, g)
    bad, planted = _plant_anomalies(_normal_maps(8, basis, g), odd, g)
    inf = saved.inference
    settings = ScoringSettings(inf.noise_step, inf.ddim_steps, inf.ensemble, antithetic=inf.antithetic)
    token_maps = Scorer(model.eval(), settings).token_scores(
        tokens_from_maps(torch.cat([good, bad])), IndependentNoise(torch.Generator().manual_seed(0))
    )
    image_scores = token_maps.flatten(1).max(dim=1).values
    labels = [0] * len(good) + [1] * len(bad)
    auroc = roc_auc_score(labels, image_scores.numpy())
    assert auroc >= 0.9, f"image AUROC {auroc:.3f}: scores {image_scores.tolist()}"
    # and by a margin: an untrained model (zero-initialised noise head) scores every map ~1e-13, at random
    normal_mean, anomalous_mean = float(image_scores[: len(good)].mean()), float(image_scores[len(good) :].mean())
    assert anomalous_mean >= max(1.5 * normal_mean, 1e-3), (normal_mean, anomalous_mean)
    found = [int(m.flatten().argmax()) for m in token_maps[len(good) :]]
    hits = sum(f == p for f, p in zip(found, planted, strict=True))
    assert hits >= 6, f"the top-scoring token is the planted one in {hits}/8 maps (planted {planted}, found {found})"
