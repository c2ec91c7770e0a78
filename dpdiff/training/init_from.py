"""Add categories to a trained run without starting over (``train.init_from``, ``dpdiff train --init-from RUN``).

A new run starts from RUN's served weights (``model.safetensors``: the EMA weights when RUN kept an EMA) and trains
on the new categories' normal images mixed with a replay of RUN's own training images, ``train.replay_fraction`` of
every batch (``Trainer._draw_batch``). Its training images are the new categories' (minus their calibration
hold-out) plus the replay; its held-out images are the new categories' plus exactly those RUN held out, so an old
category's held-out images stay unseen. The result is a new run folder whose recorded categories are the union,
calibrated on that union by ``dpdiff.workflows.train.train``; RUN is only read.

What is fitted on the training set and what is kept (checked in ``dpdiff/model``):

* the prototypes are per image (Eq. 10: learnable queries cross-attending to the image's own tokens), so nothing
  category-specific is added: the new categories are learnt by the same weights;
* the token statistics (``DPDiffAD.token_mean``/``token_std``, the per-channel z-score of ``model.standardize_tokens``)
  are RUN's, kept on purpose: they are a fixed input transform the weights were trained against, and refitting them
  on the union would move every old category's inputs (a forgetting of its own) before the first step;
* the token bank (``inference.knn_weight``), the image Gaussian (``inference.image_gaussian_weight``) and the
  calibration thresholds are rebuilt on the union by ``train``.

This module reads RUN (:func:`init_source`), refuses what cannot continue it (:func:`check_compatible`: another
backbone or model shape), loads its weights (:func:`load_init_weights`) and gives the configuration of an add run
(:func:`add_category_config`). The samples of the union are ``dpdiff.training.inputs.split_samples``'s.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpdiff.config import LOCATION, Config, flatten_config, keys_with_role
from dpdiff.model.checkpoint import CONFIG_FILE, MODEL_FILE, describe_differences, load_model, read_run_config
from dpdiff.model.dpdiff_ad import DPDiffAD
from dpdiff.utils.errors import CheckpointError, ConfigError, UsageError

__all__ = [
    "ADD_STEPS_DIVISOR",
    "InitSource",
    "init_source",
    "check_compatible",
    "check_output_is_not_source",
    "load_init_weights",
    "replay_subset",
    "replay_rows",
    "replay_batch_rows",
    "add_category_config",
]

#: The default step budget of an add run is the base config's ``train.steps // ADD_STEPS_DIVISOR``
#: (benchmarks/add_category.py measures what it gives against a training from scratch).
ADD_STEPS_DIVISOR = 4

#: Config sections that must equal RUN's: the backbone gives the tokens the weights read, the model section is the
#: shape (and meaning) of the weights. Location keys (``backbone.weights``: where the file lives) may differ.
_COMPATIBLE_SECTIONS = ("backbone", "model")
#: Data keys that change every image's tokens (a region of interest, the resize rule): the replayed images must be
#: read as RUN read them, and one run reads all of its images one way. Compared where a config has them.
_COMPATIBLE_DATA_KEYS = frozenset({"data.resize", "data.roi"})


@dataclass(frozen=True)
class InitSource:
    """The run an add run starts from: its folder, its configuration and its ``config.json`` record."""

    run_dir: Path
    cfg: Config
    payload: dict[str, Any]

    @property
    def categories(self) -> list[str]:
        """The categories RUN was trained on (recorded in its ``config.json``)."""
        return [str(c) for c in (self.payload.get("categories") or self.cfg.data.categories or [])]

    @property
    def step(self) -> int | None:
        step = self.payload.get("step")
        return int(step) if step is not None else None


def init_source(cfg: Config) -> InitSource | None:
    """RUN of ``cfg.train.init_from`` (None when it is unset), checked: a run folder, with recorded categories,
    made with ``cfg``'s backbone and model shape."""
    if not cfg.train.init_from:
        return None
    run = _check_run_folder(Path(cfg.train.init_from).expanduser())
    old_cfg, payload = read_run_config(run)
    source = InitSource(run, old_cfg, payload)
    if not source.categories:
        raise ConfigError(
            f"train.init_from: {run / CONFIG_FILE} records no categories (trained on precomputed features?): "
            f"the replay cannot tell which images were the old categories'"
        )
    check_compatible(source, cfg)
    return source


def _check_run_folder(run: Path) -> Path:
    if not run.is_dir():
        raise ConfigError(
            f"train.init_from: {run} does not exist or is not a folder; pass the --output folder of a finished "
            f"`dpdiff train` (--init-from RUN)"
        )
    missing = [name for name in (CONFIG_FILE, MODEL_FILE) if not (run / name).is_file()]
    if missing:
        raise ConfigError(
            f"train.init_from: {run} is not a dpdiff run folder (no {' or '.join(missing)}); pass the --output "
            f"folder of a finished `dpdiff train`"
        )
    return run


