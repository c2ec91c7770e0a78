"""Run the paper's ablation grids (Sec. 5.6) on CPU with the Lite0 backbone, on the shared Magnetic Tile data
and on synthetic multi-category data, and collect the tables in ``benchmarks/results/ablations/``.

    .venv/bin/python benchmarks/ablations.py                      # Table 5, Fig. 6, seeds, ensemble, Table 9
    .venv/bin/python benchmarks/ablations.py --grids table5_modules fig6_noise_step --datasets synthetic
    .venv/bin/python benchmarks/ablations.py --grids fig5_prototypes --datasets synthetic --no-extras   # Fig. 5
    .venv/bin/python benchmarks/ablations.py --collect-only       # only copy finished tables

Every grid is ``dpdiff ablate --grid <grid> ... --cache`` (a packaged grid, dpdiff/configs/ablations/); grids
writing into the same output folder share trainings with equal settings (Fig. 6 left/right and the ensemble sweep
share one model; Table 9's DiT row is the Table 5 full model), and finished trainings and evaluations are reused,
so a rerun only does what is missing. Measured cost on 2 CPU cores (feature cache on): an MTD DiT training at 1000 steps
6-8 min (prototype-only rows 2-3 min), an MTD evaluation (582 images, 4 noise draws) ~1.5 min (16 draws ~5 min);
a synthetic training ~2 min, an evaluation (300 images) ~20 s. All default grids and extras: about 2 h.

Synthetic data: 10 categories of ``dpdiff.data.synthetic`` (the demo's four + six generated ones), 40 normal
training images, 10 good + 20 defective test images each, 128 px, seed 0, written once to
``runs/synth10`` in MVTec-AD layout. The grids' base preset is ``mtd_lite0`` (256 px); for the
128 px synthetic images the smoothing sigma and the pooling window are halved, as in
the ``scale_lite0`` preset.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DPDIFF_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results" / "ablations"
DEFAULT_GRIDS = [
    "table5_modules",
    "fig6_noise_step",
    "fig6_ddim_steps",
    "seed_spread",
    "ensemble_reduce",
    "table9_denoiser",
]

#: the synthetic data set: 10 categories of 128 px images, each with 40 normal training images and 10 normal and
#: 20 defective test images
SYNTH_IMAGES_PER_CATEGORY = dict(train_per_category=40, test_good_per_category=10, test_defect_per_category=20)
SYNTH_SETTINGS = dict(num_categories=10, image_size=128, seed=0, **SYNTH_IMAGES_PER_CATEGORY)
SYNTH_OVERRIDES = ["backbone.image_size=128", "inference.smoothing_sigma=2.0", "inference.pool_size=8"]


def dataset_arguments(name: str, synth_root: Path) -> tuple[list[str], list[str], Path]:
    """The ``dpdiff ablate`` data arguments, the ``--set`` overrides and the output folder of one dataset."""
    if name == "mtd":
        root = SHARED_DATA / "mtd"
        if not root.is_dir():
            raise SystemExit(f"MTD data not found at {root} (set DPDIFF_SHARED_DATA)")
        return ["--data", str(root), "--format", "mvtec"], [], ROOT / "runs" / "ablate_mtd"
    if name == "synthetic":
        from dpdiff.data.synthetic import ensure_synthetic_dataset

        # reuses the folder; refuses one made with other settings
        ensure_synthetic_dataset(synth_root, **SYNTH_SETTINGS)
        return ["--data", str(synth_root), "--format", "mvtec"], list(SYNTH_OVERRIDES), ROOT / "runs" / "ablate_synth"
    raise SystemExit(f"unknown dataset {name!r} (mtd | synthetic)")


#: Extra runs beyond the default grids: (dataset, grid, extra overrides, suffix of the output folder and tables).
EXTRAS = [
    # the whole Table 5 again with another training seed: is the order of the rows stable?
    ("synthetic", "table5_modules", ["train.seed=1"], "seed1"),
    # Fig. 6 (left) after 4x longer training: does the best noise step move up with a better-trained denoiser?
    ("synthetic", "fig6_noise_step", ["train.steps=4000"], "4k"),
]


def run_grid(dataset: str, grid: str, extra: list[str], suffix: str, synth_root: Path, collect_only: bool) -> None:
    data_args, overrides, output = dataset_arguments(dataset, synth_root)
    overrides = overrides + extra
    if suffix:
        output = output.with_name(f"{output.name}_{suffix}")
    if not collect_only:
        command = [
            sys.executable,
            "-m",
            "dpdiff.cli",
            "ablate",
            "--grid",
            grid,
            *data_args,
            "--output",
            str(output),
            "--cache",
            "--overwrite",
            *(["--set", *overrides] if overrides else []),
        ]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
    destination = RESULTS / dataset
    destination.mkdir(parents=True, exist_ok=True)
    for ext in ("md", "csv", "json", "png"):
        table = output / f"{grid}.{ext}"
        if table.is_file():
            shutil.copyfile(table, destination / (f"{grid}_{suffix}.{ext}" if suffix else table.name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--grids", nargs="+", default=DEFAULT_GRIDS, help="packaged grid names (dpdiff/configs/ablations/)"
    )
    parser.add_argument("--datasets", nargs="+", default=["mtd", "synthetic"], help="mtd | synthetic")
    parser.add_argument("--no-extras", action="store_true", help="skip the EXTRAS runs (seed replicate, long training)")
    parser.add_argument("--synthetic-root", type=Path, default=ROOT / "runs" / "synth10")
    parser.add_argument("--collect-only", action="store_true", help="only copy the finished tables")
    args = parser.parse_args(argv)
    for dataset in args.datasets:
        for grid in args.grids:
            run_grid(dataset, grid, [], "", args.synthetic_root, args.collect_only)
    if not args.no_extras:
        for dataset, grid, extra, suffix in EXTRAS:
            if dataset in args.datasets:
                run_grid(dataset, grid, extra, suffix, args.synthetic_root, args.collect_only)
    print(f"tables in {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
