"""Test a trained run: per-category anomaly maps, image scores, the seven metrics and mAD, overlays."""
from __future__ import annotations

import csv
import io
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..config import Config
from ..data.dataset import ImageDataset, load_image_array
from ..data.formats import load_samples
from ..io import atomic_write_text
from ..metrics import METRIC_NAMES, compute_metrics
from ..metrics.tables import write_results
from .checkpoint import read_run_config
from .inference import load_detector, score_dataset


def protocol_description(cfg: Config) -> dict:
    """Every setting that changes the numbers, recorded in each results file (docs/datasets.md)."""
    inf, ev = cfg.inference, cfg.evaluation
    res = int(ev.resolution or cfg.backbone.image_size)
    if inf.image_score == "pooled_max":
        rule = f"max of AvgPool(k={inf.pool_size}, stride 1) of the pixel map (Eq. 24)"
    else:
        rule = f"mean of the top {inf.top_percent}% pixels of the pixel map"
    return {
        "evaluation_resolution": res,
        "input_resolution": cfg.backbone.image_size,
        "resize": f"images: direct resize to {cfg.backbone.image_size}^2 (aspect not kept); "
                  f"maps: token grid bilinearly upsampled to {res}^2",
        "mask_rule": f"mask values in [0,1] resized ({ev.mask_resize}) to {res}^2, defect where > {ev.mask_threshold}",
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


def apply_test_overrides(cfg: Config, overrides: dict | None) -> Config:
    """``{"noise_step": 50, "evaluation.resolution": 256, ...}``: bare keys are inference options;
    dotted keys may change the ``inference``, ``evaluation`` and ``data`` sections (never the model)."""
    dotted = {}
    for key, value in (overrides or {}).items():
        section, dot, name = key.partition(".")
        if not dot:
            section, name = "inference", key
        if section not in ("inference", "evaluation", "data"):
            raise KeyError(f"test option {key!r}: only inference.*, evaluation.* and data.* can change at test time")
        dotted[f"{section}.{name}"] = value
    return cfg.override(dotted) if dotted else cfg


def evaluate(run_dir: Path, data_root: str | None = None, categories: list[str] | None = None,
             output_dir: Path | None = None, overlays_per_category: int = 4, device: str = "auto",
             overwrite: bool = False, inference_overrides: dict | None = None,
             data_format: str | None = None, report: bool = True, report_examples: int = 2) -> dict:
    """Evaluate a run folder on the test split of each category (layout: ``data_format``, default the
    training run's ``data.format``); writes results files, ``report_data.npz`` (the maps of the
    ``report_examples`` worst false positives/negatives per category and a few probe images) and, unless
    ``report=False``, the HTML report ``report.html`` (dpdiff/viz/report.py)."""
    run_dir = Path(run_dir)
    detector = load_detector(run_dir, device)
    detector.cfg = cfg = apply_test_overrides(detector.cfg, inference_overrides)
    _, meta = read_run_config(run_dir)
    root = Path(data_root or cfg.data.root or "")
    if not str(root) or not root.is_dir():
        raise FileNotFoundError(f"test data root {root!s} not found; pass --data PATH")
    cats = categories or meta.get("categories") or cfg.data.categories
    out = Path(output_dir) if output_dir else run_dir / "eval"
    from ..viz.report import REPORT_FILE, ReportCollector, report_from_evaluate
    if ((out / "results.json").exists() or (report and (out / REPORT_FILE).exists())) and not overwrite:
        raise FileExistsError(f"{out} already holds results; pass --overwrite or choose another --output")
    out.mkdir(parents=True, exist_ok=True)

    fmt = data_format or cfg.data.format
    if fmt == "auto":
        from ..data.formats import detect_format
        fmt = detect_format(root)
    per_category, per_category_object, image_rows = {}, {}, []
    collector = ReportCollector(detector.map_size, str(root.absolute()), examples_per_category=report_examples)
    total_images, total_s = 0, 0.0
    for cat in cats:
        # canonical order: the noise draws follow the batch order, so two readers listing the same
        # files in different orders must still give identical scores
        samples = sorted(load_samples(fmt, root, [cat], "test", **cfg.data.options), key=lambda s: str(s.image_path))
        ds = ImageDataset(samples, cfg.backbone.image_size, detector.backbone.mean, detector.backbone.std,
                          mask_size=detector.map_size, mask_threshold=cfg.evaluation.mask_threshold,
                          mask_resize=cfg.evaluation.mask_resize)
        maps, scores, labels, masks, secs = score_dataset(detector, ds, cfg.inference.batch_size, f"test {cat}",
                                                          seed=cfg.inference.seed)
        total_images += len(samples)
        total_s += secs
        per_category[cat] = compute_metrics(scores, labels, maps, masks)
        collector.add_category(cat, samples, maps, scores, masks)  # keeps a few maps only
        if fmt in OBJECT_LEVEL_FORMATS:
            per_category_object[cat] = object_level_metrics(samples, scores)
        for smp, sc in zip(samples, scores):
            image_rows.append({"category": cat, "image": str(smp.image_path), "defect": smp.defect,
                               "label": smp.label, "score": float(sc)})
        if overlays_per_category > 0:
            _save_category_overlays(out / "overlays" / cat, samples, maps, scores, masks, detector.map_size,
                                    overlays_per_category)
    fps = total_images / total_s if total_s > 0 else float("nan")
    protocol = protocol_description(cfg) | {"fps_end_to_end": round(fps, 3), "device": str(detector.device)}
    paths = write_results(per_category, out, stem="results", protocol=protocol)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["category", "image", "defect", "label", "score"])
    w.writeheader()
    w.writerows(image_rows)
    atomic_write_text(out / "image_scores.csv", buf.getvalue())
    mean = {k: float(np.mean([m[k] for m in per_category.values()])) for k in list(METRIC_NAMES) + ["mAD"]}
    result = {"per_category": per_category, "mean": mean, "fps": fps, "output_dir": str(out),
              "files": {k: str(v) for k, v in paths.items()}}
    if per_category_object:
        result["object_level"] = write_object_level(per_category_object, out, protocol)
    maps = masks = None  # the last category's arrays are not needed by the report
    if report:
        result["report"] = report_from_evaluate(run_dir, out, collector, detector)
    else:
        collector.save(out / "report_data.npz")  # `dpdiff report` can build it later without inference
    return result


