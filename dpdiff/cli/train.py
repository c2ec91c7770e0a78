"""``dpdiff train``: one unified model on the normal images of all categories; ``--resume`` continues a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from dpdiff.cli.common import config_from_args
from dpdiff.cli.parser import Command, add_common_options, format_choices
from dpdiff.utils.errors import UsageError


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


def _add_category_base(args):
    """``--init-from RUN``: RUN's own configuration (or ``--config``) with a quarter of its steps unless
    ``--set train.steps=N``; --data/--categories/--replay/--set apply on top (training/init_from.py)."""
    from dpdiff.cli.common import parse_overrides
    from dpdiff.config import load_config
    from dpdiff.training.init_from import add_category_config

    steps = parse_overrides(args.set).get("train.steps")
    given = load_config(args.config) if args.config else None
    return add_category_config(args.init_from, base=given, steps=steps)


def cmd_train(args) -> int:
    from dpdiff.training.distributed import env_world
    from dpdiff.workflows.train import train

    run, resume = _train_run_dir(args)
    base = None
    if resume and not args.config:
        # continue with the run's own configuration; --set/--data/--device still apply on top
        from dpdiff.model.checkpoint import STATE_FILE, resume_config

        rank = env_world()[0]
        if rank != 0 and not (run / STATE_FILE).is_file():
            raise FileNotFoundError(
                f"rank {rank}: {run / STATE_FILE} is not visible on this node; pass the run's "
                f"--config (only rank 0 needs the run folder)"
            )
        base = resume_config(run)
    elif getattr(args, "init_from", None):
        base = _add_category_base(args)
    cfg = config_from_args(args, base)
    run = train(cfg, run, overwrite=args.overwrite, resume=resume)
    if env_world()[0] == 0:
        from dpdiff.workflows.reporting import plot_training_curves

        plot_training_curves(run)
        print(f"checkpoint written to {run}")
    return 0


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    from dpdiff.training.loggers import LOGGERS

    add_common_options(t)
    t.add_argument("--data", help="dataset root (see --format)")
    t.add_argument(
        "--cache", action="store_true", help="use the on-disk feature cache ($DPDIFF_CACHE or ~/.cache/dpdiff)"
    )
    t.add_argument("--cache-dir", help="use the feature cache in this folder")
    t.add_argument(
        "--format",
        choices=format_choices(),
        help="dataset layout (default: the config's data.format, mvtec); see docs/datasets.md",
    )
    t.add_argument("--categories", nargs="*", help="subset of categories (default: all)")
    t.add_argument("--weights", help="backbone checkpoint (DINOv2 official .pth or timm/HF .safetensors)")
    t.add_argument("--output", "-o", help="run folder for the checkpoint (required unless --resume RUN_DIR)")
    t.add_argument(
        "--logger",
        choices=LOGGERS,
        help="training curves beside loss_history.csv: tensorboard = event files in RUN/tensorboard "
        "(pip install tensorboard; `tensorboard --logdir RUN/tensorboard`) (train.logger)",
    )
    t.add_argument(
        "--init-from",
        metavar="RUN",
        help="add categories to the trained run RUN: start from its weights and train on --data/--categories "
        "(new categories only) mixed with a replay of RUN's images, for a quarter of its steps by default; "
        "writes a new run (--output) that knows the union (train.init_from; docs/guides/add-category.md)",
    )
    t.add_argument(
        "--replay",
        type=int,
        metavar="K",
        help="with --init-from: replay at most K training images per old category (default: all; "
        "train.replay); their share of every batch is train.replay_fraction (0.5)",
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


TRAIN = Command("train", "train one unified model on the normal images of all categories", add_train_arguments)
