"""``dpdiff predict``: score a folder of images with a run folder or an exported ``.onnx``.

Writes ``OUTPUT/scores.csv`` (one row per image: ``image, score, normalized_score, is_anomalous,
max_pixel_score, defect_pixels, status``; the decision columns are empty while the run is uncalibrated) and,
when calibrated, one binary defect mask per image, ``OUTPUT/masks/<relative path>.png`` (0/255, at the image's
own size). Returns the overlays to draw (``dpdiff.workflows.reporting.predict_and_draw``): the anomaly map
with the predicted mask's contour.

A corrupt or unreadable image is an error naming the file, or with ``skip_bad`` a row with ``status``
``skipped: <why>``. An existing ``scores.csv`` is kept unless ``overwrite``; files are written atomically.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dpdiff.data.types import list_images
from dpdiff.figure_data import OverlayItem
from dpdiff.inference.detector import Detector
from dpdiff.inference.predictor import Predictor, Skipped
from dpdiff.utils.errors import RunFolderError
from dpdiff.utils.io import atomic_write_bytes, atomic_write_text
from dpdiff.utils.run_files import OVERLAYS_DIR, PREDICTIONS_FILE

logger = logging.getLogger(__name__)

__all__ = ["PredictionFiles", "predict", "list_images", "MASKS_DIR", "CSV_COLUMNS"]

#: Folder of the binary defect masks under the output folder.
MASKS_DIR = "masks"
CSV_COLUMNS = ("image", "score", "normalized_score", "is_anomalous", "max_pixel_score", "defect_pixels", "status")


@dataclass
class PredictionFiles:
    """What :func:`predict` wrote: ``scores_csv``, the ``masks`` folder (None when uncalibrated), the overlays
    to draw (files relative to the output folder), the skipped inputs and the number of images scored."""

    scores_csv: Path
    masks: Path | None
    overlays: list[OverlayItem] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    scored: int = 0


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _mask_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def predict(
    run_dir: Path,
    images: Path,
    output_dir: Path,
    device: str = "auto",
    overlays: bool = True,
    overwrite: bool = False,
    weights: str | None = None,
    skip_bad: bool = False,
    category: str | None = None,
    detector: Predictor | None = None,
    all_masks: bool = False,
) -> PredictionFiles:
    """Score every image under ``images`` with the run (or ``.onnx``) ``run_dir`` (:meth:`Detector.load`;
    ``detector``: one already loaded); writes ``scores.csv`` and the masks (module docstring) and returns
    them with one :class:`~dpdiff.figure_data.OverlayItem` per scored image when ``overlays``. ``category``:
    use the thresholds calibrated for it. ``weights``: the backbone checkpoint, when it is not where the run's
    config says. Masks and overlay contours are drawn on the images judged anomalous only, unless
    ``all_masks``."""
    images, out = Path(images), Path(output_dir)
    csv_path = out / PREDICTIONS_FILE
    if csv_path.exists() and not overwrite:
        raise RunFolderError(f"{csv_path} exists; pass --overwrite or choose another --output")
    detector = detector or Detector.load(Path(run_dir), weights=weights, device=device)
    paths = list_images(images)
    thresholds = detector.thresholds(category)
    if thresholds is None:
        logger.warning("%s is not calibrated: scores only, no decisions or masks (run `dpdiff calibrate`)", run_dir)
    write_masks = thresholds is not None and thresholds.pixel is not None
    out.mkdir(parents=True, exist_ok=True)
    rows, kept, skipped = [], [], []
    for p in detector.iter_predict(paths, category, skip_bad=skip_bad, all_masks=all_masks, desc="predict"):
        if isinstance(p, Skipped):
            skipped.append(p)
            rows.append([p.image, "", "", "", "", "", f"skipped: {p.reason}"])
            continue
        name, small_map = str(p.image), p.model_map
        rel = Path(name).relative_to(images).with_suffix(".png").as_posix()
        if p.mask is not None and (p.is_anomalous or all_masks):
            atomic_write_bytes(out / MASKS_DIR / rel, _mask_png(p.mask))
        rows.append(
            [
                name,
                _fmt(p.score),
                _fmt(p.normalized_score),
                _fmt(p.is_anomalous),
                _fmt(float(p.anomaly_map.max())),
                _fmt(None if p.mask is None else int(p.mask.sum())),
                "ok",
            ]
        )
        if overlays:
            kept.append((name, rel, small_map, p))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    atomic_write_text(csv_path, buf.getvalue())
    roi = detector.geometry.roi
    items = _overlay_items(kept, detector.map_size, thresholds, all_masks, None if roi is None else list(roi))
    return PredictionFiles(csv_path, out / MASKS_DIR if write_masks else None, items, skipped, len(rows) - len(skipped))


def _overlay_items(
    kept: list, size: tuple[int, int], thresholds, all_masks: bool = False, roi: list | None = None
) -> list[OverlayItem]:
    """The anomaly map (one colour scale for the folder) with the predicted mask's contour (at map size, on the
    evaluation frame: the region of interest ``roi`` stretched to it), on the images judged anomalous (all of
    them with ``all_masks``)."""
    if not kept:
        return []
    maps = np.stack([k[2] for k in kept])
    vmin, vmax = float(np.min(maps)), float(np.percentile(maps, 99.9))
    items = []
    for name, rel, small_map, p in kept:
        mask = None
        if thresholds is not None and thresholds.pixel is not None and (p.is_anomalous or all_masks):
            mask = small_map > thresholds.pixel
        title = f"score={p.score:.3g}"
        if p.is_anomalous is not None:
            title += f" ({p.normalized_score:.2f}x threshold: {'ANOMALOUS' if p.is_anomalous else 'normal'})"
        items.append(OverlayItem(name, small_map, f"{OVERLAYS_DIR}/{rel}", size, vmin, vmax, title, mask, roi))
    return items
