"""Score a folder of images with a trained run: scores CSV, and the overlays to draw (no labels needed)."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.mvtec import IMAGE_EXTENSIONS
from ..errors import DataError
from ..figure_data import OverlayItem
from ..io import atomic_write_text
from ..run_files import OVERLAYS_DIR, PREDICTIONS_FILE
from .inference import load_detector


def list_images(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise DataError(f"{folder}: no images found (extensions {sorted(IMAGE_EXTENSIONS)})")
    return paths


@dataclass
class Prediction:
    """What :func:`predict` wrote (``scores_csv``) and the overlays to draw (files relative to its folder)."""

    scores_csv: Path
    overlays: list[OverlayItem]


def predict(run_dir: Path, images: Path, output_dir: Path, device: str = "auto", overlays: bool = True,
            overwrite: bool = False, weights: str | None = None) -> Prediction:
    """Score every image under ``images`` (:meth:`Detector.score_images`); writes ``output_dir/scores.csv``
    and returns it with one :class:`~dpdiff.figure_data.OverlayItem` per image when ``overlays`` (drawn by
    ``dpdiff.experiments.evaluation.predict_and_draw``). ``weights``: the backbone checkpoint, when it is not
    where the run's config says (``backbone.weights``)."""
    detector = load_detector(Path(run_dir), device, weights=weights)
    paths = list_images(images)
    out = Path(output_dir)
    csv_path = out / PREDICTIONS_FILE
    if csv_path.exists() and not overwrite:
        raise FileExistsError(f"{csv_path} exists; pass --overwrite or choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    maps, scores = (t.numpy() for t in detector.score_images(paths, desc="predict"))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "score", "max_pixel_score"])
    for p, s, m in zip(paths, scores, maps):
        w.writerow([str(p), f"{float(s):.6g}", f"{float(m.max()):.6g}"])
    atomic_write_text(csv_path, buf.getvalue())
    items = []
    if overlays:
        vmin, vmax = float(np.min(maps)), float(np.percentile(maps, 99.9))
        for i, p in enumerate(paths):
            rel = Path(p).relative_to(Path(images)).with_suffix(".png").as_posix()
            items.append(OverlayItem(str(p), maps[i], f"{OVERLAYS_DIR}/{rel}", detector.map_size, vmin, vmax,
                                     f"score={scores[i]:.3g}"))
    return Prediction(csv_path, items)


__all__ = ["Prediction", "predict", "list_images"]
