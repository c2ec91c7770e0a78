"""`dpdiff scale`: the category-scale protocol (paper Table 2) on the synthetic many-category data.

For every category count N of a grid (default 10, 20, 40, 80) one unified DPDiff-AD model is trained
on the normal images of the first N synthetic categories and tested on their test images, and the
PatchCore-style kNN memory bank is scored on the same backbone tokens (experiments/compare.py). The
subsets are nested like the paper's S1 in S2 in S3: the dataset is generated once for the largest N
(``data/``; :func:`dpdiff.data.synthetic.ensure_synthetic_dataset`) and the N-category subset is its
first N categories, which are exactly the N-category dataset. Backbone features come from a feature
cache in the output folder (``features/``), so every image goes through the backbone once however
many subsets contain it.

Output folder::

    scale_settings.json            what the run was made with (a rerun must match, else --overwrite)
    data/                          the synthetic dataset (MVTec layout)
    features/                      feature cache (features/cache.py)
    N010/run/                      the DPDiff-AD run of N = 10 (checkpoint, loss history)
    N010/dpdiff/results.{json,csv,md}, N010/knn/results.{json,csv,md}
                                   per-category metrics + mean, with the evaluation protocol
    N010/done.json                 written last: N = 10 is finished (mean rows, timings)
    scale_table_dpdiff.{md,csv,json}, scale_table_knn.{md,csv,json}
                                   Table 2 layout: one row per N (mean over its categories) + Delta
    scale_plot.png                 each of the 8 columns vs N, both methods

Resumable: a finished N (``done.json``) is skipped; an interrupted training resumes from its last
checkpoint. The tables and the plot are rebuilt from the finished counts of the grid at the end of
every run. A folder made with other settings (config, images per category, steps, seed ...) is
refused unless ``overwrite``, which redoes every count (the synthetic data are regenerated only
when their own settings changed; the feature cache is kept: it is keyed by file identity).
"""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dpdiff.baselines.knn import KNNMemoryBank
from dpdiff.config import RUNTIME, Config, keys_with_role
from dpdiff.data.geometry import ImageGeometry
from dpdiff.data.readers import load_samples
from dpdiff.data.synthetic import ensure_synthetic_dataset, read_marker
from dpdiff.experiments.compare import build_knn, dpdiff_score_features, knn_score_features, masks_and_labels
from dpdiff.features import build_backbone_from_config, feature_cache_key, resolve_device
from dpdiff.features.cache import FeatureCache, FeatureStore
from dpdiff.inference.detector import Detector, scoring_dataset
from dpdiff.metrics import compute_metrics
from dpdiff.metrics.paper_tables import DELTA_ROW, load_results, scale_table, write_table
from dpdiff.metrics.tables import TABLE_COLUMNS, write_results
from dpdiff.model.checkpoint import STATE_FILE, load_model
from dpdiff.utils.errors import ConfigError
from dpdiff.utils.io import atomic_write_bytes, atomic_write_json
from dpdiff.utils.run_files import RESULTS_STEM
from dpdiff.workflows.evaluate import protocol_description
from dpdiff.workflows.train import train

logger = logging.getLogger(__name__)

__all__ = [
    "ScaleSettings",
    "SCALE_PRESET",
    "METHODS",
    "run_scale",
    "count_dir",
    "parse_counts",
    "SETTINGS_FILE",
    "DONE_FILE",
]

#: The packaged preset `dpdiff scale` runs by default (dpdiff/configs/scale_lite0.yaml; dpdiff.config.load_config).
SCALE_PRESET = "scale_lite0"
#: Config keys scale sets itself for every count (its synthetic data folder and the first N categories).
SCALE_OWN_KEYS = frozenset({"data.root", "data.categories"})
SETTINGS_FILE = "scale_settings.json"
DONE_FILE = "done.json"
#: method key -> display name (table stems are ``scale_table_<key>``)
METHODS = {"dpdiff": "DPDiff-AD", "knn": "kNN memory bank"}


