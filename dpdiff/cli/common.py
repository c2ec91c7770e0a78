"""What the verbs' functions share: the one mapping from parsed options to config overrides, the configuration
it gives, the results table and the torchrun rank test."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from dpdiff.utils.errors import UsageError

if TYPE_CHECKING:
    from dpdiff.config import Config


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE ...`` as {key: YAML value}."""
    import yaml

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UsageError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides of a verb's parsed options: ``--set`` first, then the options that map to config
    keys (a verb without one of them, or given none, leaves its key alone), in this order: ``--data``
    (data.root), ``--format`` (data.format), ``--categories`` (data.categories), ``--cache``/``--cache-dir``
    (train.feature_cache, train.cache_dir), ``--weights`` (backbone.weights), ``--device`` (train.device),
    ``--logger`` (train.logger), ``--init-from`` (train.init_from), ``--replay`` (train.replay). ``dpdiff ablate``
    lists them in this order."""
    overrides = parse_overrides(getattr(args, "set", None))
    _copy_options(args, _DATA_OPTIONS, overrides)
    if getattr(args, "cache", False) or getattr(args, "cache_dir", None):
        overrides["train.feature_cache"] = True
    _copy_options(args, _RUN_OPTIONS, overrides)
    return overrides


#: (option, config key, conversion) of the options that map to one config key, in the order they are applied
_DATA_OPTIONS = (("data", "data.root", str), ("format", "data.format", None), ("categories", "data.categories", None))
_RUN_OPTIONS = (
    ("cache_dir", "train.cache_dir", str),
    ("weights", "backbone.weights", str),
    ("device", "train.device", None),
    ("logger", "train.logger", None),
    ("init_from", "train.init_from", str),
    ("replay", "train.replay", None),
)


def _copy_options(args: argparse.Namespace, options: tuple, overrides: dict[str, Any]) -> None:
    for option, key, convert in options:
        value = getattr(args, option, None)
        if value:
            overrides[key] = convert(value) if convert else value


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """``base`` (default: ``--config``, a packaged preset name or a YAML path, else the Config defaults) with
    :func:`config_overrides` on top; validated here, before any data or backbone is touched."""
    from dpdiff.config import Config, load_config

    cfg = base if base is not None else load_config(args.config) if args.config else Config()
    overrides = config_overrides(args)
    return cfg.override(overrides) if overrides else cfg


def print_table(result: dict) -> None:
    """The per-category metrics of an evaluation, and their mean, as a Markdown table."""
    from dpdiff.metrics.tables import format_table_markdown

    rows = dict(result["per_category"])
    rows["mean"] = result["mean"]
    print(format_table_markdown(rows))


def is_worker_rank() -> bool:
    """True in a torchrun process other than rank 0: evaluation and prediction run on rank 0 only."""
    from dpdiff.training.distributed import env_world

    return env_world()[0] != 0
