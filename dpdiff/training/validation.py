"""Validation while training (``train.validate_every``): metrics on a fixed sample of test images, to *watch* a run.

Every ``train.validate_every`` steps and at the last step the Trainer scores a fixed sample of at most
``train.validation_images`` images of the data set's **test** split (as anomalib's default ``val = test``) with the
weights inference would use (the EMA weights when ``train.ema_decay`` > 0) and the run's inference settings, through
the library's :class:`~dpdiff.scoring.scorer.Scorer`; ``val/I-AUROC`` (and ``val/P-AUROC`` where the sample has
masks) go to ``RUN/validation.csv`` and to the training logger (``train.logger``).

These are test images: the curves show whether a training is going somewhere, nothing more. Picking a checkpoint,
a step count or any setting by them and then reporting test metrics would report a number tuned on the test set.

The sample (:func:`validation_samples`): drawn with ``train.seed``, per category, normal and defective images in
turn (so a category of the sample has both classes where the data allows). The backbone runs over it once, when
the run starts (:meth:`ValidationSet.build`); each validation only runs the diffusion model. The metrics
(:func:`validation_metrics`) are the mean over categories of the per-category AUROC, as ``dpdiff test`` reports
them. Not covered (a warning says so and training goes on): a data set without a labelled test split (no test
folder, or one class only), and ``data.tiling`` (tiles are scored and stitched by the inference runtime).
With ``inference.knn_weight`` or ``inference.image_gaussian_weight`` > 0 the sample is scored without the token bank
and the image Gaussian, which are built after training.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from dpdiff.config import Config
from dpdiff.data.dataset import ImageDataset
from dpdiff.data.geometry import ImageGeometry
from dpdiff.data.readers import load_samples
from dpdiff.data.types import Sample
from dpdiff.metrics import image_metrics, pixel_metrics
from dpdiff.model.dpdiff_ad import DPDiffAD
from dpdiff.scoring.scorer import Scorer
from dpdiff.utils.errors import DataError
from dpdiff.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "VALIDATION_COLUMNS",
    "ValidationSet",
    "read_validation_rows",
    "validation_metrics",
    "validation_samples",
    "write_validation_rows",
]

#: Columns of ``RUN/validation.csv``: the step, the two metrics (empty when not available), the images scored
#: and the seconds the validation took.
VALIDATION_COLUMNS = ("step", "I-AUROC", "P-AUROC", "images", "seconds")
#: The metrics logged, as ``val/<name>`` in the training logger.
VALIDATION_METRICS = ("I-AUROC", "P-AUROC")

#: Rows (image x noise draw) per DiT call on a CPU: the value of dpdiff.inference.detector.CPU_MAX_ROWS (training
#: may not import inference); the chunking never changes a score, only the speed.
_CPU_MAX_ROWS = 16


def validation_samples(samples: Sequence[Sample], n: int, seed: int) -> list[Sample]:
    """At most ``n`` of ``samples`` drawn with ``seed``: each category's normal and defective images shuffled,
    then taken round by round, in each round one normal and one defective image of every category (in sorted
    order), until ``n`` are taken or none is left. Returned in path order (the order never changes a score with
    ``inference.common_noise``, and without it the noise draws follow a fixed order)."""
    rng = np.random.default_rng(int(seed))
    pools: list[list[Sample]] = []
    for category in sorted({str(s.category) for s in samples}):
        for label in (0, 1):
            pool = [s for s in samples if str(s.category) == category and int(s.label) == label]
            pools.append([pool[i] for i in rng.permutation(len(pool))])
    picked: list[Sample] = []
    while len(picked) < n and any(pools):
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(pool.pop(0))
    return sorted(picked, key=lambda s: (str(s.category), str(s.image_path)))


def validation_metrics(
    categories: Sequence[str], labels: np.ndarray, scores: np.ndarray, maps: np.ndarray, masks: np.ndarray, known
) -> dict[str, float | None]:
    """``{"I-AUROC", "P-AUROC"}``: the mean over categories of the per-category AUROC, over the categories where
    it is defined (both classes among the images; for P-AUROC, defect pixels among the images whose mask is known,
    ``known``); None where no category has it."""
    names = np.asarray([str(c) for c in categories])
    labels, known = np.asarray(labels), np.asarray(known, dtype=bool)
    image, pixel = [], []
    for category in sorted(set(names)):
        idx = np.flatnonzero(names == category)
        if 0 < int(labels[idx].sum()) < idx.size:
            image.append(image_metrics(scores[idx], labels[idx])["I-AUROC"])
        idx = idx[known[idx]]
        if masks[idx].any() and not masks[idx].all():
            pixel.append(pixel_metrics(maps[idx], masks[idx])["P-AUROC"])
    return {
        "I-AUROC": float(np.mean(image)) if image else None,
        "P-AUROC": float(np.mean(pixel)) if pixel else None,
    }


@dataclass
class ValidationSet:
    """The validation sample and what scoring it needs, computed once: the backbone maps of its images (float32,
    as the inference runtime scores them), their labels and their masks on the evaluation frame."""

    cfg: Config
    samples: list[Sample]
    features: torch.Tensor  # (N, C, h, w) float32, on the CPU
    labels: np.ndarray  # (N,) 0/1
    masks: np.ndarray  # (N, Hm, Wm) bool, on the evaluation frame
    image_hw: list[tuple[int, int]]  # each image's own (H, W), to bring a letterboxed map to the evaluation frame

    @classmethod
    def build(cls, cfg: Config, backbone, device: torch.device) -> ValidationSet | None:
        """The validation set of ``cfg``'s test split (``data.root``, ``data.categories``); None, with one warning,
        where validation cannot run (see the module docstring)."""
        skip = "training goes on without validation (train.validate_every)"
        geometry = ImageGeometry.from_config(cfg)
        if geometry.tiling is not None:
            logger.warning("validation while training does not score tiles (data.tiling): %s", skip)
            return None
        try:
            test = load_samples(
                cfg.data.format, Path(cfg.data.root or ""), cfg.data.categories, "test", **cfg.data.options
            )
        except (FileNotFoundError, DataError) as e:
            logger.warning("no labelled test split to validate on (%s): %s", e, skip)
            return None
        if len({int(s.label) for s in test}) < 2:
            what = "no test images" if not test else "test images of one class only"
            logger.warning("%s in %s, AUROC is undefined: %s", what, cfg.data.root, skip)
            return None
        samples = validation_samples(test, cfg.train.validation_images, cfg.train.seed)
        dataset = ImageDataset(
            samples,
            geometry,
            backbone.mean,
            backbone.std,
            mask_threshold=cfg.evaluation.mask_threshold,
            mask_resize=cfg.evaluation.mask_resize,
        )
        loader = DataLoader(dataset, batch_size=cfg.train.feature_batch_size, shuffle=False, num_workers=0)
        backbone = backbone.to(device).eval()
        feats: list[torch.Tensor] = []
        masks: list[np.ndarray] = []
        sizes: list[tuple[int, int]] = []
        with torch.no_grad():  # not inference_mode: these tensors meet the training model's autograd world
            for batch in loader:
                feats.append(backbone(batch["image"].to(device)).float().cpu())
                masks.append(batch["mask"][:, 0].numpy() > 0.5)
                sizes.extend((int(h), int(w)) for h, w in batch["image_hw"].tolist())
        labels = np.array([int(s.label) for s in samples], dtype=np.int64)
        logger.info(
            "validation every %d steps on %d test images (%d defective) of %d categories",
            cfg.train.validate_every,
            len(samples),
            int(labels.sum()),
            len({s.category for s in samples}),
        )
        return cls(cfg, samples, torch.cat(feats), labels, np.concatenate(masks), sizes)

    def score(self, model: DPDiffAD) -> tuple[np.ndarray, np.ndarray]:
        """(maps (N, Hm, Wm) on the evaluation frame, image scores (N,)) of the sample with ``model`` and the
        config's inference settings, in batches of ``inference.batch_size``, the noise generator seeded with
        ``inference.seed`` (the same draws at every validation: the curves move with the weights only)."""
        cfg = self.cfg
        inference = cfg.inference
        if inference.knn_weight or inference.image_gaussian_weight:  # both are built after training: without them
            inference = replace(inference, knn_weight=0.0, image_gaussian_weight=0.0)
        device = model.alphas_cumprod.device
        scorer = Scorer.from_config(model, cfg, inference, max_rows=_CPU_MAX_ROWS if device.type == "cpu" else None)
        noise = scorer.noise_source(torch.Generator(device).manual_seed(int(inference.seed)))
        was_training = model.training
        model.eval()
        maps, scores = [], []
        try:
            with torch.no_grad():
                for i in range(0, len(self.samples), inference.batch_size):
                    m, s = scorer.score_features(self.features[i : i + inference.batch_size], noise)
                    maps.append(m.float().cpu().numpy())
                    scores.append(s.float().cpu().numpy())
        finally:
            model.train(was_training)
        out = np.concatenate(maps)
        geometry = ImageGeometry.from_config(cfg)
        if geometry.resize != "stretch":  # a letterboxed map: its content on the evaluation frame, as dpdiff test
            out = np.stack([geometry.eval_map(m, hw) for m, hw in zip(out, self.image_hw, strict=True)])
        return out, np.concatenate(scores)

    def run(self, model: DPDiffAD, step: int) -> dict:
        """One validation after ``step`` steps: a row of ``validation.csv`` (:data:`VALIDATION_COLUMNS`)."""
        t0 = time.perf_counter()
        maps, scores = self.score(model)
        known = np.array([s.mask_known for s in self.samples], dtype=bool)
        metrics = validation_metrics([s.category for s in self.samples], self.labels, scores, maps, self.masks, known)
        return {
            "step": int(step),
            **metrics,
            "images": len(self.samples),
            "seconds": round(time.perf_counter() - t0, 3),
        }


def read_validation_rows(path: Path) -> list[dict]:
    """The rows of a ``validation.csv`` (numbers as float, an empty metric as None); [] when there is none."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


def write_validation_rows(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as ``validation.csv`` atomically (the whole file: a crash never leaves half a row)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(VALIDATION_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: ("" if row.get(k) is None else int(row[k]) if k in ("step", "images") else row[k])
                for k in VALIDATION_COLUMNS
            }
        )
    atomic_write_text(path, buf.getvalue())