#: Formats with several camera views per physical object (Real-IAD: five views C1-C5).
OBJECT_LEVEL_FORMATS = ("realiad", "realiad_variety")
OBJECT_METRIC_NAMES = ("O-AUROC", "O-AP", "O-F1max")


def object_level_metrics(samples, scores) -> dict:
    """Image metrics over physical objects: an object's score is the max over its views, its label
    the max of its views' labels (Real-IAD multi-view protocol)."""
    from ..data.realiad import object_scores
    from ..metrics import image_metrics
    _, obj_labels, obj_scores = object_scores(samples, scores)
    m = image_metrics(np.asarray(obj_scores), np.asarray(obj_labels))
    return {"O-AUROC": m["I-AUROC"], "O-AP": m["I-AP"], "O-F1max": m["I-F1max"], "objects": int(len(obj_labels))}


def write_object_level(per_category: dict, out: Path, protocol: dict) -> dict:
    """``object_level.json`` / ``.csv``: per-category object-level image metrics and their mean."""
    from ..io import atomic_write_json
    rows = dict(per_category)
    rows["mean"] = {k: float(np.mean([r[k] for r in per_category.values()])) for k in OBJECT_METRIC_NAMES}
    rows["mean"]["objects"] = int(sum(r["objects"] for r in per_category.values()))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("category",) + OBJECT_METRIC_NAMES + ("objects",))
    for name, r in rows.items():
        w.writerow([name] + [repr(float(r[k])) for k in OBJECT_METRIC_NAMES] + [r["objects"]])
    atomic_write_text(out / "object_level.csv", buf.getvalue())
    atomic_write_json(out / "object_level.json", {"rows": rows, "protocol": protocol,
                                                  "rule": "object score = max over its views; label = max of views"})
    return rows


def _save_category_overlays(folder: Path, samples, maps, scores, masks, size: int, n: int) -> None:
    from ..viz import save_overlay
    folder.mkdir(parents=True, exist_ok=True)
    vmin, vmax = float(np.min(maps)), float(np.percentile(maps, 99.9))
    labels = np.array([s.label for s in samples])
    bad = np.where(labels == 1)[0]
    good = np.where(labels == 0)[0]
    # the most anomalous defective images and the highest-scoring normal ones (likely false positives)
    picks = list(bad[np.argsort(-scores[bad])][:n]) + list(good[np.argsort(-scores[good])][:max(1, n // 2)])
    for i in picks:
        smp = samples[i]
        img = load_image_array(smp.image_path, size)
        name = f"{smp.defect}_{Path(smp.image_path).stem}.png"
        save_overlay(img, maps[i], folder / name, mask=masks[i] if smp.label else None, vmin=vmin, vmax=vmax,
                     title=f"{smp.category}/{smp.defect} score={scores[i]:.3g}")
