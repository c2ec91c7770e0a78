"""The parts of the command line every verb shares: a verb's parser, built on first use, and the common options.

A verb is a :class:`Command`: its name, its one-line help (what ``dpdiff --help`` lists) and the function that
adds its arguments. That function runs only when the verb is parsed or its help is shown, so ``dpdiff --help``
and ``dpdiff serve model.onnx`` never import what another verb's options need (``dpdiff export``'s choices come
from a module that imports torch). The ``choices`` of an option are read from the module that defines them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: ``--weights`` of the verbs that load a trained run.
WEIGHTS_HELP = (
    "backbone checkpoint, when it is not where the run's config says (backbone.weights), e.g. the "
    "DINOv2 .pth/.safetensors the run was trained with"
)
#: ``--device`` of the verbs that say which devices they take.
DEVICE_HELP = "auto | cpu | cuda | cuda:N"


@dataclass(frozen=True)
class Command:
    """One verb: ``name``, its one-line ``help`` and ``add_arguments(parser)``, which adds its arguments and sets
    its ``func`` (called with the parsed arguments, returns the exit status)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]


class CommandParser(argparse.ArgumentParser):
    """The parser of one verb (the ``parser_class`` of the verbs' subparsers): its arguments, then the output
    options, are added on first use, i.e. when the verb is parsed or its help or usage is formatted."""

    def __init__(self, *, add_arguments: Callable[[argparse.ArgumentParser], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pending_arguments: Callable[[argparse.ArgumentParser], None] | None = add_arguments

    def complete(self) -> None:
        """Add the verb's arguments and the output options (once)."""
        add, self._pending_arguments = self._pending_arguments, None
        if add is not None:
            add(self)
            add_output_options(self, defaults=False)

    def parse_known_args(self, *args: Any, **kwargs: Any) -> Any:
        self.complete()
        return super().parse_known_args(*args, **kwargs)

    def parse_known_intermixed_args(self, *args: Any, **kwargs: Any) -> Any:
        self.complete()
        return super().parse_known_intermixed_args(*args, **kwargs)

    def format_usage(self) -> str:
        self.complete()
        return super().format_usage()

    def format_help(self) -> str:
        self.complete()
        return super().format_help()

    def get_default(self, dest: str) -> Any:
        self.complete()
        return super().get_default(dest)


def add_commands(parser: argparse.ArgumentParser, commands: tuple[Command, ...]) -> None:
    """The verbs' subparsers, in the order given (the order ``dpdiff --help`` lists them)."""
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for command in commands:
        sub.add_parser(command.name, help=command.help, add_arguments=command.add_arguments)


def add_output_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
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


def add_common_options(sp: argparse.ArgumentParser, config: bool = True) -> None:
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
    sp.add_argument("--device", default=None, help=DEVICE_HELP)
    sp.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def add_shared_options(
    p: argparse.ArgumentParser,
    *,
    device: bool = True,
    device_help: str | None = None,
    weights: bool = True,
    weights_help: str | None = WEIGHTS_HELP,
    overwrite_help: str | None = None,
) -> None:
    """The options most verbs share, in this order: ``--device``, ``--weights`` (backbone checkpoint),
    ``--overwrite``."""
    if device:
        p.add_argument("--device", default=None, help=device_help)
    if weights:
        p.add_argument("--weights", help=weights_help)
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)


def format_choices() -> list[str]:
    """The ``--format`` choices of a dataset: the readers of :data:`dpdiff.data.readers.FORMATS`, then ``auto``
    (detect the layout)."""
    from dpdiff.data.readers import AUTO, FORMATS

    return [*FORMATS, AUTO]
