"""Beyond the paper (issue #21, ``inference.knn_weight``): a small memory bank of normal training tokens whose
nearest-neighbour distance is added to DPDiff-AD's reconstruction error, token by token.

``score = (error - mu_e) / sd_e + knn_weight * (distance - mu_d) / sd_d`` per token, before the upsampling,
smoothing and image score (Eq. 23-24), which are linear up to the image score's max, so the sum is the sum of
the two maps. The bank is a greedy coreset (PatchCore's, :func:`dpdiff.baselines.knn.greedy_coreset`) of the
tokens of the even-numbered training images in DPDiff-AD's standardised token space; both z-scores use the mean
and std of all token values of (up to 128) odd-numbered training images, which the bank does not hold (on its
own tokens a bank's distance is 0). The reconstruction error keeps what it finds; the distance adds what a
reconstruction calls normal but no normal image contains (benchmarks/accuracy.py, "hybrid" rows). It is not the
paper's method; 0 (the default) turns it off and needs no bank.

Built at the end of ``dpdiff train`` when ``inference.knn_weight > 0`` and saved as ``RUN/knn_bank.safetensors``
(:data:`~dpdiff.utils.run_files.TOKEN_BANK_FILE`); the Detector and the ONNX graph use it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dpdiff.baselines.knn import greedy_coreset
from dpdiff.features import tokens_from_maps
from dpdiff.scoring.run_tensors import load_run_tensors, save_run_tensors
from dpdiff.utils.run_files import TOKEN_BANK_FILE

logger = logging.getLogger(__name__)

__all__ = ["TokenBank", "build_token_bank", "BANK_FRACTION", "BANK_MAX_TOKENS", "STATS_IMAGES"]

#: Share of the even-numbered training images' tokens the coreset keeps, and its cap (memory and speed).
BANK_FRACTION = 0.1
BANK_MAX_TOKENS = 16384
#: Odd-numbered training images whose token values set the two z-scores.
STATS_IMAGES = 128


class TokenBank(nn.Module):
    """The bank (M, C) in standardised token space and the four z-score statistics, as buffers (so the ONNX
    graph holds them as constants)."""

    tokens: torch.Tensor
    tokens_sq: torch.Tensor
    stats: torch.Tensor

    def __init__(self, tokens: torch.Tensor, stats: torch.Tensor):
        super().__init__()
        self.register_buffer("tokens", tokens.float().contiguous())
        self.register_buffer("tokens_sq", self.tokens.pow(2).sum(1))
        self.register_buffer("stats", stats.float().reshape(4))  # mu_e, sd_e, mu_d, sd_d

    def distances(self, x0: torch.Tensor) -> torch.Tensor:
        """(B, N, C) standardised tokens -> (B, N) distance to the nearest bank token.

        ``|x - b|^2 = |x|^2 + 2 (|b|^2 / 2 - x.b)``: the bracket for every bank token is one ``addmm`` (one (B*N, M)
        temporary, then its minimum), where the expanded sum made three; half the time on one CPU thread (MTD's
        9754-token bank: 11 instead of 22 ms per image), equal to float rounding."""
        flat = x0.float().reshape(-1, x0.shape[-1])
        nearest = torch.addmm(0.5 * self.tokens_sq, flat, self.tokens.T, alpha=-1.0).amin(dim=-1)
        d2 = flat.pow(2).sum(-1) + 2.0 * nearest
        return d2.clamp_min(0.0).sqrt().reshape(x0.shape[:-1])

    def combine(self, errors: torch.Tensor, x0: torch.Tensor, weight: float) -> torch.Tensor:
        """Token errors (B, h, w) and the standardised tokens (B, h*w, C) -> the summed z-scores (B, h, w)."""
        mu_e, sd_e, mu_d, sd_d = self.stats.unbind(0)
        dist = self.distances(x0).view_as(errors)
        return (errors.float() - mu_e) / sd_e + float(weight) * (dist - mu_d) / sd_d

    def save(self, run_dir: Path) -> Path:
        return save_run_tensors(run_dir, TOKEN_BANK_FILE, {"tokens": self.tokens, "stats": self.stats})

    @classmethod
    def load(cls, run_dir: Path, device: torch.device | str = "cpu") -> TokenBank:
        t = load_run_tensors(run_dir, TOKEN_BANK_FILE, "token bank", "knn_weight", "1")
        return cls(t["tokens"], t["stats"]).to(device)


@torch.inference_mode()
def build_token_bank(detector, features, seed: int = 0) -> TokenBank:
    """The bank of a trained model from its training ``features`` (N, C, h, w) (module docstring); ``detector``:
    the run's :class:`~dpdiff.inference.detector.Detector` (the reconstruction errors of its
    :meth:`~dpdiff.inference.detector.Detector.scorer` give the error statistics)."""
    n = int(features.shape[0])
    if n < 2:
        raise ValueError(
            "the token bank needs at least 2 training images (even ones for the bank, odd ones for its scale)"
        )
    model = detector.model
    even, odd = np.arange(0, n, 2), np.arange(1, n, 2)[:STATS_IMAGES]
    chunks = [
        model.standardize(tokens_from_maps(torch.as_tensor(features[even[i : i + 64]]).float())).reshape(
            -1, model.in_dim
        )
        for i in range(0, even.size, 64)
    ]
    pool = torch.cat(chunks)
    fraction = min(BANK_FRACTION, BANK_MAX_TOKENS / pool.shape[0])
    bank = pool[greedy_coreset(pool, fraction, seed=seed)] if fraction < 1.0 else pool
    held = torch.as_tensor(features[odd]).float()
    # the reconstruction error alone (the image Gaussian, built after the bank, adds to image scores only)
    plain = dataclasses.replace(detector.cfg.inference, knn_weight=0.0, image_gaussian_weight=0.0)
    scorer = detector.scorer(plain)
    noise = scorer.noise_source()  # with inference.common_noise=false: torch's global generator
    errors = torch.cat(
        [
            scorer.token_scores(tokens_from_maps(held[i : i + 32].float().to(scorer.device)), noise)
            for i in range(0, held.shape[0], 32)
        ]
    ).cpu()
    x0 = model.standardize(tokens_from_maps(held))
    partial = TokenBank(bank, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    dist = torch.cat([partial.distances(x0[i : i + 32]) for i in range(0, x0.shape[0], 32)])
    stats = torch.stack([errors.mean(), errors.std().clamp_min(1e-12), dist.mean(), dist.std().clamp_min(1e-12)])
    logger.info(
        "token bank: %d tokens (%.3g of %d), error %.4g +- %.4g, distance %.4g +- %.4g on %d held-out images",
        bank.shape[0],
        fraction,
        pool.shape[0],
        *stats.tolist(),
        odd.size,
    )
    return TokenBank(bank, stats)