@dataclass
class ScaleSettings:
    """Everything `dpdiff scale` needs besides the model/inference config."""

    counts: list[int] = field(default_factory=lambda: [10, 20, 40, 80])
    images_per_category: int = 16  # normal training images per category
    test_good_per_category: int = 4
    test_defect_per_category: int = 8  # one of each defect type
    #: Training budget proportional to N (issue #13): every count trains for the same number of passes over its
    #: normal images, steps = ceil(epochs * N * images_per_category / train.batch_size). A fixed ``steps`` replaces it.
    epochs: float | None = 100.0
    steps: int | None = None  # a fixed step count for every N (then epochs must be None)
    seed: int = 0  # synthetic data and training seed
    coreset: float = 1.0  # kNN memory bank: fraction kept by greedy coreset (1.0 = all tokens)

    def __post_init__(self) -> None:
        self.counts = sorted({int(n) for n in self.counts})
        if not self.counts or self.counts[0] < 1:
            raise ConfigError(f"category counts must be positive integers, got {self.counts}")
        if self.images_per_category < 1:
            raise ConfigError(f"images_per_category must be >= 1, got {self.images_per_category}")
        if self.test_defect_per_category < 1 or self.test_good_per_category < 1:
            raise ConfigError(
                "each category needs at least one good and one defective test image "
                "(the image metrics need both labels)"
            )
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.epochs is not None and not self.epochs > 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if self.steps is not None and self.epochs is not None:
            raise ConfigError(
                f"give either steps (a fixed count for every N, got {self.steps}) or epochs (steps proportional "
                f"to N, got {self.epochs}), not both: set epochs=None for a fixed step count"
            )
        if not 0.0 < self.coreset <= 1.0:
            raise ConfigError(f"coreset must be in (0, 1], got {self.coreset}")

    def steps_for(self, n: int, batch_size: int, config_steps: int) -> int:
        """Training steps of the N-category model: the same epochs for every N, a fixed ``steps``, or (both
        None) the config's ``train.steps``."""
        if self.steps is not None:
            return self.steps
        if self.epochs is None:
            return config_steps
        return max(1, math.ceil(self.epochs * n * self.images_per_category / batch_size))


def parse_counts(items) -> list[int]:
    """``["10,20", "40"]`` or ``"10,20,40"`` -> ``[10, 20, 40]``."""
    if isinstance(items, str):
        items = [items]
    out = []
    for item in items:
        for part in str(item).replace(",", " ").split():
            try:
                out.append(int(part))
            except ValueError:
                raise ConfigError(f"--counts expects integers, got {part!r}") from None
    if not out:
        raise ConfigError("no category counts given")
    return out


def count_dir(output: Path, n: int) -> Path:
    return Path(output) / f"N{n:03d}"


def _comparable_config(cfg_d: dict) -> dict:
    """The config entries a rerun must match: all but the run-time keys (dpdiff.config RUNTIME: device,
    workers, logging, checkpoint interval, feature cache change no number) and SCALE_OWN_KEYS. Unlike the
    ablation training key, the test-time sections count: they change the tables."""
    ignored = keys_with_role(RUNTIME) | SCALE_OWN_KEYS
    return {
        sec: ({k: v for k, v in vals.items() if f"{sec}.{k}" not in ignored} if isinstance(vals, dict) else vals)
        for sec, vals in cfg_d.items()
    }


def _fingerprint(cfg: Config, s: ScaleSettings) -> dict:
    """What must not change between a run and its resumption (the grid itself may grow)."""
    d = asdict(s)
    d.pop("counts")
    return {"settings": d, "config": _comparable_config(cfg.to_dict())}


def _same_fingerprint(old: object, new: dict) -> bool:
    """``old`` (read from scale_settings.json; folders written by earlier versions also hold run-time keys)
    matches ``new``."""
    if not isinstance(old, dict):
        return False
    if isinstance(old.get("config"), dict):
        old = {**old, "config": _comparable_config(old["config"])}
    return json.dumps(old, sort_keys=True) == json.dumps(json.loads(json.dumps(new)), sort_keys=True)


