"""The model behind the service: a run's :class:`~dpdiff.Detector` (or its ONNX export), called once per batch.

:class:`ServedModel` gives the app what it needs and nothing more: :meth:`~ServedModel.predict_batch` (the
micro-batcher's one call per batch), the categories a request may name, the thresholds in use, and a
description for ``GET /health``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from PIL import Image

from dpdiff.serve.limits import ApiError
from dpdiff.utils.errors import DataError, UsageError
from dpdiff.utils.run_files import CONFIG_FILE
from dpdiff.utils.sizes import as_hw, hw_json

if TYPE_CHECKING:  # pragma: no cover - types only: a .onnx is served without torch
    from dpdiff.inference.detector import Detector as TorchDetector
    from dpdiff.inference.onnx_runtime import OnnxDetector
    from dpdiff.inference.predictor import Detector

__all__ = ["ServedModel", "Job"]

log = logging.getLogger(__name__)

#: Config sections that decide what a model computes (a preset is recognised by them; data/train/evaluation
#: differ between runs of the same preset).
_MODEL_SECTIONS = ("backbone", "model", "inference")


@dataclass(frozen=True)
class Job:
    """One image to score, as the batcher queues it: the decoded image and the category it was sent with."""

    image: Image.Image
    category: str | None = None


@dataclass
class ServedModel:
    """A loaded detector and what ``/health`` says about it.

    ``detector``: either runtime's :class:`~dpdiff.Detector` (the PyTorch one or :class:`~dpdiff.OnnxDetector`;
    ``predict(images, category, batch_size)``, ``calibration``); ``categories``: the names a request may give
    (the run's training categories and the calibrated ones)."""

    detector: Detector
    runtime: str
    info: dict = field(default_factory=dict)
    categories: tuple[str, ...] = ()

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls, run: str | Path, onnx: str | Path | None = None, device: str = "auto", weights: str | None = None
    ) -> ServedModel:
        """``run``: a run folder (``dpdiff train``) or a ``.onnx`` export; ``onnx``: serve this export of the
        run folder with onnxruntime instead of PyTorch (the folder then only names the training categories)."""
        from dpdiff.inference import predictor  # Detector.load picks the runtime: a .onnx loads without torch

        given = Path(run)
        onnx_path = Path(onnx) if onnx is not None else None
        run_dir: Path | None = given
        if given.suffix.lower() in predictor.EXPORT_SUFFIXES:  # an export: onnxruntime, or OpenVINO's IR
            if onnx_path is not None:
                raise UsageError(f"two ONNX models ({given} and --onnx {onnx_path}); give a run folder with --onnx")
            run_dir, onnx_path = None, given
        elif not given.is_dir():
            raise FileNotFoundError(f"run folder not found: {given} (give a `dpdiff train` output folder or a .onnx)")
        meta = _run_meta(run_dir) if run_dir is not None else {}
        detector: Detector
        if onnx_path is not None:
            detector = predictor.Detector.load(onnx_path, device=device)
            if run_dir is not None and "config" in meta and meta["config"] != detector.cfg.to_dict():
                raise UsageError(
                    f"{onnx_path} was exported from another run than {run_dir} (their configurations differ); "
                    f"export {run_dir} with `dpdiff export` or serve the .onnx alone"
                )
            runtime, where = ("openvino" if onnx_path.suffix.lower() == ".xml" else "onnx"), onnx_path.resolve()
            device_name = cast("OnnxDetector", detector).session.get_providers()[0]
        else:
            detector = predictor.Detector.load(given, weights=weights, device=device)
            runtime, where, device_name = "torch", given.resolve(), str(cast("TorchDetector", detector).device)
        cfg = detector.cfg
        calibration = detector.calibration
        categories = set(meta.get("categories") or cfg.data.categories or [])
        categories |= set(calibration.per_category) if calibration is not None else set()
        info = {
            "model": where.name,
            "path": str(where),
            "preset": meta.get("preset") or _matching_preset(cfg),
            "backbone": cfg.backbone.name,
            "image_size": hw_json(detector.geometry.size),
            "map_size": hw_json(detector.map_size),
            "resize": detector.geometry.resize,
            "roi": None if detector.geometry.roi is None else list(detector.geometry.roi),
            "tiling": None if detector.geometry.tiling is None else detector.geometry.tiling.to_config(),
            "runtime": runtime,
            "device": device_name,
            "training_step": meta.get("step"),
            "inference": {
                "noise_step": cfg.inference.noise_step,
                "ddim_steps": cfg.inference.ddim_steps,
                "ensemble": cfg.inference.ensemble,
                "common_noise": cfg.inference.common_noise,
            },
        }
        if not cfg.inference.common_noise:
            log.warning("inference.common_noise is off: a score depends on the other images of its micro-batch")
        return cls(detector, runtime, info, tuple(sorted(categories)))

    # ------------------------------------------------------------------------------------------ use
    def check_category(self, category: str | None) -> str | None:
        """``category`` when the model knows it (None: the global thresholds); 422 otherwise."""
        if not category:
            return None
        if category not in self.categories:
            known = ", ".join(self.categories) or "none (send no category)"
            raise ApiError(422, "unknown_category", f"unknown category {category!r}; this model knows: {known}")
        return category

    def check_image(self, image, name: str) -> None:
        """422 ``roi_outside_image`` when ``image`` is smaller than the model's pixel region of interest
        (``data.roi``), before it joins a batch (where it would fail the other images too)."""
        geometry = getattr(self.detector, "geometry", None)  # a stand-in predictor may have none
        if geometry is None:
            return
        try:
            geometry.roi_box(image.size, name)
        except DataError as e:
            raise ApiError(422, "roi_outside_image", str(e)) from None

    def warm_up_size(self) -> tuple[int, int]:
        """(width, height) of the warm-up image: the model's input, grown to hold a pixel region of interest."""
        h, w = as_hw(self.info["image_size"])
        geometry = getattr(self.detector, "geometry", None)
        roi = None if geometry is None else geometry.roi
        if roi is not None and all(isinstance(v, int) for v in roi):
            w, h = max(w, int(roi[2])), max(h, int(roi[3]))
        return w, h

    def predict_batch(self, jobs: Sequence[Job]) -> list:
        """One :class:`~dpdiff.Prediction` per job, in order: ``detector.predict`` once for the whole batch (as
        one model batch), or once per category when the jobs name several (each category has its thresholds;
        a line sends one category, so one call)."""
        out: list = [None] * len(jobs)
        groups: dict[str | None, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.category, []).append(i)
        for category, index in groups.items():
            predictions = self.detector.predict(
                [jobs[i].image for i in index], category=category, batch_size=len(index)
            )
            for i, p in zip(index, predictions, strict=True):
                out[i] = p
        return out

    def thresholds(self) -> dict:
        """{"global": {...} or None, "per_category": {...}} as calibrated (None and {} when not calibrated)."""
        calibration = self.detector.calibration
        if calibration is None:
            return {"global": None, "per_category": {}}
        d = calibration.to_dict()
        return {"global": d.get("global"), "per_category": d.get("per_category") or {}}


def _run_meta(run_dir: Path) -> dict:
    """``config.json`` of a run folder: the config and the metadata beside it (training categories, step)."""
    path = run_dir / CONFIG_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _matching_preset(cfg) -> str:
    """The packaged preset(s) whose backbone, model and inference settings the run has ("a|b" when several
    share them), else "custom"."""
    from dpdiff.config import load_config, preset_names

    def settings(c) -> dict:
        d = c.to_dict()
        d["backbone"] = {k: v for k, v in d["backbone"].items() if k != "weights"}  # where the file is: not a setting
        return {s: d.get(s) for s in _MODEL_SECTIONS}

    mine, names = settings(cfg), []
    for name in preset_names():
        if settings(load_config(name)) == mine:
            names.append(name)
    return "|".join(names) or "custom"
