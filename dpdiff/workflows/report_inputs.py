"""The model's part of the HTML report: outputs on the probe images, and the shown maps of old evaluations.

``evaluate`` calls :func:`add_probe_outputs` (``report=True``); ``dpdiff report`` calls
:func:`prepare_report_data` for evaluations whose ``report_data.npz`` lacks them (``--no-report``) or is
absent (made before it existed). The report itself (``dpdiff.viz.report``) only draws the arrays.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from dpdiff.data.readers import detect_format, load_samples
from dpdiff.features import tokens_from_maps
from dpdiff.figure_data import TSNE_MAX_TOKENS, PathMap, ProbeOutputs, ReportData, select_probes, token_sample
from dpdiff.inference.detector import Detector, apply_test_overrides, load_detector, score_dataset, scoring_dataset
from dpdiff.inference.predictor import ImageInput, flatten_inputs
from dpdiff.model.prototypes import prototype_similarity_maps
from dpdiff.scoring.noise import IndependentNoise, NoiseSource
from dpdiff.scoring.scorer import Scorer, ScoringSettings
from dpdiff.utils.errors import DataError
from dpdiff.utils.progress import progress
from dpdiff.utils.run_files import EVAL_DIR, IMAGE_SCORES_FILE, REPORT_DATA_FILE, RESULTS_FILE

__all__ = ["Probe", "add_probe_outputs", "collect_from_scores", "evaluation_detector", "prepare_report_data", "probe"]


@dataclass
class Probe:
    """What the report shows of a few images (:func:`probe`), as float32 numpy arrays.

    ``x0``/``x0_hat`` (B, N, C): standardised tokens before and after one DDIM reconstruction from
    ``inference.noise_step`` (Eq. 20-21; paper Fig. 7); ``sim_local``/``sim_global`` (B, h, w): each token's
    highest cosine similarity to the image's local/global prototypes (Eq. 10; Fig. 8), None without them;
    ``maps`` (B, R, R) and ``scores`` (B,): the anomaly maps and image scores, as ``detector.score_images``
    gives them (None when not asked for)."""

    x0: np.ndarray
    x0_hat: np.ndarray
    sim_local: np.ndarray | None
    sim_global: np.ndarray | None
    maps: np.ndarray | None
    scores: np.ndarray | None


def probe(
    detector: Detector,
    images: ImageInput | Sequence[ImageInput],
    with_maps: bool = True,
    batch_size: int | None = None,
) -> Probe:
    """What the report shows of a few images (:class:`Probe`), from the detector's pieces: prototype similarity
    maps, tokens before and after one DDIM reconstruction (one independent draw per image from a generator
    seeded with ``inference.seed``, consumed in batch order) and, with ``with_maps``, the anomaly maps and
    scores (as ``detector.score_images``)."""
    inf = detector.cfg.inference
    one_draw = Scorer(detector.model, ScoringSettings(inf.noise_step, inf.ddim_steps))
    reconstruction = IndependentNoise(torch.Generator(detector.device).manual_seed(int(inf.seed)))
    scorer = detector.scorer()
    scoring = scorer.noise_source(torch.Generator(detector.device).manual_seed(int(inf.seed)))
    items = flatten_inputs(images)
    bs = max(1, int(batch_size or inf.batch_size))
    parts = []
    for lo in progress(range(0, len(items), bs), desc="probe images", leave=False):
        with torch.inference_mode():
            feats = detector.features(torch.from_numpy(detector.preprocess(items[lo : lo + bs])))
            part = _probe_batch(one_draw, feats, reconstruction)
            if with_maps:
                m, s = scorer.score_features(feats, scoring)
                part |= {"maps": m.float().cpu(), "scores": s.float().cpu()}
        parts.append(part)
    joined = {
        k: (torch.cat([p[k] for p in parts]).numpy() if parts and k in parts[0] else None)
        for k in ("x0", "x0_hat", "sim_local", "sim_global", "maps", "scores")
    }
    return Probe(**joined)  # type: ignore[arg-type]  # x0 and x0_hat are always there


def _probe_batch(one_draw: Scorer, feats: torch.Tensor, noise: NoiseSource) -> dict[str, torch.Tensor]:
    model = one_draw.model
    tokens = tokens_from_maps(feats.float())
    x0 = model.standardize(tokens)
    p_local, p_global = model.prototypes(x0)
    h, w = model.grid_size
    out = {}
    for key, protos in (("sim_local", p_local), ("sim_global", p_global)):
        if protos is not None:
            out[key] = prototype_similarity_maps(x0, protos).amax(1).view(-1, h, w).float().cpu()
    x0, x0_hat = one_draw.reconstruct(tokens, noise)
    return out | {"x0": x0.float().cpu(), "x0_hat": x0_hat[0].float().cpu()}


def add_probe_outputs(
    detector: Detector,
    data: ReportData,
    data_root: str | None = None,
    tsne_tokens: int = TSNE_MAX_TOKENS,
    seed: int = 0,
) -> ReportData:
    """Run the probe images of ``data`` through :func:`probe` and keep what the report shows
    (``data.probe_outputs``): the prototype similarity maps and ``tsne_tokens`` tokens before/after the
    reconstruction, sampled with ``seed``. ``data_root`` re-roots the image paths when the data moved."""
    _, use = select_probes(data)
    paths = PathMap(data.data_root, data_root)
    outputs = probe(detector, [paths.existing(data.probes[k]["image"]) for k in use], with_maps=False)
    tokens, note = token_sample(
        outputs.x0,
        outputs.x0_hat,
        data.probe_masks(use),
        [data.probes[k]["category"] for k in use],
        detector.model.grid_size,
        int(tsne_tokens),
        seed,
    )
    data.probe_outputs = ProbeOutputs(list(use), outputs.sim_local, outputs.sim_global, tokens, note)
    return data


def evaluation_detector(run_dir: Path, eval_dir: Path, device: str = "auto", weights: str | None = None) -> Detector:
    """The run's detector with the inference and evaluation settings the evaluation in ``eval_dir`` ran with
    (its ``results.json`` protocol, test-time ``--set`` included)."""
    detector = load_detector(run_dir, device, weights=weights)
    results_path = Path(eval_dir) / RESULTS_FILE
    protocol = (
        (json.loads(results_path.read_text(encoding="utf-8")).get("protocol") or {}) if results_path.is_file() else {}
    )
    known = detector.cfg.to_dict()
    overrides = {
        f"{sec}.{k}": v
        for sec in ("inference", "evaluation")
        for k, v in (protocol.get(sec) or {}).items()
        if k in known.get(sec, {})
    }
    if overrides:
        detector.cfg = apply_test_overrides(detector.cfg, overrides)
    return detector


def collect_from_scores(
    run_dir: Path, eval_dir: Path, detector: Detector, data_root: str | None = None, examples_per_category: int = 2
) -> ReportData:
    """Report data for an evaluation without ``report_data.npz`` (made before it existed, or deleted): the
    images are chosen from ``image_scores.csv`` as evaluate chooses them and only their maps are
    recomputed (other noise draws than in the evaluation when ``inference.common_noise`` is off, so a map
    can differ slightly from the one behind the recorded score; the colour scale comes from the recomputed
    maps)."""
    path = Path(eval_dir) / IMAGE_SCORES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: evaluate the run first (dpdiff test {run_dir})")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cfg = detector.cfg
    root = Path(data_root or cfg.data.root or "")
    if not str(root) or not root.is_dir():
        raise FileNotFoundError(f"test data root {root!s} not found; pass --data PATH")
    fmt = cfg.data.format if cfg.data.format != "auto" else detect_format(root)
    key = _relative_key(root, Path(cfg.data.root) if cfg.data.root else None)
    roi = detector.cfg.data.roi
    data = ReportData(
        detector.map_size,
        str(root.absolute()),
        examples_per_category=examples_per_category,
        roi=None if roi is None else list(roi),
    )
    data.maps_recomputed = True
    for cat in progress(
        list(dict.fromkeys(r["category"] for r in rows)), desc="report: recompute shown maps", leave=False
    ):
        scores_by = {key(r["image"]): float(r["score"]) for r in rows if r["category"] == cat}
        samples = [
            s
            for s in sorted(load_samples(fmt, root, [cat], "test", **cfg.data.options), key=lambda s: str(s.image_path))
            if key(s.image_path) in scores_by
        ]
        if not samples:
            raise DataError(f"{path}: no test image of category {cat!r} found under {root}; pass --data PATH")
        scores = np.array([scores_by[key(s.image_path)] for s in samples])
        fp, fn, probes = data.select(np.array([int(s.label) for s in samples]), scores)
        picked = sorted({int(i) for i in (*fp, *fn, *probes)})
        ds = scoring_dataset(detector, samples)
        maps, _, _, masks, _ = score_dataset(
            detector, Subset(ds, picked), cfg.inference.batch_size, f"report {cat}", seed=cfg.inference.seed
        )
        shown = maps[np.isfinite(maps)]
        scale = (float(shown.min()), float(np.percentile(shown, 99.9))) if shown.size else (0.0, 1.0)
        data.add_category(
            cat,
            samples,
            dict(zip(picked, maps, strict=True)),
            scores,
            dict(zip(picked, masks, strict=True)),
            scale=scale,
        )
    return data


def _relative_key(root: Path, old_root: Path | None):
    """Image path -> its path relative to the data root (the given or the recorded one), as a lookup key."""

    def key(p) -> str:
        p = Path(p)
        for base in (root, old_root):
            if base is not None:
                try:
                    return p.relative_to(base).as_posix()
                except ValueError:
                    pass
        return p.as_posix()

    return key


def prepare_report_data(
    run_dir: Path,
    eval_dir: Path | None = None,
    data_root: str | None = None,
    device: str = "auto",
    weights: str | None = None,
) -> tuple[ReportData, str | None]:
    """``(report data with probe outputs, data_root for the report)`` of an evaluation: ``report_data.npz``
    as saved, the model run only for what it lacks (the probe outputs after ``--no-report``; every shown
    map when the file is absent, then the paths are already under ``data_root`` and None is returned)."""
    run_dir = Path(run_dir)
    eval_dir = Path(eval_dir) if eval_dir else run_dir / EVAL_DIR
    detector = None
    if (eval_dir / REPORT_DATA_FILE).is_file():
        data = ReportData.load(eval_dir / REPORT_DATA_FILE)
    else:
        detector = evaluation_detector(run_dir, eval_dir, device, weights)
        data = collect_from_scores(run_dir, eval_dir, detector, data_root)
        data_root = None  # the collected paths are already under the given root
    if data.probes and data.probe_outputs is None:
        detector = detector or evaluation_detector(run_dir, eval_dir, device, weights)
        add_probe_outputs(detector, data, data_root)
    return data, data_root