def _prepare_output(output: Path, cfg: Config, s: ScaleSettings, overwrite: bool) -> None:
    output.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(cfg, s)
    path = output / SETTINGS_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        same = isinstance(old, dict) and _same_fingerprint(old.get("fingerprint"), fp)
        if not same and not overwrite:
            raise FileExistsError(
                f"{output} holds a scale run made with other settings ({path}); pass --overwrite "
                f"to redo it or choose another --output"
            )
        if overwrite:
            _clear(output)
    elif any(count_dir(output, n).exists() for n in s.counts) and not overwrite:
        raise FileExistsError(
            f"{output} holds count folders but no {SETTINGS_FILE}; pass --overwrite or choose another --output"
        )
    elif overwrite:
        _clear(output)
    atomic_write_json(path, {"fingerprint": fp, "counts": s.counts})


def _clear(output: Path) -> None:
    for p in sorted(output.glob("N[0-9][0-9][0-9]*")):
        if p.is_dir():
            shutil.rmtree(p)
    for p in list(output.glob("scale_table_*")) + [output / "scale_plot.png", output / SETTINGS_FILE]:
        p.unlink(missing_ok=True)


def _ensure_data(output: Path, cfg: Config, s: ScaleSettings, overwrite: bool) -> list[str]:
    data = output / "data"
    kwargs: dict[str, Any] = dict(
        train_per_category=s.images_per_category,
        test_good_per_category=s.test_good_per_category,
        test_defect_per_category=s.test_defect_per_category,
        image_size=cfg.backbone.image_size,
        seed=s.seed,
    )
    try:
        return ensure_synthetic_dataset(data, max(s.counts), **kwargs)
    except FileExistsError:
        if not overwrite or read_marker(data) is None:
            raise
        shutil.rmtree(data)  # --overwrite and the data were made with other settings
        return ensure_synthetic_dataset(data, max(s.counts), **kwargs)


def _test_samples(data: Path, categories: list[str]) -> dict[str, list]:
    # canonical order (as ``dpdiff test``): sorted by path within a category
    return {c: sorted(load_samples("mvtec", data, [c], "test"), key=lambda x: str(x.image_path)) for c in categories}


