"""``dpdiff train``: one unified model from a data set's normal images, then what the run folder needs to be used.

:class:`~dpdiff.training.trainer.Trainer` trains (features, model, optimiser, checkpoints); this module runs it
(data-parallel under ``torchrun``) and then, on rank 0, builds the token bank of ``inference.knn_weight``, the
image Gaussian of ``inference.image_gaussian_weight`` and sets the thresholds on the held-out normal images
(``train.calibration_fraction``), all with the inference :class:`~dpdiff.inference.detector.Detector`.

Adding categories to a trained run is the same path with ``train.init_from`` set
(:func:`dpdiff.training.init_from.add_category_config`): the Trainer starts from RUN's weights and replays its
images, and the token bank and the thresholds are built on the union (RUN's held-out images stay held out).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dpdiff.config import Config
from dpdiff.inference.calibration import fpr_thresholds, min_normal_images
from dpdiff.inference.detector import Detector
from dpdiff.scoring.image_gaussian import MIN_IMAGES as GAUSSIAN_MIN_IMAGES
from dpdiff.scoring.image_gaussian import build_image_gaussian
from dpdiff.scoring.token_bank import build_token_bank
from dpdiff.training import distributed as D
from dpdiff.training.trainer import Trainer, split_samples
from dpdiff.utils.errors import ConfigError

if TYPE_CHECKING:
    from dpdiff.features.cache import FeatureStore

__all__ = ["train", "save_token_bank", "save_image_gaussian", "calibrate_held_out"]


def train(
    cfg: Config,
    run_dir: Path,
    overwrite: bool = False,
    resume: bool = False,
    features: torch.Tensor | FeatureStore | None = None,
    samples: list | None = None,
) -> Path:
    """Train one unified model on all configured categories; returns the run folder.

    ``features`` (N, C, h, w) may be passed in to skip the backbone (benchmarks reuse them).
    Under ``torchrun`` this trains data-parallel (see the module docstring).
    """
    if features is not None and cfg.train.calibration_fraction > 0:
        raise ConfigError(
            "train.calibration_fraction needs train() to read the images itself (no precomputed "
            "features): the held-out images must not be in them"
        )
    with D.distributed_context(cfg.train.device) as info:
        trainer = Trainer(cfg, Path(run_dir), info)
        trainer.setup(overwrite, resume, features, samples)
        n_images = int(trainer.features.shape[0])
        if cfg.inference.image_gaussian_weight > 0 and n_images < GAUSSIAN_MIN_IMAGES:  # before the steps, not after
            raise ConfigError(
                f"inference.image_gaussian_weight: the image Gaussian needs at least {GAUSSIAN_MIN_IMAGES} training "
                f"images, this run has {n_images}; add images or set inference.image_gaussian_weight=0"
            )
        run = trainer.fit()
        if cfg.inference.knn_weight > 0 and info.is_main:  # before the calibration: thresholds on the summed score
            save_token_bank(run, trainer.features, cfg.train.seed)
        if cfg.inference.image_gaussian_weight > 0 and info.is_main:  # after the bank: its scores are the statistics
            save_image_gaussian(run, trainer.features)
        if cfg.train.calibration_fraction > 0 and info.is_main:
            calibrate_held_out(run, cfg)
        return run


def save_token_bank(run_dir: Path, features, seed: int) -> Path:
    """Build the run's token bank from its training features (``inference.knn_weight``; scoring/token_bank.py)
    and write ``RUN/knn_bank.safetensors``."""
    detector = Detector.load(run_dir, device="cpu")
    return build_token_bank(detector, features, seed=seed).save(run_dir)


def save_image_gaussian(run_dir: Path, features) -> Path:
    """Build the run's image Gaussian from its training features (``inference.image_gaussian_weight``;
    scoring/image_gaussian.py) and write ``RUN/image_gaussian.safetensors``."""
    detector = Detector.load(run_dir, device="cpu")
    return build_image_gaussian(detector, features).save(run_dir)


def calibrate_held_out(run_dir: Path, cfg: Config) -> None:
    """Thresholds at ``train.calibration_fpr`` on the held-out normal images (``calibration.json``): global,
    and per category for the categories with enough held-out images. Each image is scored once."""
    held = split_samples(cfg)[1]
    detector = Detector.load(run_dir, device=cfg.train.device)
    maps, scores = detector.score_images([s.image_path for s in held], desc="calibration")
    fpr, pixel_fpr = cfg.train.calibration_fpr, cfg.train.calibration_pixel_fpr
    thresholds = {None: fpr_thresholds(scores, maps, fpr, pixel_fpr)}
    categories = np.array([str(s.category) for s in held])
    for category in sorted(set(categories)):
        idx = np.flatnonzero(categories == category)
        if idx.size >= min_normal_images(fpr):
            thresholds[category] = fpr_thresholds(scores[idx], maps[idx], fpr, pixel_fpr)
    detector.set_thresholds(thresholds, save=True)
