"""The test-time choices of the 0.3 preset, on every real set (issue #21): the noise step t, the token bank
(``inference.knn_weight``) and the image Gaussian (``inference.image_gaussian_weight``), each combination scored on
the trained runs of ``benchmarks/accuracy.py`` (no training here)::

    python benchmarks/score_combinations.py --datasets mtd,kolektorsdd,bsdata,elpv,elpv_units,synthetic

For each dataset, each run (``preset``: the shipped training, masked tokens; ``former_preset__every_token__3000_steps``:
the 0.2 training) and each t in ``--noise-steps``: the reconstruction alone (w=0) and with the token bank (w=1)
give the maps and the image scores (I-AUROC, P-AUROC, AUPRO); the image Gaussian is then added to the image score
with weight 0.5 and 1 (``+g0.5``, ``+g1``; the maps are unchanged). The bank and the Gaussian's statistics are
built with the row's own t and bank weight, as ``dpdiff train`` builds them for its config. ``global alone``: the
Gaussian's distance as the image score.

Reads the runs and features under ``--output`` (``benchmarks/accuracy.py``'s), writes
``--results``/score_combinations.{json,md} after every row (resumable: rows already there are kept).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _accuracy_harness import PRESET, Bench
from _common import ROOT, pct
from accuracy import REAL_SETS, _dataset_spec
from sklearn.metrics import roc_auc_score

from dpdiff.config import load_config
from dpdiff.experiments.compare import dpdiff_score_features
from dpdiff.features import tokens_from_maps
from dpdiff.model.checkpoint import load_model
from dpdiff.scoring.image_gaussian import build_image_gaussian
from dpdiff.scoring.token_bank import build_token_bank
from dpdiff.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger("score_combinations")
RUNS = ("preset", "former_preset__every_token__3000_steps")
GAUSSIAN_WEIGHTS = (0.5, 1.0)


def _mean_auroc(bench: Bench, scores: np.ndarray) -> float:
    """I-AUROC, the mean over categories (as the accuracy summary)."""
    return float(
        np.mean([roc_auc_score(bench.labels[bench.cats == c], scores[bench.cats == c]) for c in bench.categories])
    )


def score_row(bench: Bench, run_dir: Path, t: int, w: float) -> dict:
    """The run at noise step ``t`` with token-bank weight ``w``; the image Gaussian's term added afterwards."""
    model, run_cfg, _ = load_model(run_dir, bench.device)
    cfg = run_cfg.override(
        {"inference.noise_step": t, "inference.knn_weight": w, "inference.image_gaussian_weight": 0.0}
    )
    detector = bench.detector(run_dir, bench.backbone, model, cfg)
    if w:
        detector.token_bank = build_token_bank(detector, bench.train_feats, seed=cfg.train.seed)
    gaussian = build_image_gaussian(detector, bench.train_feats)  # its statistics: this row's image scores
    maps, scores = (x.numpy() for x in dpdiff_score_features(detector, bench.test_feats))
    m = bench._metrics(maps, scores)
    row = {k: m.get(k) for k in ("I-AUROC", "P-AUROC", "P-AUPRO", "P-AP", "mAD")}
    row["per_category_I-AUROC"] = m["per_category_I-AUROC"]
    with torch.inference_mode():
        tokens = torch.cat(
            [
                tokens_from_maps(torch.as_tensor(bench.test_feats[i : i + 64]).float())
                for i in range(0, len(bench.test_feats), 64)
            ]
        )
        for gw in GAUSSIAN_WEIGHTS:
            row[f"+g{gw:g} I-AUROC"] = _mean_auroc(bench, gaussian.combine(torch.as_tensor(scores), tokens, gw).numpy())
    return row


