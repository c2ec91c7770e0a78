"""Token grid (issue #13): does the paper's finer token grid pay on a CPU? MTD (real, thin cracks) at 256 px with
Lite0 stages 2+3 resampled to a 16x16 grid (stride 16, the shipped preset) and to a 32x32 grid (stride 8, the
paper's 32x32 token count), everything else the shipped ``lite0_cpu`` preset.

    python benchmarks/token_grid.py                      # both grids, --steps 1000 each (resumable)
    python benchmarks/token_grid.py --steps 300          # a shorter budget

For each grid: one DPDiff-AD training of ``--steps`` steps (the same for both grids, so the rows compare the
grids at equal steps; the 3000-step preset row is in benchmarks/results/accuracy), scored with the preset's
inference; and a kNN memory bank on the same tokens built from every ``--knn-every``-th training image (a full
bank at stride 8 holds 780k tokens: hours of exact search on 2 cores), so both grids get the same bank images.
Reported: the 8 metric columns, training seconds per step, scoring images/s (backbone included). Writes
``benchmarks/results/token_grid.{json,md}``. Reuses the accuracy benchmark's ``Bench`` (_accuracy_harness.py: feature
cache, one training per folder, one JSON per row), so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from _accuracy_harness import COLUMNS, PRESET, Bench
from _common import RESULTS, ROOT, inference_settings

from dpdiff.config import load_config
from dpdiff.data import shared_data_dir
from dpdiff.model.checkpoint import read_run_config
from dpdiff.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger("token_grid")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=str(ROOT / "runs" / "token_grid"))
    ap.add_argument("--mtd", default=None, help="MTD root (default: $DPDIFF_SHARED_DATA/mtd)")
    ap.add_argument("--steps", type=int, default=1000, help="training steps for every grid (default 1000)")
    ap.add_argument("--strides", default="16,8", help="feature strides at 256 px (16: 16x16 tokens, 8: 32x32)")
    ap.add_argument("--results", default=str(RESULTS), help="folder for token_grid.{json,md}")
    ap.add_argument("--knn-every", type=int, default=16, help="kNN bank: every k-th training image (default 16)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    root = Path(args.mtd) if args.mtd else shared_data_dir() / "mtd"
    if not root.is_dir():
        raise SystemExit(f"MTD not found at {root}: set DPDIFF_SHARED_DATA or pass --mtd")
    preset = load_config(PRESET)
    shipped = inference_settings(preset)
    out = Path(args.output)
    torch.manual_seed(0)
    rows: dict[str, dict] = {}
    for stride in (int(s) for s in args.strides.split(",")):
        cfg = preset.override({"backbone.feature_stride": stride})
        grid = cfg.backbone.image_size // stride
        bench = Bench("mtd", root, ["magnetic_tile"], cfg, out / f"stride{stride}", args.steps)
        run = bench.trained("preset", {})
        _, payload = read_run_config(run)
        dp = bench.cached("dpdiff", lambda run=run, b=bench: b.dpdiff_row(run, shipped), shipped)
        dp["train_s_per_step"] = float(payload.get("train_s", float("nan"))) / args.steps
        rows[f"dpdiff, {grid}x{grid} tokens"] = dp
        rows[f"knn raw (1/{args.knn_every} of the images), {grid}x{grid} tokens"] = bench.cached(
            f"knn_every_{args.knn_every}", lambda b=bench: b.knn_row(False, 1.0, args.knn_every)
        )
    summary = {
        "data": str(root),
        "steps": args.steps,
        "preset": PRESET,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }
    results = Path(args.results)
    atomic_write_json(results / "token_grid.json", summary)
    lines = [
        f"# Token grid on MTD: 16x16 vs 32x32 tokens at 256 px ({args.steps} training steps each, "
        f"{torch.get_num_threads()} thread(s))",
        "",
        "| row | " + " | ".join(COLUMNS) + " | img/s | train s/step |",
        "|---|" + "---:|" * (len(COLUMNS) + 2),
    ]
    for name, m in rows.items():
        step = m.get("train_s_per_step")
        lines.append(
            f"| {name} | "
            + " | ".join(f"{100 * m[k]:.1f}" for k in COLUMNS)
            + f" | {m['images_per_s']:.1f} | {'' if step is None else f'{step:.2f}'} |"
        )
    atomic_write_text(results / "token_grid.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
