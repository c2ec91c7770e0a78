"""Command-line interface: dpdiff train | test | predict | demo."""
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
    cfg = Config.from_yaml(args.config) if args.config else Config()
    overrides = _parse_overrides(args.set)
    if getattr(args, "data", None):
        overrides["data.root"] = str(args.data)
    if getattr(args, "categories", None):
        overrides["data.categories"] = args.categories
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


def cmd_train(args) -> int:
    from .engine.train import train
    cfg = _load_config(args)
    run = train(cfg, Path(args.output), overwrite=args.overwrite, resume=args.resume)
    print(f"checkpoint written to {run}")
    return 0


def cmd_test(args) -> int:
    from .engine.evaluate import evaluate
    result = evaluate(Path(args.run), data_root=args.data, categories=args.categories,
                      output_dir=Path(args.output) if args.output else None, device=args.device or "auto",
                      overwrite=args.overwrite, overlays_per_category=args.overlays,
                      inference_overrides=_parse_overrides(args.set))
    _print_table(result)
    print(f"results written to {result['output_dir']} (results.json/.csv/.md, image_scores.csv, overlays/)")
    return 0


def cmd_predict(args) -> int:
    from .engine.predict import predict
    path = predict(Path(args.run), Path(args.images), Path(args.output), device=args.device or "auto",
                   overlays=not args.no_overlays, overwrite=args.overwrite)
    print(f"scores written to {path}")
    return 0


def cmd_demo(args) -> int:
    from .engine.demo import demo_config, run_demo
    cfg = _load_config(args) if (args.config or args.set) else demo_config()
    result = run_demo(Path(args.output), cfg, num_categories=args.categories_count, overwrite=args.overwrite)
    _print_table(result)
    print(f"\n[demo] image AUROC (mean over categories): {result['mean']['I-AUROC']:.4f}")
    print(f"[demo] results: {result['output_dir']}/results.md, overlays: {result['output_dir']}/overlays/")
    return 0


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
    t.add_argument("--data", help="dataset root (MVTec layout: <cat>/train/good ...)")
    t.add_argument("--categories", nargs="*", help="subset of categories (default: all)")
    t.add_argument("--weights", help="backbone checkpoint (DINOv2 official .pth or timm/HF .safetensors)")
    t.add_argument("--output", "-o", required=True, help="run folder for the checkpoint")
    t.add_argument("--resume", action="store_true", help="continue the run in --output")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("test", help="evaluate a run on the test split: metrics, tables, overlays")
    e.add_argument("run", help="run folder written by `dpdiff train`")
    e.add_argument("--data", help="dataset root (default: the one used for training)")
    e.add_argument("--categories", nargs="*")
    e.add_argument("--output", "-o", help="results folder (default RUN/eval)")
    e.add_argument("--overlays", type=int, default=4, help="overlay PNGs per category")
    e.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="inference overrides, e.g. noise_step=100 ddim_steps=3")
    e.add_argument("--device", default=None)
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=cmd_test)

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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as e:
        print(f"dpdiff {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