def _evaluate_count(
    n: int,
    names: list[str],
    output: Path,
    cfg: Config,
    s: ScaleSettings,
    backbone,
    cache: FeatureCache,
    device: torch.device,
) -> dict:
    """Train + test DPDiff-AD and the kNN bank on the first ``n`` categories; returns the done record."""
    cats = names[:n]
    folder = count_dir(output, n)
    data = output / "data"
    steps = s.steps_for(n, cfg.train.batch_size, cfg.train.steps)
    run_cfg = cfg.override(
        {"data.root": str(data), "data.categories": cats, "data.format": "mvtec", "train.steps": steps}
    )
    timings = {}

    t0 = time.perf_counter()
    train_samples, train_feats, tests, test_feats = _count_features(n, cats, data, cfg, backbone, cache, device)
    timings["features_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run_dir = folder / "run"
    resume = (run_dir / STATE_FILE).exists()
    train(run_cfg, run_dir, overwrite=not resume, resume=resume, features=train_feats, samples=train_samples)
    timings["dpdiff_train_s"] = time.perf_counter() - t0
    model, _, _ = load_model(run_dir, device)
    detector = Detector(backbone, model, run_cfg, device)
    detector.run_dir = run_dir  # the token bank and image Gaussian train() built, when the preset uses them

    t0 = time.perf_counter()
    bank = build_knn(train_feats, s.coreset, seed=s.seed)
    timings["knn_build_s"] = time.perf_counter() - t0
    per_cat, secs = _score_categories(cats, tests, test_feats, detector, bank, run_cfg)
    timings["dpdiff_test_s"], timings["knn_test_s"] = secs["dpdiff"], secs["knn"]

    protocol = _protocol(run_cfg, s)
    means, files = {}, {}
    for m in METHODS:
        paths = write_results(per_cat[m], folder / m, stem=RESULTS_STEM, protocol=protocol)
        means[m] = json.loads(Path(paths["json"]).read_text())["mean"]
        files[m] = str(paths["json"])
    record = {
        "categories": n,
        "category_names": cats,
        "train_images": len(train_samples),
        "train_steps": steps,
        "test_images": sum(len(tests[c]) for c in cats),
        "mean": means,
        "results": files,
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    atomic_write_json(folder / DONE_FILE, record)  # last: this count is finished
    return record


def _count_features(
    n: int, cats: list[str], data: Path, cfg: Config, backbone, cache: FeatureCache, device: torch.device
) -> tuple[list, FeatureStore, dict[str, list], FeatureStore]:
    """(training samples, their features, test samples per category, the test features in category order) of the
    first ``n`` categories, from the feature cache."""
    bkey = feature_cache_key(cfg)
    fb = cfg.train.feature_batch_size
    geometry = ImageGeometry.from_config(cfg)
    train_samples = load_samples("mvtec", data, cats, "train")
    train_feats = cache.get(backbone, bkey, train_samples, geometry, fb, device, desc=f"N={n} train features")
    tests = _test_samples(data, cats)
    flat = [x for c in cats for x in tests[c]]
    test_feats = cache.get(backbone, bkey, flat, geometry, fb, device, desc=f"N={n} test features")
    return train_samples, train_feats, tests, test_feats


def _score_categories(
    cats: list[str],
    tests: dict[str, list],
    test_feats: FeatureStore,
    detector: Detector,
    bank: KNNMemoryBank,
    run_cfg: Config,
) -> tuple[dict[str, dict], dict[str, float]]:
    """(method -> category -> metrics, method -> scoring seconds) of DPDiff-AD and the kNN bank, category by
    category."""
    per_cat: dict[str, dict] = {m: {} for m in METHODS}
    secs = {m: 0.0 for m in METHODS}
    pos = 0
    for c in cats:
        samples = tests[c]
        feats = test_feats[pos : pos + len(samples)]
        pos += len(samples)
        masks, labels = masks_and_labels(scoring_dataset(detector, samples))
        t0 = time.perf_counter()
        maps, scores = dpdiff_score_features(detector, feats)
        secs["dpdiff"] += time.perf_counter() - t0
        per_cat["dpdiff"][c] = compute_metrics(scores.numpy(), labels, maps.numpy(), masks)
        t0 = time.perf_counter()
        maps, scores = knn_score_features(bank, feats, run_cfg)
        secs["knn"] += time.perf_counter() - t0
        per_cat["knn"][c] = compute_metrics(scores.numpy(), labels, maps.numpy(), masks)
    return per_cat, secs


def _protocol(cfg: Config, s: ScaleSettings) -> dict:
    """Evaluation protocol + the training setting every N shares: the epochs when the budget grows with N
    (each count's step count is in its done.json), else the fixed step count."""
    budget = (
        {"train_epochs": s.epochs} if s.epochs is not None and s.steps is None else {"train_steps": cfg.train.steps}
    )
    return (
        protocol_description(cfg)
        | budget
        | {
            "backbone": cfg.backbone.name,
            "layers": cfg.backbone.layers,
            "train_batch_size": cfg.train.batch_size,
            "images_per_category": s.images_per_category,
            "test_good_per_category": s.test_good_per_category,
            "test_defect_per_category": s.test_defect_per_category,
            "knn_coreset": s.coreset,
            "data": "dpdiff.data.synthetic (nested category prefixes)",
            "seed": s.seed,
        }
    )


def _plot(rows: dict[str, dict[int, dict]], out_path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 6.4), dpi=100)
    FigureCanvasAgg(fig)
    counts = sorted({n for r in rows.values() for n in r})
    for k, col in enumerate(TABLE_COLUMNS):
        ax = fig.add_subplot(2, 4, k + 1)
        for m, style in zip(METHODS, ("o-", "s--"), strict=True):
            ns = sorted(rows[m])
            ys = [100.0 * rows[m][n][col] for n in ns]
            finite = [y for y in ys if math.isfinite(y)]
            delta = (max(finite) - min(finite)) if len(finite) > 1 else float("nan")
            label = METHODS[m] + (f" (Δ {delta:.1f})" if math.isfinite(delta) else "")
            ax.plot(ns, ys, style, label=label, linewidth=1.4, markersize=4)
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts)
        ax.set_xticklabels([str(n) for n in counts])
        ax.minorticks_off()
        ax.set_title(col)
        ax.set_xlabel("categories N")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small", loc="best")
        if k % 4 == 0:
            ax.set_ylabel("%")
    fig.suptitle("Category scale: synthetic data, one unified model per N (Δ = max - min over N)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(out_path, buf.getvalue())


def _write_summary(output: Path, records: dict[int, dict]) -> dict:
    ns = sorted(records)
    rows = {m: {n: records[n]["mean"][m] for n in ns} for m in METHODS}
    out: dict = {"rows": rows, "tables": {}, "delta": {}, "plot": None}
    if len(ns) >= 2:
        for m in METHODS:
            table_rows = {f"N={n}": rows[m][n] for n in ns}
            sources = {f"N={n}": load_results(records[n]["results"][m]) for n in ns}
            paths = write_table(
                table_rows, output, stem=f"scale_table_{m}", kind="scale", sources=sources, overwrite=True
            )  # derived from the finished counts: rebuilt every run
            out["tables"][m] = {k: str(v) for k, v in paths.items()}
            out["delta"][m] = scale_table(table_rows)[DELTA_ROW]
    out["plot"] = str(_plot(rows, output / "scale_plot.png"))
    return out


def run_scale(
    cfg: Config,
    output: str | Path,
    settings: ScaleSettings | None = None,
    overwrite: bool = False,
    device: str | None = None,
    log=None,
) -> dict:
    """Run the category-scale grid into ``output`` (see the module docstring); returns
    ``{"counts", "records": {N: done record}, "skipped": [N ...], "rows": {method: {N: mean row}},
    "tables": {method: {"md", "csv", "json"}}, "delta": {method: row}, "plot"}``. Progress messages go to
    ``log`` (default: this module's logger, level INFO)."""
    log = log or logger.info
    s = settings or ScaleSettings()
    output = Path(output)
    cfg = cfg.override({"train.seed": s.seed} | ({"train.steps": s.steps} if s.steps else {}))
    if device:
        cfg = cfg.override({"train.device": device})
    _prepare_output(output, cfg, s, overwrite)
    t0 = time.perf_counter()
    names = _ensure_data(output, cfg, s, overwrite)
    if time.perf_counter() - t0 > 1:
        log(f"[scale] synthetic data: {len(names)} categories in {output / 'data'} ({time.perf_counter() - t0:.0f} s)")
    dev = resolve_device(cfg.train.device)
    records: dict[int, dict] = {}
    skipped = []
    backbone = None
    cache = FeatureCache(output / "features")
    for n in s.counts:
        done = count_dir(output, n) / DONE_FILE
        if done.is_file():
            records[n] = json.loads(done.read_text())
            skipped.append(n)
            log(f"[scale] N={n}: finished before, skipped ({done})")
            continue
        if backbone is None:
            backbone = build_backbone_from_config(cfg).to(dev).eval()
        log(
            f"[scale] N={n}: training DPDiff-AD for {s.steps_for(n, cfg.train.batch_size, cfg.train.steps)} steps on "
            f"{n} categories, then testing it and the kNN bank"
        )
        t_n = time.perf_counter()
        records[n] = _evaluate_count(n, names, output, cfg, s, backbone, cache, dev)
        m = records[n]["mean"]
        log(
            f"[scale] N={n} done in {time.perf_counter() - t_n:.0f} s: "
            f"DPDiff-AD I-AUROC {100 * m['dpdiff']['I-AUROC']:.1f} mAD {100 * m['dpdiff']['mAD']:.1f} | "
            f"kNN I-AUROC {100 * m['knn']['I-AUROC']:.1f} mAD {100 * m['knn']['mAD']:.1f}"
        )
    summary = _write_summary(output, records)
    return {"counts": s.counts, "records": records, "skipped": skipped, **summary}
