"""Accuracy benchmark (issue #13): DPDiff-AD with the shipped CPU preset against kNN memory banks on the
SAME backbone tokens, on real MTD (one category) and on the first N synthetic categories (one unified model).

    python benchmarks/accuracy.py                         # preset + default training rows (resumable; about 2 h)
    python benchmarks/accuracy.py --trainings all         # every training row of TRAINING_ROWS (about 25 min each)
    python benchmarks/accuracy.py --datasets mtd          # one dataset
    python benchmarks/accuracy.py --datasets elpv,bsdata --rows short --no-extra-trainings   # the public real sets
                                                          # (convert them first: benchmarks/real_datasets.py)
    python benchmarks/accuracy.py --quick                 # smoke run: tiny data, 30 steps (a few minutes)

One run folder (``--output``, default runs/accuracy) holds every piece, so an interrupted run continues
where it stopped: synthetic data (made once), backbone features (``FeatureCache``), one training per
model variant (``train(..., resume=True)``), one JSON per scored row. Then it writes
``benchmarks/results/accuracy/summary.{json,md}`` (``--quick``: under the output folder):

    {"mtd": {"dpdiff": M, "knn": M, "rows": {name: M}}, "synthetic": {...}}

where each M holds I-AUROC, I-AP, I-F1max, P-AUROC, P-AP, P-F1max, P-AUPRO, mAD (fractions, mean over
categories) and images_per_s (backbone + scoring + post-processing, measured here, one process). ``dpdiff``
is exactly what the ``lite0_cpu`` preset ships; ``knn`` is the stronger (by mAD) of the raw-space and the
standardised-space full memory bank. Rows:

* ``dpdiff/<variant>``: the preset model scored with other inference settings (paper protocol: 1 draw,
  3 DDIM steps; the former preset: 4 independent draws; antithetic pairs at several t and DDIM steps).
* ``train:<variant>``: other trainings (no full-rank skip, i.e. the projected-error fallback; no EMA/cosine;
  Eq. 13's raw OT cost; v- or x0-prediction), scored with the preset's inference.
* ``knn/raw``, ``knn/standardized``, ``knn/coreset_time_matched`` (greedy coreset whose scoring time per
  image matches the preset's DPDiff-AD).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from _accuracy_harness import COLUMNS, PRESET, Bench
from _common import ROOT, inference_settings, pct, slug

from dpdiff.config import Config, load_config
from dpdiff.data import shared_data_dir
from dpdiff.data.synthetic import ensure_synthetic_dataset
from dpdiff.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger("accuracy")
RESULTS = ROOT / "benchmarks" / "results" / "accuracy"

#: Inference variants scored on the preset model (name -> inference overrides on the shipped inference settings, so
#: the token bank and the image Gaussian stay on unless a row turns them off). The preset's own settings are scored
#: as the "dpdiff" row whatever they are.
RECONSTRUCTION_ALONE = dict(knn_weight=0.0, image_gaussian_weight=0.0)
INFERENCE_ROWS: dict[str, dict] = {
    "paper protocol (1 draw, 3 DDIM, t=100)": dict(
        ensemble=1, antithetic=False, ddim_steps=3, noise_step=100, ensemble_reduce="mean_error", **RECONSTRUCTION_ALONE
    ),
    "former preset (4 draws, error_of_mean, 3 DDIM, t=100)": dict(
        ensemble=4,
        antithetic=False,
        ddim_steps=3,
        noise_step=100,
        ensemble_reduce="error_of_mean",
        **RECONSTRUCTION_ALONE,
    ),
    "16 draws, error_of_mean, 1 DDIM, t=100": dict(
        ensemble=16,
        antithetic=False,
        ddim_steps=1,
        noise_step=100,
        ensemble_reduce="error_of_mean",
        **RECONSTRUCTION_ALONE,
    ),
    **{
        f"pair, {k} DDIM, t={t}": dict(
            ensemble=2, antithetic=True, ddim_steps=k, noise_step=t, ensemble_reduce="error_of_mean"
        )
        for k in (1, 3)
        for t in (25, 50, 100, 200)
    },
    "reconstruction alone (no token bank, no image Gaussian)": RECONSTRUCTION_ALONE,
    "token bank, no image Gaussian": dict(image_gaussian_weight=0.0),
    "4 pairs, 1 DDIM, t=100": dict(
        ensemble=8, antithetic=True, ddim_steps=1, noise_step=100, ensemble_reduce="error_of_mean"
    ),
    "pair, 1 DDIM, t=100, independent noise per image": dict(
        ensemble=2, antithetic=True, ddim_steps=1, noise_step=100, ensemble_reduce="error_of_mean", common_noise=False
    ),
}

#: The shipped model and inference under other runtimes (name -> Detector options): speed options whose accuracy
#: cost must be known before they can become defaults (issue #22).
RUNTIME_ROWS: dict[str, dict] = {"DiT under bf16 autocast": {"autocast_dtype": "bf16"}}
#: The same, scored from the image files end to end (the backbone runs here, under the same runtime options).
END_TO_END_ROWS: dict[str, dict] = {
    "end to end from the files, float32": {},
    "end to end from the files, bf16 autocast (backbone + DiT)": {"autocast_dtype": "bf16"},
}

#: Other trainings (name -> config overrides), scored with the preset's inference settings.
TRAINING_ROWS: dict[str, dict] = {
    "no full-rank skip (projected-error fallback)": {"model.output_skip": False},
    "no EMA, constant lr": {"train.ema_decay": 0.0, "train.lr_schedule": "constant", "train.warmup_steps": 0},
    "global OT on the raw cost (Eq. 13)": {"model.ot_cost_per_channel": False},
    "eps-prediction (the paper's Eq. 18)": {"model.prediction": "eps"},
    "x0-prediction": {"model.prediction": "x0"},
    # the frontier (issue #21/#22): accuracy against training minutes, and the paper's prototype grids (Tables 6-8)
    "1000 steps": {"train.steps": 1000},
    "masked training: 50% of the tokens, last 300 steps all": {"train.token_keep": 0.5, "train.full_token_steps": 300},
    "masked 50%, last 1000 of 3000 steps all": {"train.token_keep": 0.5, "train.full_token_steps": 1000},
    "1500 steps, masked 50%, last 150 all": {
        "train.steps": 1500,
        "train.token_keep": 0.5,
        "train.full_token_steps": 150,
    },
    "DiT width 64": {"model.hidden_dim": 64},
    "DiT depth 2": {"model.depth": 2},
    "M=4 local prototypes": {"model.num_local_prototypes": 4},
    "M=16 local prototypes": {"model.num_local_prototypes": 16},
    "K=1 global prototype": {"model.num_global_prototypes": 1},
    "K=4 global prototypes": {"model.num_global_prototypes": 4},
    "lr 3e-4": {"train.lr": 3e-4},
    "per-image intensity normalisation (beyond the paper)": {"backbone.normalize_intensity": True},
    # the candidate for the next preset: both of the above (issue #21's held-back failure, issue #22's time to model)
    "masked 50% + intensity normalisation": {
        "train.token_keep": 0.5,
        "train.full_token_steps": 300,
        "backbone.normalize_intensity": True,
    },
}

#: The 0.2 preset (every token for 3000 steps; t=50, no token bank, no image Gaussian): its training (a run folder
#: of this name) is scored twice, with its own inference (:data:`FORMER_INFERENCE`) and with the shipped one.
FORMER_PRESET = "former preset: every token, 3000 steps"
FORMER_TRAINING = {"train.token_keep": 1.0, "train.full_token_steps": 0}
FORMER_INFERENCE = {"noise_step": 50, "knn_weight": 0.0, "image_gaussian_weight": 0.0}

#: The training rows a plain run trains (run-folder names): eps vs the preset's v-prediction.
DEFAULT_TRAININGS = ("eps_prediction__the_paper_s_eq__18",)


def _best(rows: list[dict]) -> dict:
    """The stronger row: by mAD where available (masks), else by I-AUROC."""
    key = "mAD" if all(r.get("mAD") is not None for r in rows) else "I-AUROC"
    return max(rows, key=lambda m: m[key])


#: Real public sets converted by benchmarks/real_datasets.py (dpdiff.data.public_sets): name -> categories.
REAL_SETS = {
    "elpv": ["mono", "poly"],
    "elpv_units": ["mono", "poly"],
    "bsdata": ["ball_screw"],
    "kolektorsdd": ["commutator"],
}


def _dataset_spec(name: str, out: Path, cfg: Config, args) -> tuple[Path, list[str]]:
    if name == "mtd":
        root = Path(args.mtd) if args.mtd else shared_data_dir() / "mtd"
        if not root.is_dir():
            raise FileNotFoundError(f"MTD not found at {root}: set DPDIFF_SHARED_DATA or pass --mtd")
        return root, ["magnetic_tile"]
    if name in REAL_SETS:
        root = Path(args.real_data) / name
        if not (root / "done.json").is_file():
            raise FileNotFoundError(
                f"{name} not converted at {root}: run `python benchmarks/real_datasets.py {name} --output {root}`"
            )
        return root, REAL_SETS[name]
    root = out / "synthetic_data"
    n = args.synthetic_categories
    cats = ensure_synthetic_dataset(
        root,
        n,
        train_per_category=args.synthetic_train,
        test_good_per_category=args.synthetic_test_good,
        test_defect_per_category=args.synthetic_test_defect,
        image_size=cfg.backbone.image_size,
        seed=0,
    )
    return root, cats[:n]


#: ``--rows short``: the inference rows kept (the t sweep of the shipped estimator).
SHORT_ROWS = (
    "pair, 1 DDIM, t=25",
    "pair, 1 DDIM, t=50",
    "pair, 1 DDIM, t=100",
    "reconstruction alone (no token bank, no image Gaussian)",
    "token bank, no image Gaussian",
)


def run_dataset(
    bench: Bench, preset: Config, extra_trainings: bool, only: set[str] | None = None, short: bool = False
) -> dict:
    rows: dict[str, dict] = {}
    main_run = bench.trained("preset", {})
    shipped = inference_settings(preset)
    weights = bench.weights_digest(main_run)
    key = shipped | {"weights": weights}  # a row's cache key: its inference settings and the weights it scored
    dp = bench.cached("dpdiff (shipped preset)", lambda: bench.dpdiff_row(main_run, shipped), key)
    rows["dpdiff (shipped preset)"] = dp
    # first what is cheap and says most (the brightness diagnostic, the beyond-the-paper scores), then the banks
    diagnostics = bench.cached(
        "diagnostic: image score vs brightness", lambda: bench.intensity_diagnostic(main_run, shipped), key
    )
    _add_beyond_paper_rows(rows, bench, main_run, shipped, key)
    knn = _add_knn_rows(rows, bench, dp)
    for name, inf in INFERENCE_ROWS.items():
        if short and name not in SHORT_ROWS:
            continue
        inf = shipped | inf  # the shipped scoring with these settings (the token bank and image Gaussian included)
        rows[f"dpdiff/{name}"] = bench.cached(
            f"dpdiff/{name}", lambda inf=inf: bench.dpdiff_row(main_run, inf), inf | {"weights": weights}
        )
    rows["dpdiff/swap: category-mean training prototypes (leakage check)"] = bench.cached(
        "dpdiff/swap_category_mean_prototypes", lambda: bench.swap_row(main_run, shipped), key
    )
    _add_former_preset_rows(rows, bench, shipped)
    if extra_trainings:
        _add_training_rows(rows, bench, shipped, only)
    return {
        "dpdiff": dp,
        "knn": knn,
        "rows": rows,
        "intensity_diagnostic": diagnostics,
        "protocol": {
            "data": str(bench.root),
            "categories": len(bench.categories),
            "train_images": len(bench.train_samples),
            "test_images": len(bench.test_samples),
            "train_steps": bench.cfg.train.steps,
            "preset": PRESET,
            "torch_threads": torch.get_num_threads(),
            "images_per_s": "test images / (scoring time + images x backbone time per image)",
        },
    }


def _add_beyond_paper_rows(rows: dict[str, dict], bench: Bench, main_run: Path, shipped: dict, key: dict) -> None:
    """The preset model with scores beyond the paper (image-level Gaussian, token bank) and under other runtimes
    (bf16 autocast, end to end from the files)."""
    glob = bench.cached("global: image-level Gaussian + dpdiff", lambda: bench.global_row(main_run, shipped), key)
    rows["global+dpdiff: image-level Gaussian of the mean token added to the image score (beyond the paper)"] = glob
    rows["global alone: image-level Gaussian of the mean token (image metrics only)"] = glob["parts"]["global alone"]
    hybrid = bench.cached(
        "hybrid: inference.knn_weight=1 (token bank, beyond the paper)",
        lambda: bench.hybrid_row(main_run, shipped),
        key,
    )
    rows["hybrid: inference.knn_weight=1, token bank z-scored on held-out training images (beyond the paper)"] = hybrid
    rows["knn/token bank of inference.knn_weight alone (coreset of half the training images)"] = hybrid["parts"][
        "bank alone"
    ]
    for name, runtime in RUNTIME_ROWS.items():
        rows[f"dpdiff/{name}"] = bench.cached(
            f"dpdiff/{name}", lambda r=runtime: bench.dpdiff_row(main_run, shipped, r), key | runtime
        )
    for name, runtime in END_TO_END_ROWS.items():
        rows[f"dpdiff/{name}"] = bench.cached(
            f"dpdiff/{name}", lambda r=runtime: bench.end_to_end_row(main_run, shipped, r), key | runtime
        )


def _add_former_preset_rows(rows: dict[str, dict], bench: Bench, shipped: dict) -> None:
    """The 0.2 preset as it shipped (its training and inference), and its training with today's inference."""
    run = bench.trained(FORMER_PRESET, FORMER_TRAINING)
    weights = {"weights": bench.weights_digest(run)}
    former = shipped | FORMER_INFERENCE
    rows["former preset (0.2): every token, 3000 steps; t=50, no token bank, no image Gaussian"] = bench.cached(
        "former preset as shipped", lambda: bench.dpdiff_row(run, former), former | weights
    )
    rows["train:former preset's training (every token, 3000 steps), shipped inference"] = bench.cached(
        "former preset training, shipped inference", lambda: bench.dpdiff_row(run, shipped), shipped | weights
    )


