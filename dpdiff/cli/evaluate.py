"""``dpdiff test``, ``report`` and ``calibrate``: measure a trained run on labelled or held-out images."""

from __future__ import annotations

import argparse
from pathlib import Path

from dpdiff.cli.common import is_worker_rank, parse_overrides, print_table
from dpdiff.cli.parser import WEIGHTS_HELP, Command, add_shared_options, format_choices
from dpdiff.utils.errors import UsageError


def cmd_test(args) -> int:
    if is_worker_rank():
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
        inference_overrides=parse_overrides(args.set),
        data_format=args.format,
        report=not args.no_report,
        weights=args.weights,
    )
    print_table(result)
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


def add_test_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("run", help="run folder written by `dpdiff train`")
    e.add_argument("--data", help="dataset root (default: the one used for training)")
    e.add_argument("--format", choices=format_choices(), help="dataset layout (default: the one used for training)")
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
    add_shared_options(e)
    e.add_argument(
        "--no-report",
        action="store_true",
        help="skip the HTML report (its data is still saved; build it later with `dpdiff report`)",
    )
    e.set_defaults(func=cmd_test)


def add_report_arguments(rp: argparse.ArgumentParser) -> None:
    rp.add_argument("run", help="run folder written by `dpdiff train`, evaluated by `dpdiff test`")
    rp.add_argument("--eval", help="evaluation folder (default RUN/eval)")
    rp.add_argument("--output", "-o", help="HTML file (default EVAL/report.html; PNGs in <stem>_files/)")
    rp.add_argument("--data", help="dataset root, when the test images moved since `dpdiff test`")
    add_shared_options(rp, overwrite_help="replace an existing report")
    rp.set_defaults(func=cmd_report)


def add_calibrate_arguments(c: argparse.ArgumentParser) -> None:
    from dpdiff.inference.calibration import DEFAULT_PIXEL_FPR

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
    c.add_argument("--weights", help=WEIGHTS_HELP)
    c.add_argument("--device", default=None)
    c.set_defaults(func=cmd_calibrate)


TEST = Command("test", "evaluate a run on the test split: metrics, tables, overlays", add_test_arguments)
REPORT = Command(
    "report",
    "one self-contained HTML report of an evaluated run (metrics, worst false "
    "positives/negatives, prototype maps, t-SNE, loss curves)",
    add_report_arguments,
)
CALIBRATE = Command(
    "calibrate",
    "decision thresholds from held-out normal images at a target false-alarm "
    "rate (or F1-optimal on a labelled set) -> RUN/calibration.json",
    add_calibrate_arguments,
)
