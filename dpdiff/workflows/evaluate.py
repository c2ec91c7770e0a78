"""Test a trained run: per-category anomaly maps, image scores, the seven metrics and mAD.

It also keeps what the figures drawn afterwards need (``dpdiff.figure_data``): the maps of the overlay
images and the report data; the drawing is done by the caller (``dpdiff.workflows.reporting``), never here."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dpdiff.config import Config
from dpdiff.data.geometry import ImageGeometry
from dpdiff.data.readers import load_samples
from dpdiff.figure_data import OverlayItem, ReportData, overlay_picks
from dpdiff.inference.detector import apply_test_overrides, load_detector, score_dataset, scoring_dataset
from dpdiff.metrics import compute_metrics
from dpdiff.metrics.tables import add_mean_row, write_results
from dpdiff.model.checkpoint import read_run_config
from dpdiff.utils.errors import ConfigError
from dpdiff.utils.io import atomic_write_text
from dpdiff.utils.run_files import (
    EVAL_DIR,
    IMAGE_SCORES_FILE,
    OBJECT_LEVEL_STEM,
    OVERLAYS_DIR,
    REPORT_DATA_FILE,
    RESULTS_FILE,
    RESULTS_STEM,
)
from dpdiff.utils.sizes import hw_json, hw_text
from dpdiff.workflows.report_inputs import add_probe_outputs


def protocol_description(cfg: Config) -> dict:
    """Every setting that changes the numbers, recorded in each results file (docs/datasets.md)."""
    inf, ev = cfg.inference, cfg.evaluation
    geometry = ImageGeometry.from_config(cfg)
    res = geometry.map_hw
    if inf.image_score == "pooled_max":
        rule = f"max of AvgPool(k={inf.pool_size}, stride 1) of the pixel map (Eq. 24)"
    else:
        rule = f"mean of the top {inf.top_percent}% pixels of the pixel map"
    maps = f"maps: token grid bilinearly upsampled to {hw_text(res)}"
    if geometry.resize == "keep_aspect":
        maps += ", cut to the letterbox's content and resized back to it (the padding is not scored)"
    if geometry.tiling is not None:
        maps = (
            f"maps: each tile's token grid bilinearly upsampled to {hw_text(res)}, the tiles stitched (cosine "
            f"window) on the region of interest scaled by map size / tile size, image score on that stitched map, "
            f"which is resized (bilinear) to {hw_text(res)}"
        )
    where = "" if geometry.roi is None else " of the region of interest (pixels outside it are not evaluated)"
    out = {
        "evaluation_resolution": hw_json(res),
        "input_resolution": hw_json(geometry.size),
        "resize": f"{geometry.describe()}; {maps}",
        "mask_rule": f"mask values in [0,1]{where} resized ({ev.mask_resize}) to {hw_text(res)}, "
        f"defect where > {ev.mask_threshold}",
        "mask_threshold": ev.mask_threshold,
        "mask_resize": ev.mask_resize,
        "image_score_rule": inf.image_score,
        "image_score": rule,
        "smoothing_sigma": inf.smoothing_sigma,
        "aupro_fpr_limit": 0.3,
        "aupro_regions": "8-connected components of each mask",
        "pixel_metrics": "exact, per category, over all pixels of its test images at the evaluation resolution",
        "inference": asdict(inf),
        "evaluation": asdict(ev),
    }
    if not geometry.is_plain:  # only then: results files of the plain geometry stay as they were
        out["geometry"] = geometry.to_dict()
    return out


def evaluate(
    run_dir: Path,
    data_root: str | None = None,
    categories: list[str] | None = None,
    output_dir: Path | None = None,
    overlays_per_category: int = 4,
    device: str = "auto",
    overwrite: bool = False,
    inference_overrides: dict | None = None,
    data_format: str | None = None,
    report: bool = True,
    report_examples: int = 2,
    weights: str | None = None,
) -> dict:
    """Evaluate a run folder on the test split of each category (layout: ``data_format``, default the
    training run's ``data.format``); writes the results files and ``report_data.npz``.

    Returns ``{"per_category", "mean", "fps", "output_dir", "files"[, "object_level"], "report_data",
    "overlays"}``: ``report_data`` (:class:`~dpdiff.figure_data.ReportData`, also saved) holds the maps of the
    ``report_examples`` worst false positives/negatives per category and the probe images, with the model's
    outputs on them unless ``report=False`` (``dpdiff report`` computes them later); ``overlays`` lists the
    :class:`~dpdiff.figure_data.OverlayItem` of ``overlays_per_category`` images per category. Nothing is
    drawn here: ``dpdiff.workflows.reporting.evaluate_and_report`` writes the overlays and the HTML report.
    ``weights``: the backbone checkpoint, when it is not where the run's config says (``backbone.weights``)."""
    run_dir = Path(run_dir)
    detector = load_detector(run_dir, device, weights=weights)
    detector.cfg = cfg = apply_test_overrides(detector.cfg, inference_overrides)
    root, cats = _test_data(run_dir, cfg, data_root, categories)
    out = _output_folder(run_dir, output_dir, overwrite)
    fmt = _data_format(data_format or cfg.data.format, root)
    report_data = ReportData(
        detector.map_size, str(root.absolute()), examples_per_category=report_examples, roi=_roi(cfg)
    )
    tally = _TestTally()
    for cat in cats:
        _test_category(detector, fmt, root, cat, tally, report_data, overlays_per_category)
    result = _write_results(detector, cfg, out, tally)
    if report and report_data.probes:
        add_probe_outputs(detector, report_data)
    report_data.save(out / REPORT_DATA_FILE)  # `dpdiff report` draws it later without scoring the test set again
    return result | {"report_data": report_data, "overlays": tally.overlays}


@dataclass
class _TestTally:
    """What the categories' tests add up to: their metrics, image score rows, overlays and timing."""

    per_category: dict = field(default_factory=dict)
    per_category_object: dict = field(default_factory=dict)
    image_rows: list[dict] = field(default_factory=list)
    overlays: list[OverlayItem] = field(default_factory=list)
    unmasked: dict = field(default_factory=dict)  # category -> defective test images without a mask
    images: int = 0
    seconds: float = 0.0


def _test_data(run_dir: Path, cfg: Config, data_root: str | None, categories: list[str] | None):
    """(test data root, categories): the given ones, else those the run recorded, else ``data.categories``."""
    _, meta = read_run_config(run_dir)
    root = Path(data_root or cfg.data.root or "")
    if not str(root) or not root.is_dir():
        raise FileNotFoundError(f"test data root {root!s} not found; pass --data PATH")
    cats = categories or meta.get("categories") or cfg.data.categories
    if cats is None:
        raise ConfigError(f"no categories to test: {run_dir} records none and data.categories is unset; pass them")
    return root, cats


def _output_folder(run_dir: Path, output_dir: Path | None, overwrite: bool) -> Path:
    """The results folder (default ``RUN/eval``), created; one already holding results only with ``overwrite``."""
    out = Path(output_dir) if output_dir else run_dir / EVAL_DIR
    if (out / RESULTS_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds results; pass --overwrite or choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _data_format(fmt: str, root: Path) -> str:
    """The dataset layout, detected from ``root``'s contents for ``auto``."""
    if fmt == "auto":
        from dpdiff.data.readers import detect_format

        fmt = detect_format(root)
    return fmt


def _test_category(
    detector, fmt: str, root: Path, cat: str, tally: _TestTally, report_data: ReportData, overlays_per_category: int
) -> None:
    """Score one category's test split and add its metrics, image scores, report maps and overlays."""
    cfg = detector.cfg
    # canonical order: the noise draws follow the batch order, so two readers listing the same
    # files in different orders must still give identical scores
    samples = sorted(load_samples(fmt, root, [cat], "test", **cfg.data.options), key=lambda s: str(s.image_path))
    ds = scoring_dataset(detector, samples)
    maps, scores, labels, masks, secs = score_dataset(
        detector, ds, cfg.inference.batch_size, f"test {cat}", seed=cfg.inference.seed
    )
    tally.images += len(samples)
    tally.seconds += secs
    known = np.array([s.mask_known for s in samples], dtype=bool)
    tally.per_category[cat] = compute_metrics(scores, labels, maps, masks, mask_known=known)
    if not known.all():
        tally.unmasked[cat] = int((~known).sum())
    report_data.add_category(cat, samples, maps, scores, masks)  # keeps a few maps only
    if fmt in OBJECT_LEVEL_FORMATS:
        tally.per_category_object[cat] = object_level_metrics(samples, scores)
    for smp, sc in zip(samples, scores, strict=True):
        tally.image_rows.append(
            {
                "category": cat,
                "image": str(smp.image_path),
                "defect": smp.defect,
                "label": smp.label,
                "score": float(sc),
            }
        )
    if overlays_per_category > 0:
        tally.overlays += category_overlays(
            f"{OVERLAYS_DIR}/{cat}",
            samples,
            maps,
            scores,
            masks,
            detector.map_size,
            overlays_per_category,
            _roi(cfg),
        )


def _write_results(detector, cfg: Config, out: Path, tally: _TestTally) -> dict:
    """Write the results tables, the image scores and (multi-view formats) the object-level metrics; return
    ``{"per_category", "mean", "fps", "output_dir", "files"[, "object_level"]}``."""
    per_category = tally.per_category
    fps = tally.images / tally.seconds if tally.seconds > 0 else float("nan")
    protocol = protocol_description(cfg) | {"fps_end_to_end": round(fps, 3), "device": str(detector.device)}
    if tally.unmasked:
        protocol["defective_images_without_mask"] = dict(tally.unmasked)
        protocol["pixel_metrics"] += (
            "; defective images without a mask are left out of the pixel metrics (not available: null / \u2014 "
            "where no defective image of a category has a mask, and mAD then too)"
        )
    paths = write_results(per_category, out, stem=RESULTS_STEM, protocol=protocol)
    _write_image_scores(out / IMAGE_SCORES_FILE, tally.image_rows)
    mean = add_mean_row(per_category)["mean"]
    result = {
        "per_category": per_category,
        "mean": mean,
        "fps": fps,
        "output_dir": str(out),
        "files": {k: str(v) for k, v in paths.items()},
    }
    if tally.per_category_object:
        result["object_level"] = write_object_level(tally.per_category_object, out, protocol)
    return result


def _write_image_scores(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["category", "image", "defect", "label", "score"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


#: Formats with several camera views per physical object (Real-IAD: five views C1-C5).
OBJECT_LEVEL_FORMATS = ("realiad", "realiad_variety")
OBJECT_METRIC_NAMES = ("O-AUROC", "O-AP", "O-F1max")


def object_level_metrics(samples, scores) -> dict:
    """Image metrics over physical objects: an object's score is the max over its views, its label
    the max of its views' labels (Real-IAD multi-view protocol)."""
    from dpdiff.data.readers.realiad import object_scores
    from dpdiff.metrics import image_metrics

    _, obj_labels, obj_scores = object_scores(samples, scores)
    m = image_metrics(np.asarray(obj_scores), np.asarray(obj_labels))
    return {"O-AUROC": m["I-AUROC"], "O-AP": m["I-AP"], "O-F1max": m["I-F1max"], "objects": int(len(obj_labels))}


def write_object_level(per_category: dict, out: Path, protocol: dict) -> dict:
    """``object_level.json`` / ``.csv``: per-category object-level image metrics and their mean."""
    from dpdiff.utils.io import atomic_write_json

    rows = dict(per_category)
    rows["mean"] = {k: float(np.mean([r[k] for r in per_category.values()])) for k in OBJECT_METRIC_NAMES}
    rows["mean"]["objects"] = int(sum(r["objects"] for r in per_category.values()))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("category",) + OBJECT_METRIC_NAMES + ("objects",))
    for name, r in rows.items():
        w.writerow([name] + [repr(float(r[k])) for k in OBJECT_METRIC_NAMES] + [r["objects"]])
    atomic_write_text(out / f"{OBJECT_LEVEL_STEM}.csv", buf.getvalue())
    atomic_write_json(
        out / f"{OBJECT_LEVEL_STEM}.json",
        {"rows": rows, "protocol": protocol, "rule": "object score = max over its views; label = max of views"},
    )
    return rows


def _roi(cfg: Config) -> list | None:
    """``data.roi`` as the figures draw it: the images are cut to it before the maps are laid on them."""
    return None if cfg.data.roi is None else list(cfg.data.roi)


def category_overlays(
    folder: str, samples, maps, scores, masks, size: int | tuple[int, int], n: int, roi: list | None = None
) -> list[OverlayItem]:
    """The overlays of one category (:func:`~dpdiff.figure_data.overlay_picks`), files under ``folder``, on
    the colour scale of all its maps (min .. 99.9th percentile)."""
    vmin, vmax = float(np.min(maps)), float(np.percentile(maps, 99.9))
    labels = np.array([s.label for s in samples])
    items = []
    for i in overlay_picks(labels, scores, n):
        smp = samples[i]
        items.append(
            OverlayItem(
                str(smp.image_path),
                maps[i].copy(),  # a copy: the category's maps can go
                f"{folder}/{smp.defect}_{Path(smp.image_path).stem}.png",
                size,
                vmin,
                vmax,
                f"{smp.category}/{smp.defect} score={scores[i]:.3g}",
                mask=masks[i].copy() if smp.label and smp.mask_path is not None else None,
                roi=roi,
            )
        )
    return items
