"""Command-line interface: dpdiff train | test | report | predict | calibrate | export | demo | benchmark | scale |
serve."""

# The verbs live by group: train.py (train), evaluate.py (test, report, calibrate), deploy.py (predict, export,
# serve), protocols.py (demo, table, benchmark, ablate, scale); parser.py holds the options they share and
# common.py the one mapping from parsed options to config overrides. This module builds the parser and runs
# a command. Heavy imports (torch, the workflows) happen inside the verbs' functions only.

from __future__ import annotations

import argparse
import logging
import sys

from dpdiff.cli.common import config_from_args, config_overrides, parse_overrides
from dpdiff.cli.deploy import EXPORT, PREDICT, SERVE, cmd_export, cmd_predict, cmd_serve
from dpdiff.cli.evaluate import CALIBRATE, REPORT, TEST, cmd_calibrate, cmd_report, cmd_test
from dpdiff.cli.parser import Command, add_commands, add_output_options, format_choices
from dpdiff.cli.protocols import (
    ABLATE,
    BENCHMARK,
    DEMO,
    SCALE,
    TABLE,
    cmd_ablate,
    cmd_benchmark,
    cmd_demo,
    cmd_scale,
    cmd_table,
)
from dpdiff.cli.train import TRAIN, cmd_train
from dpdiff.utils.errors import DpdiffError

#: What ``main`` reports as ``dpdiff: error: ...`` with exit status 2: the user's input is wrong (DpdiffError,
#: e.g. a bad config value, a dataset folder missing pieces, a corrupt checkpoint) or the system refused a file
#: operation (OSError: missing/existing file, permission, disk full). Anything else is a bug: it propagates
#: with its traceback.
USER_ERRORS = (DpdiffError, OSError)

#: The verbs, in the order ``dpdiff --help`` lists them.
COMMANDS: tuple[Command, ...] = (
    TRAIN,
    TEST,
    REPORT,
    PREDICT,
    CALIBRATE,
    EXPORT,
    DEMO,
    TABLE,
    BENCHMARK,
    ABLATE,
    SCALE,
    SERVE,
)


def __getattr__(name: str) -> list[str]:
    if name == "FORMAT_CHOICES":  # the dataset --format choices, read (from dpdiff.data) when asked for
        return format_choices()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``dpdiff``; a verb's own arguments are added when that verb is parsed (or its help shown)."""
    p = argparse.ArgumentParser(prog="dpdiff", description=__doc__)
    add_output_options(p, defaults=True)
    add_commands(p, COMMANDS)
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


__all__ = [
    "COMMANDS",
    "FORMAT_CHOICES",
    "USER_ERRORS",
    "build_parser",
    "cmd_ablate",
    "cmd_benchmark",
    "cmd_calibrate",
    "cmd_demo",
    "cmd_export",
    "cmd_predict",
    "cmd_report",
    "cmd_scale",
    "cmd_serve",
    "cmd_table",
    "cmd_test",
    "cmd_train",
    "config_from_args",
    "config_overrides",
    "configure_output",
    "main",
    "parse_overrides",
]
