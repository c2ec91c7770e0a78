"""Beyond the paper (issue #21, ``inference.image_gaussian_weight``): an image-level Gaussian of normal images'
mean backbone token, whose Mahalanobis distance is added to DPDiff-AD's image score.

``score = (s - mu_s) / sd_s + image_gaussian_weight * (g - mu_g) / sd_g`` per image, where ``s`` is the image
score of the maps (Eq. 24, with the token bank's distance when ``knn_weight`` > 0) and ``g`` the Mahalanobis
distance of the image's mean token (its backbone tokens averaged over the grid) to a Gaussian fitted on the
even-numbered training images with Ledoit-Wolf shrinkage (Rippel et al. 2020, "Modeling the distribution of
normal data in pre-trained deep features"). Both z-scores use the mean and std over (up to 128) odd-numbered
training images, which the Gaussian was not fitted on.

Why: a token reconstruction judges each token against what the denoiser can rebuild, and a dark, low-texture
token is easy to rebuild, so an image that is darker or flatter than every normal image, but token by token
unremarkable, gets a low score (the held-back labels-only set of issue #21: I-AUROC 0.41, darkness alone 0.79).
The mean token sees that image-wide shift. The pixel maps are unchanged; only the image score (and so the
image threshold) changes. It is not the paper's method; 0 (the library default) turns it off and needs no file.

Built at the end of ``dpdiff train`` when ``inference.image_gaussian_weight > 0`` (after the token bank, before
the calibration) and saved as ``RUN/image_gaussian.safetensors`` (:data:`~dpdiff.utils.run_files.IMAGE_GAUSSIAN_FILE`);
the Detector and the ONNX graph use it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dpdiff.features import tokens_from_maps
from dpdiff.scoring.run_tensors import load_run_tensors, save_run_tensors
from dpdiff.utils.run_files import IMAGE_GAUSSIAN_FILE

logger = logging.getLogger(__name__)

__all__ = ["ImageGaussian", "build_image_gaussian", "mean_tokens", "STATS_IMAGES", "MIN_IMAGES"]

#: Odd-numbered training images whose scores set the two z-scores.
STATS_IMAGES = 128
#: Fewest training images: two to fit the Gaussian on, two to set the scale of its distance and of the image score.
MIN_IMAGES = 4


class ImageGaussian(nn.Module):
    """Mean (C,), whitening matrix (C, C) and the four z-score statistics (mu_s, sd_s, mu_g, sd_g), as buffers (so
    the ONNX graph holds them as constants). The whitening matrix ``W`` is the Cholesky factor of the precision
    matrix (``P = W W^T``): the distance is ``||(m - mean) W||``, a sum of squares, which float32 keeps to
    rounding level where the quadratic form ``d P d^T`` would cancel (:meth:`from_precision`)."""

    mean: torch.Tensor
    whitening: torch.Tensor
    stats: torch.Tensor

    def __init__(self, mean: torch.Tensor, whitening: torch.Tensor, stats: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float().reshape(-1).contiguous())
        self.register_buffer("whitening", whitening.float().contiguous())
        self.register_buffer("stats", stats.float().reshape(4))

    @classmethod
    def from_precision(cls, mean, precision, stats: torch.Tensor) -> ImageGaussian:
        """From a mean and a (symmetric positive definite) precision matrix, factorised in float64."""
        whitening = torch.linalg.cholesky(torch.as_tensor(precision, dtype=torch.float64))
        return cls(torch.as_tensor(mean), whitening, stats)

    def distances(self, tokens: torch.Tensor) -> torch.Tensor:
        """Backbone tokens (B, N, C) -> (B,) Mahalanobis distance of each image's mean token."""
        return ((tokens.float().mean(1) - self.mean) @ self.whitening).pow(2).sum(-1).sqrt()

    def combine(self, scores: torch.Tensor, tokens: torch.Tensor, weight: float) -> torch.Tensor:
        """Image scores (B,) of the maps and the images' backbone tokens (B, N, C) -> the summed z-scores (B,)."""
        mu_s, sd_s, mu_g, sd_g = self.stats.unbind(0)
        return (scores.float() - mu_s) / sd_s + float(weight) * (self.distances(tokens) - mu_g) / sd_g

    def save(self, run_dir: Path) -> Path:
        tensors = {"mean": self.mean, "whitening": self.whitening, "stats": self.stats}
        return save_run_tensors(run_dir, IMAGE_GAUSSIAN_FILE, tensors)

    @classmethod
    def load(cls, run_dir: Path, device: torch.device | str = "cpu") -> ImageGaussian:
        t = load_run_tensors(run_dir, IMAGE_GAUSSIAN_FILE, "image Gaussian", "image_gaussian_weight", "0.5")
        return cls(t["mean"], t["whitening"], t["stats"]).to(device)


def mean_tokens(features, batch: int = 64) -> torch.Tensor:
    """(N, C, h, w) backbone maps -> (N, C) mean tokens."""
    return torch.cat(
        [
            tokens_from_maps(torch.as_tensor(features[i : i + batch]).float()).mean(1)
            for i in range(0, len(features), batch)
        ]
    )


@torch.inference_mode()
def build_image_gaussian(detector, features) -> ImageGaussian:
    """The Gaussian of a trained model from its training ``features`` (N, C, h, w) (module docstring);
    ``detector``: the run's :class:`~dpdiff.inference.detector.Detector` (its scorer, with the token bank when
    ``knn_weight`` > 0, gives the image-score statistics)."""
    from sklearn.covariance import LedoitWolf

    n = int(features.shape[0])
    if n < MIN_IMAGES:
        raise ValueError(
            f"the image Gaussian needs at least {MIN_IMAGES} training images (even ones for the fit, odd ones for its "
            f"scale), got {n}"
        )
    even, odd = np.arange(0, n, 2), np.arange(1, n, 2)[:STATS_IMAGES]
    fit = LedoitWolf().fit(mean_tokens(features[even]).double().numpy())
    partial = ImageGaussian.from_precision(fit.location_, fit.precision_, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    held = torch.as_tensor(features[odd]).float()
    plain = dataclasses.replace(detector.cfg.inference, image_gaussian_weight=0.0)  # the maps' image score alone
    scorer = detector.scorer(plain)
    noise = scorer.noise_source()
    scores, dist = [], []
    for i in range(0, held.shape[0], 32):
        chunk = held[i : i + 32].to(scorer.device)
        scores.append(scorer.score_features(chunk, noise)[1].float().cpu())
        dist.append(partial.distances(tokens_from_maps(chunk.cpu())))
    s, g = torch.cat(scores), torch.cat(dist)
    stats = torch.stack([s.mean(), s.std().clamp_min(1e-12), g.mean(), g.std().clamp_min(1e-12)])
    logger.info(
        "image Gaussian: %d-d mean token of %d images; image score %.4g +- %.4g, distance %.4g +- %.4g on %d "
        "held-out images",
        partial.mean.numel(),
        even.size,
        *stats.tolist(),
        odd.size,
    )
    return ImageGaussian(partial.mean, partial.whitening, stats)