def _add_knn_rows(rows: dict[str, dict], bench: Bench, dp: dict) -> dict:
    """The full kNN banks (raw and standardised) and a coreset of the stronger one whose scoring time per image
    matches the shipped DPDiff-AD's ``dp``; returns the stronger full bank's row."""
    raw = bench.cached("knn/raw", lambda: bench.knn_row(False))
    std = bench.cached("knn/standardized", lambda: bench.knn_row(True))
    rows["knn/raw (full bank)"], rows["knn/standardized (full bank)"] = raw, std
    knn = _best([raw, std])
    # coreset sized so that kNN scoring costs about what the shipped DPDiff-AD costs per image
    frac = float(np.clip(dp["scoring_s_per_image"] / max(knn["scoring_s_per_image"], 1e-9), 0.01, 1.0))
    frac = round(frac, 3)
    rows[f"knn/coreset {frac:g} (time-matched)"] = bench.cached(
        f"knn/coreset_{frac:g}_{'std' if knn is std else 'raw'}", lambda: bench.knn_row(knn is std, frac)
    )
    return knn


def _add_training_rows(rows: dict[str, dict], bench: Bench, shipped: dict, only: set[str] | None) -> None:
    """The other trainings of :data:`TRAINING_ROWS` (those in ``only``, run-folder names; None: all), scored with the
    shipped inference settings."""
    for name, overrides in TRAINING_ROWS.items():
        if only is not None and slug(name) not in only:
            continue
        run = bench.trained(name, overrides)
        rows[f"train:{name}"] = bench.cached(
            f"train:{name}",
            lambda run=run: bench.dpdiff_row(run, shipped),
            shipped | {"weights": bench.weights_digest(run)},
        )


