"""``dpdiff predict``, ``export`` and ``serve``: put a trained run to work on new images.

``dpdiff serve model.onnx`` imports no torch: its arguments and :func:`cmd_serve` import only the service."""

from __future__ import annotations

import argparse
from pathlib import Path

from dpdiff.cli.common import is_worker_rank
from dpdiff.cli.parser import DEVICE_HELP, WEIGHTS_HELP, Command, add_shared_options
from dpdiff.utils.errors import UsageError


def cmd_predict(args) -> int:
    if is_worker_rank():
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


def cmd_export(args) -> int:
    from dpdiff.inference.detector import Detector
    from dpdiff.inference.export import export_onnx

    if Path(args.run).suffix.lower() == ".onnx":
        raise UsageError(f"{args.run} is already an ONNX model; pass the run folder it was exported from")
    detector = Detector.load(Path(args.run), weights=args.weights, device="cpu")
    if args.format == "openvino":
        from dpdiff.inference.openvino_runtime import export_openvino

        summary = export_openvino(
            detector, Path(args.output), overwrite=args.overwrite, verify=not args.no_verify, quantize=args.quantize
        )
    else:
        summary = export_onnx(
            detector,
            Path(args.output),
            opset=args.opset,
            overwrite=args.overwrite,
            verify=not args.no_verify,
            quantize=args.quantize,
        )
    size = summary["image_size"]  # one int (a square) or [height, width]
    h, w = (size, size) if isinstance(size, int) else size
    print(
        f"exported {summary['file']} ({summary['bytes'] / 1e6:.1f} MB, opset {summary['opset']}, input "
        f"(batch, 3, {h}, {w}), quantization {summary['quantization']})"
    )
    if "max_abs_map_diff" in summary:
        print(
            f"onnxruntime vs PyTorch: max |map difference| {summary['max_abs_map_diff']:.2e}, max relative score "
            f"difference {summary['max_rel_score_diff']:.2e}"
        )
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


def add_predict_arguments(r: argparse.ArgumentParser) -> None:
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
    add_shared_options(r)
    r.set_defaults(func=cmd_predict)


def add_export_arguments(x: argparse.ArgumentParser) -> None:
    from dpdiff.choices import EXPORT_FORMATS, QUANTIZE_CHOICES

    x.add_argument("run", help="run folder written by `dpdiff train`")
    x.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="onnx",
        help="onnx (onnxruntime, CPU or CUDA) or openvino (OpenVINO IR .xml + .bin, CPU; needs the openvino package)",
    )
    x.add_argument("--output", "-o", required=True, help="the .onnx (or, with --format openvino, .xml) file to write")
    x.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17, default 17)")
    x.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-PyTorch check on two images")
    x.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default=None,
        help="INT8 dynamic quantisation of the matrix products (onnxruntime); an option: scores differ from "
        "the float model by the quantisation error (benchmarks/export_speed.py measures it)",
    )
    add_shared_options(x, device=False, overwrite_help="replace an existing file")
    x.set_defaults(func=cmd_export)


def add_serve_arguments(sv: argparse.ArgumentParser) -> None:
    sv.add_argument(
        "run",
        help="run folder written by `dpdiff train` (calibrated with `dpdiff calibrate` for "
        "decisions), or a model.onnx from `dpdiff export`",
    )
    sv.add_argument("--onnx", help="serve this `dpdiff export` of RUN with onnxruntime instead of PyTorch")
    sv.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; see docs/guides/export-and-serve.md for a "
        "reverse proxy)",
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
    sv.add_argument("--weights", help=WEIGHTS_HELP)
    sv.add_argument("--device", default=None, help=DEVICE_HELP)
    sv.set_defaults(func=cmd_serve)


PREDICT = Command(
    "predict",
    "score a folder of images: scores.csv (+ decisions and defect masks when calibrated) + overlay PNGs",
    add_predict_arguments,
)
EXPORT = Command(
    "export",
    "the whole scoring pipeline as one ONNX model (onnxruntime scores like PyTorch; thresholds in its metadata)",
    add_export_arguments,
)
SERVE = Command(
    "serve",
    "HTTP service + web page for line-side inspection: POST images, get scores, "
    "decisions and overlays (see docs/guides/export-and-serve.md, Serve)",
    add_serve_arguments,
)
