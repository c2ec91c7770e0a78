"""The model behind the service: a run's :class:`~dpdiff.Detector` (or its ONNX runner), called once per batch.

:class:`ServedModel` gives the app what it needs and nothing more: ``predict_batch`` (the micro-batcher's one
call per batch), the categories it accepts, and a description for ``GET /health``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..run_files import CONFIG_FILE
from .limits import ApiError

__all__ = ["ServedModel", "Job"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One image to score, as the batcher queues it: the decoded image and the category it was sent with."""

    image: Image.Image
    category: str | None = None


@dataclass
class ServedModel:
    """A loaded detector and what ``/health`` says about it.

    ``detector``: anything with ``predict(images, category=None) -> list[Prediction]`` (the torch
    :class:`~dpdiff.Detector` or the ONNX runner); ``categories``: the categories a request may name (the run's
    training categories and the calibrated ones; empty: any name is refused)."""

    detector: Any
    run_dir: Path
    runtime: str
    info: dict = field(default_factory=dict)
    categories: tuple[str, ...] = ()

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, run_dir: str | Path, onnx: str | Path | None = None, device: str = "auto",
             weights: str | None = None) -> "ServedModel":
        """The run's detector (``onnx``: its exported ONNX file, run by the ONNX runner instead of torch)."""
        from ..engine.inference import load_detector
        run_dir = Path(run_dir)
        detector = load_detector(run_dir, device, weights=weights)
        if not hasattr(detector, "predict"):  # TEMPORARY until Detector.predict (#14) lands
            detector = _ScoreImagesShim(detector)
        runtime = "torch"
        if onnx is not None:
            raise NotImplementedError("--onnx: waiting for the ONNX runner of the deploy API (#14)")
        meta = _run_meta(run_dir)
        cfg = detector.cfg
        categories = set(meta.get("categories") or [])
        info = {
            "model": run_dir.name,
            "run_dir": str(run_dir.resolve()),
            "preset": meta.get("preset"),
            "backbone": cfg.backbone.name,
            "image_size": int(cfg.backbone.image_size),
            "map_size": int(detector.map_size),
            "device": str(detector.device),
            "runtime": runtime,
            "training_step": meta.get("step"),
            "inference": {"noise_step": cfg.inference.noise_step, "ddim_steps": cfg.inference.ddim_steps,
                          "ensemble": cfg.inference.ensemble, "common_noise": cfg.inference.common_noise},
        }
        return cls(detector, run_dir, runtime, info, tuple(sorted(categories)))

    # ------------------------------------------------------------------------------------------ use
    def check_category(self, category: str | None) -> str | None:
        """``category`` when the model knows it (None stays None: the global thresholds); 422 otherwise."""
        if category is None or category == "":
            return None
        if category not in self.categories:
            known = ", ".join(self.categories) or "none (send no category)"
            raise ApiError(422, "unknown_category", f"unknown category {category!r}; this model knows: {known}")
        return category

    def predict_batch(self, jobs: Sequence[Job]) -> list:
        """One :class:`~dpdiff.Prediction` per job, in order: one ``detector.predict`` call per category present
        in the batch (a production line sends one category, so one call)."""
        out: list = [None] * len(jobs)
        groups: dict[str | None, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.category, []).append(i)
        for category, index in groups.items():
            predictions = self.detector.predict([jobs[i].image for i in index], category=category)
            for i, p in zip(index, predictions):
                out[i] = p
        return out

    def thresholds(self) -> dict:
        """{"global": {...} | None, "per_category": {...}} as calibrated (empty when not calibrated)."""
        calibration = getattr(self.detector, "calibration", None)
        if calibration is None:
            return {"global": None, "per_category": {}}
        d = calibration.to_dict()
        return {"global": d.get("global"), "per_category": d.get("per_category", {})}


def _run_meta(run_dir: Path) -> dict:
    """``config.json``'s metadata beside the config (training categories, step, ...); {} when unreadable."""
    try:
        payload = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in payload.items() if k != "config"}


# ---------------------------------------------------------------------------------------------- TEMPORARY
@dataclass
class _ShimPrediction:
    image: Any
    score: float
    anomaly_map: Any
    category: str | None
    normalized_score: float | None = None
    is_anomalous: bool | None = None
    mask: Any = None
    image_threshold: float | None = None
    pixel_threshold: float | None = None


class _ScoreImagesShim:
    """TEMPORARY: ``predict`` on ``Detector.score_images`` until the deploy API (#14) lands (uncalibrated)."""

    def __init__(self, detector):
        self._d = detector
        self.cfg, self.device, self.map_size, self.calibration = detector.cfg, detector.device, detector.map_size, None

    def predict(self, images, category=None):
        import numpy as np
        import torch
        maps, scores = self._d.score_images(list(images))
        out = []
        for im, m, s in zip(images, maps, scores):
            full = torch.nn.functional.interpolate(m[None, None], size=(im.height, im.width), mode="bilinear",
                                                   align_corners=False)[0, 0].numpy().astype(np.float32)
            out.append(_ShimPrediction(im, float(s), full, category))
        return out