def _diagnostic_lines(diag: dict) -> list[str]:
    """The brightness diagnostic as a Markdown table (rows: categories)."""
    cols = [
        "darkness_I-AUROC",
        "dpdiff_I-AUROC",
        "knn_coreset_I-AUROC",
        "rho_dpdiff_all",
        "rho_dpdiff_normal",
        "rho_knn_coreset_all",
        "rho_knn_coreset_normal",
        "mean_grey_normal",
        "mean_grey_defective",
    ]
    lines = [
        "Image score vs brightness (Spearman rho with the mean grey level; I-AUROC of darkness alone):",
        "",
        "| category | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for cat, d in diag.items():
        lines.append(f"| {cat} | " + " | ".join(f"{d[c]:.3f}" for c in cols) + " |")
    return lines + [""]


def frontier_points(summary: dict) -> list[dict]:
    """Accuracy against training minutes (2 CPU cores): every trained DPDiff-AD row (the shipped preset and the
    ``train:`` rows) and the kNN banks at 0 minutes, per dataset."""
    points = []
    for ds, r in summary.items():
        for name, m in r["rows"].items():  # holds the shipped preset's row too
            if name.startswith("knn/"):
                minutes = 0.0
            elif (name == "dpdiff (shipped preset)" or name.startswith("train:")) and m.get("train_s"):
                minutes = float(m["train_s"]) / 60.0
            else:
                continue
            points.append(
                {
                    "dataset": ds,
                    "row": name,
                    "train_minutes": round(minutes, 2),
                    "I-AUROC": m["I-AUROC"],
                    "P-AUROC": m["P-AUROC"],
                    "images_per_s": m.get("images_per_s"),
                }
            )
    return points


def write_frontier(summary: dict, folder: Path) -> None:
    """``frontier.{json,csv,png}``: :func:`frontier_points` as a table and one plot per dataset."""
    import csv
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = frontier_points(summary)
    atomic_write_json(folder / "frontier.json", points)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(points[0]) if points else ["dataset"], lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("\u2014" if v is None else v) for k, v in p.items()} for p in points)
    atomic_write_text(folder / "frontier.csv", buf.getvalue())
    sets = list(summary)
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 3.6), squeeze=False)
    for ax, ds in zip(axes[0], sets, strict=True):
        mine = [p for p in points if p["dataset"] == ds]
        for p in (p for p in mine if not p["row"].startswith("knn/")):
            ax.scatter(p["train_minutes"], 100 * p["I-AUROC"], c="C0")
            label = p["row"].replace("train:", "").replace("dpdiff (shipped preset)", "shipped")[:30]
            ax.annotate(
                label, (p["train_minutes"], 100 * p["I-AUROC"]), fontsize=6, xytext=(3, 2), textcoords="offset points"
            )
        for i, p in enumerate(p for p in mine if p["row"].startswith("knn/")):  # no training: a level to reach
            ax.axhline(100 * p["I-AUROC"], color=f"C{1 + i}", ls="--", lw=0.9, label=p["row"][4:34])
        ax.legend(fontsize=6, loc="best", framealpha=0.6)  # never over a training dot if avoidable
        ax.set_title(ds)
        ax.set_xlim(left=0)  # the banks train for 0 minutes
        ax.set_xlabel("training minutes (2 CPU cores)")
        ax.set_ylabel("I-AUROC (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("DPDiff-AD trainings (dots) vs kNN banks (dashed: no training)", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "frontier.png", dpi=110)
    plt.close(fig)


def write_summary(summary: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "summary.json", summary)
    write_frontier(summary, folder)
    lines = [
        "# Accuracy: DPDiff-AD (shipped `lite0_cpu` preset) vs kNN on the same tokens",
        "",
        "The shipped preset (0.3): masked-token training, t=25, the token bank (`inference.knn_weight=1`) and the "
        "image Gaussian (`inference.image_gaussian_weight=0.5`), both beyond the paper. Rows named dpdiff/...: the "
        "shipped model with the shipped scoring and the settings named (bank and Gaussian on unless the name says "
        "otherwise). Rows marked (earlier run) were not re-measured in the latest run; those named dpdiff/... or "
        "train:... among them were measured on the preset of their time (before 0.3: every token for 3000 steps, "
        "t=50, no token bank and no image Gaussian; its row is 'former preset (0.2)').",
        "",
    ]
    for ds, r in summary.items():
        p = r["protocol"]
        lines += [
            f"## {ds} ({p['categories']} categories, {p['train_images']} train / {p['test_images']} test "
            f"images, {p['train_steps']} steps)",
            "",
            "| row | " + " | ".join(COLUMNS) + " | img/s |",
            "|---|" + "---:|" * (len(COLUMNS) + 1),
        ]
        for name, m in [("**dpdiff** (shipped)", r["dpdiff"]), ("**knn** (stronger)", r["knn"])] + list(
            r["rows"].items()
        ):
            mark = " (earlier run)" if m.get("carried_from_earlier_run") else ""
            lines.append(
                f"| {name}{mark} | "
                + " | ".join(pct(m[k]) for k in COLUMNS)
                + f" | {m.get('images_per_s', float('nan')):.1f} |"
            )
        lines.append("")
        if r.get("intensity_diagnostic"):
            lines += _diagnostic_lines(r["intensity_diagnostic"])
    atomic_write_text(folder / "summary.md", "\n".join(lines))


def _carry_rows(previous: dict | None, fresh: dict) -> dict:
    """``fresh`` plus the rows of an earlier run of this dataset that this run did not score (e.g. a training row
    left out of ``--trainings``), each marked ``carried_from_earlier_run`` so the summary says which numbers
    were not re-measured."""
    for name, row in (previous or {}).get("rows", {}).items():
        if name not in fresh["rows"] and isinstance(row, dict):
            fresh["rows"][name] = {**row, "carried_from_earlier_run": True}
    return fresh


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=str(ROOT / "runs" / "accuracy"))
    ap.add_argument("--datasets", default="mtd,synthetic")
    ap.add_argument("--mtd", default=None, help="MTD root (default: $DPDIFF_SHARED_DATA/mtd)")
    ap.add_argument(
        "--real-data",
        default=str(ROOT / "runs" / "real_data"),
        help="folder of the converted public sets (benchmarks/real_datasets.py), one sub-folder each",
    )
    ap.add_argument("--synthetic-categories", type=int, default=20)
    ap.add_argument("--synthetic-train", type=int, default=32)
    ap.add_argument("--synthetic-test-good", type=int, default=8)
    ap.add_argument("--synthetic-test-defect", type=int, default=16)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    ap.add_argument("--no-extra-trainings", action="store_true", help="train the preset only")
    ap.add_argument(
        "--rows",
        choices=("full", "short"),
        default="full",
        help="inference rows: every variant of INFERENCE_ROWS (full) or SHORT_ROWS (the t sweep of the shipped scoring "
        "and the reconstruction with and without the token bank)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 synthetic categories, 30 steps")
    ap.add_argument("--results", default=None, help="summary folder (default benchmarks/results/accuracy)")
    ap.add_argument(
        "--trainings",
        default=None,
        help="comma-separated extra trainings to run (their run-folder names, e.g. "
        "no_full_rank_skip__projected_error_fallback), or 'all' (every row of TRAINING_ROWS); default: "
        + ",".join(DEFAULT_TRAININGS)
        + " (the comparison behind the preset's choice; the others are opt-in to keep the run near 2 h)",
    )
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.quick:
        args.synthetic_categories, args.synthetic_train, args.steps = 3, 8, args.steps or 30
        args.synthetic_test_good, args.synthetic_test_defect = 4, 8
    preset = load_config(PRESET)
    out = Path(args.output)
    results = Path(args.results) if args.results else (out / "summary" if args.quick else RESULTS)
    summary_path = results / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() and not args.quick else {}
    torch.manual_seed(0)
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for name in names:
        if name not in ("mtd", "synthetic", *REAL_SETS):
            raise SystemExit(f"--datasets: unknown dataset {name!r} (mtd, synthetic, {', '.join(REAL_SETS)})")
    # first the preset and its rows on every dataset, then the extra trainings: a run stopped by its
    # time budget has the headline numbers of both datasets
    for extra in (False, True) if not args.no_extra_trainings else (False,):
        for name in names:
            ds_out = out / name
            root, cats = _dataset_spec(name, ds_out, preset, args)
            bench = Bench(name, root, cats, preset, ds_out, args.steps)
            chosen = args.trainings or ",".join(DEFAULT_TRAININGS)
            only = None if chosen == "all" else {t.strip() for t in chosen.split(",") if t.strip()}
            fresh = run_dataset(bench, preset, extra, only, short=args.rows == "short")
            summary[name] = _carry_rows(summary.get(name), fresh)
            write_summary(summary, results)  # after each dataset: a stopped run keeps what it finished
            log.info("wrote %s", results / "summary.json")
    print((results / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