def check_compatible(source: InitSource, cfg: Config) -> None:
    """ConfigError naming every key of the backbone and model sections (and the data keys that change the tokens)
    where ``cfg`` differs from RUN's."""
    old, new = flatten_config(source.cfg.to_dict()), flatten_config(cfg.to_dict())
    location = keys_with_role(LOCATION)
    diffs = [
        (k, old.get(k, "<absent>"), new.get(k, "<absent>"))
        for k in sorted(set(old) | set(new))
        if (k.split(".", 1)[0] in _COMPATIBLE_SECTIONS or k in _COMPATIBLE_DATA_KEYS)
        and k not in location
        and old.get(k) != new.get(k)
    ]
    if diffs:
        listed = describe_differences(diffs, "RUN")
        raise ConfigError(
            f"train.init_from: {source.run_dir} was trained with another backbone or model shape: {listed}. "
            f"Adding categories continues RUN's weights, so the backbone and model sections (and data.roi, "
            f"data.resize) must be RUN's: omit "
            f"--config (RUN's own configuration is used) or train a new model from scratch"
        )


def check_output_is_not_source(run_dir: Path, source: InitSource) -> None:
    """An add run writes a NEW run folder; RUN itself is never written (nor deleted by --overwrite)."""
    if Path(run_dir).expanduser().resolve() == source.run_dir.resolve():
        raise UsageError(
            f"--output {run_dir} is the run being continued (train.init_from): an add run writes a new run "
            f"folder and never changes RUN; pass another --output"
        )


def load_init_weights(source: InitSource, in_dim: int, grid_size: tuple[int, int]) -> DPDiffAD:
    """RUN's served weights (the EMA's when RUN kept one) and token statistics, for tokens of ``in_dim`` channels on
    ``grid_size``; a run whose tokens have another shape is a CheckpointError."""
    model, _, payload = load_model(source.run_dir)
    if (int(model.in_dim), tuple(model.grid_size)) != (int(in_dim), tuple(grid_size)):
        raise CheckpointError(
            f"train.init_from: {source.run_dir / CONFIG_FILE} expects {model.in_dim} channels on a "
            f"{tuple(model.grid_size)} token grid (in_dim, grid_size), the backbone gives {in_dim} on "
            f"{tuple(grid_size)}"
        )
    return model.train()


def replay_subset(samples: list, per_category: int | None, seed: int) -> list:
    """At most ``per_category`` samples of each category (all when None), drawn with ``seed``, in their order."""
    if per_category is None:
        return list(samples)
    by_category: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_category.setdefault(str(s.category), []).append(i)
    rng = np.random.default_rng(int(seed))
    chosen: set[int] = set()
    for category in sorted(by_category):
        idx = by_category[category]
        chosen.update(int(i) for i in rng.permutation(idx)[: int(per_category)])
    return [s for i, s in enumerate(samples) if i in chosen]


def replay_rows(samples: list, source: InitSource) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows of RUN's categories, rows of the new ones) in the training samples; both must be non-empty."""
    old = set(source.categories)
    is_old = torch.tensor([str(s.category) in old for s in samples], dtype=torch.bool)
    old_rows, new_rows = torch.nonzero(is_old).flatten(), torch.nonzero(~is_old).flatten()
    if old_rows.numel() == 0 or new_rows.numel() == 0:
        which = "old (replayed)" if old_rows.numel() == 0 else "new"
        raise ConfigError(f"train.init_from: no {which} training images to draw from ({len(samples)} images in all)")
    return old_rows, new_rows


def replay_batch_rows(batch_size: int, fraction: float) -> int:
    """How many of a global batch's ``batch_size`` rows are replayed images: ``round(fraction * batch_size)``, kept
    within [1, batch_size - 1] so that every step sees both the old and the new categories (when it can)."""
    rows = int(round(fraction * batch_size))
    return min(max(rows, 1), batch_size - 1) if batch_size > 1 else rows


def add_category_config(
    run_dir: str | Path, base: Config | None = None, steps: int | None = None, overrides: dict | None = None
) -> Config:
    """The configuration of a run that adds categories to ``run_dir``: ``base`` (default: RUN's own configuration,
    with ``data.categories`` and ``train.replay`` reset) with ``train.init_from`` set and ``train.steps`` set to
    ``steps`` (default: the base's ``train.steps // ADD_STEPS_DIVISOR``), then ``overrides`` (dotted keys, e.g.
    ``{"data.root": ..., "data.categories": [...]}``). ``dpdiff train --init-from`` builds its config here."""
    run = _check_run_folder(Path(run_dir).expanduser())
    if base is None:
        cfg = copy.deepcopy(read_run_config(run)[0])
        cfg.data.categories = None  # the new categories: --categories, or every category of --data
        cfg.train.replay = None
    else:
        cfg = copy.deepcopy(base)
    cfg.train.init_from = str(run)
    cfg.train.steps = int(steps) if steps is not None else max(1, cfg.train.steps // ADD_STEPS_DIVISOR)
    return cfg.override(overrides or {})