def write_tables(results: dict, folder: Path) -> None:
    atomic_write_json(folder / "score_combinations.json", results)
    lines = [
        "# Test-time choices of the preset: noise step t, token bank (w), image Gaussian (+g)",
        "",
        "benchmarks/score_combinations.py; I-AUROC / P-AUROC in %; `preset` is the shipped training (masked "
        "tokens), `former` the 0.2 training (every token). The shipped inference is t=25, w=1, +g0.5.",
        "",
    ]
    for ds, rows in results.items():
        lines += [
            f"## {ds} (image Gaussian alone: I-AUROC {pct(rows.get('global alone', {}).get('I-AUROC'))})",
            "",
            "| run | t | w | I-AUROC | +g0.5 | +g1 | P-AUROC | AUPRO |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, r in rows.items():
            if key == "global alone":
                continue
            run, t, w = key.split("|")
            name = "preset" if run == "preset" else "former"
            lines.append(
                f"| {name} | {t[2:]} | {w[2:]} | {pct(r['I-AUROC'])} | {pct(r['+g0.5 I-AUROC'])} | "
                f"{pct(r['+g1 I-AUROC'])} | {pct(r['P-AUROC'])} | {pct(r['P-AUPRO'])} |"
            )
        lines.append("")
    atomic_write_text(folder / "score_combinations.md", "\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="mtd,kolektorsdd,bsdata,elpv,elpv_units,synthetic")
    ap.add_argument("--output", default=str(ROOT / "runs" / "accuracy"), help="benchmarks/accuracy.py's --output")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "accuracy"))
    ap.add_argument("--mtd", default=None)
    ap.add_argument("--real-data", default=str(ROOT / "runs" / "real_data"))
    ap.add_argument("--noise-steps", default="10,15,25,50")
    ap.add_argument("--synthetic-categories", type=int, default=20)
    ap.add_argument("--synthetic-train", type=int, default=32)
    ap.add_argument("--synthetic-test-good", type=int, default=8)
    ap.add_argument("--synthetic-test-defect", type=int, default=16)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    preset = load_config(PRESET)
    folder = Path(args.results)
    path = folder / "score_combinations.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    steps = [int(t) for t in args.noise_steps.split(",")]
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        if name not in ("mtd", "synthetic", *REAL_SETS):
            raise SystemExit(f"--datasets: unknown dataset {name!r}")
        ds_out = Path(args.output) / name
        root, cats = _dataset_spec(name, ds_out, preset, args)
        bench = Bench(name, root, cats, preset, ds_out, None)
        rows = results.setdefault(name, {})
        plain = bench.detector(ds_out, bench.backbone, *_plain(bench, ds_out))
        gaussian = build_image_gaussian(plain, bench.train_feats)
        with torch.inference_mode():
            tokens = torch.cat(
                [
                    tokens_from_maps(torch.as_tensor(bench.test_feats[i : i + 64]).float())
                    for i in range(0, len(bench.test_feats), 64)
                ]
            )
        rows["global alone"] = {"I-AUROC": _mean_auroc(bench, gaussian.distances(tokens).numpy())}
        for run in RUNS:
            run_dir = ds_out / "runs" / run
            if not (run_dir / "model.safetensors").is_file():
                log.warning("[%s] no run %s: skipped (train it with benchmarks/accuracy.py)", name, run)
                continue
            for t in steps:
                for w in (0.0, 1.0):
                    key = f"{run}|t={t}|w={w:g}"
                    if key in rows:
                        continue
                    t0 = time.perf_counter()
                    rows[key] = score_row(bench, run_dir, t, w)
                    log.info("[%s] %s: %s (%.0f s)", name, key, pct(rows[key]["I-AUROC"]), time.perf_counter() - t0)
                    write_tables(results, folder)
        write_tables(results, folder)
    print((folder / "score_combinations.md").read_text())
    return 0


def _plain(bench: Bench, ds_out: Path) -> tuple:
    """(model, config) of the preset run scored plainly: the Gaussian's distance alone does not use them, but
    :func:`build_image_gaussian` takes a detector."""
    model, run_cfg, _ = load_model(ds_out / "runs" / "preset", bench.device)
    return model, run_cfg.override({"inference.knn_weight": 0.0, "inference.image_gaussian_weight": 0.0})


if __name__ == "__main__":
    sys.exit(main())
