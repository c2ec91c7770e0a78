"""Shared test fixtures: the one tiny configuration the end-to-end tests train with.

* ``tiny_config(root=None)``: a fresh tiny :class:`~dpdiff.config.Config` (64 px images, a 1-block DiT of width
  32, batch 4, 6 steps, a history row every 2 and a checkpoint every 3 steps), optionally on data ``root``;
* ``tiny_settings``: the same settings as a read-only mapping of dotted keys, ``tiny_set_args`` as
  command-line ``--set KEY=VALUE`` arguments;
* ``tiny_model_config(**changes)``: its model section, for tests of the network alone.

The settings live in ``TINY_SETTINGS`` only; tests change what they need on their own copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

import pytest

from dpdiff.config import Config, ModelConfig

#: The tiny settings, as dotted config keys.
TINY_SETTINGS = {
    "backbone.image_size": 64,
    "model.hidden_dim": 32,
    "model.depth": 1,
    "model.num_heads": 2,
    "model.prototype_heads": 2,
    "train.batch_size": 4,
    "train.steps": 6,
    "train.log_every": 2,
    "train.checkpoint_every": 3,
    "inference.pool_size": 4,
    "inference.smoothing_sigma": 1.0,
}


def _tiny_config(root: Path | str | None = None) -> Config:
    cfg = Config().override(TINY_SETTINGS)
    if root is not None:
        cfg.data.root = str(root)
    return cfg


def _tiny_model_config(**changes) -> ModelConfig:
    return dataclasses.replace(_tiny_config().model, **changes)


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Config]:
    """Factory: ``tiny_config(root=None)`` -> a new tiny Config (each call a fresh copy to change freely)."""
    return _tiny_config


@pytest.fixture(scope="session")
def tiny_settings() -> Mapping[str, object]:
    """The tiny settings, ``{"backbone.image_size": 64, "model.hidden_dim": 32, ...}`` (read-only)."""
    return MappingProxyType(TINY_SETTINGS)


@pytest.fixture(scope="session")
def tiny_set_args() -> tuple[str, ...]:
    """The tiny settings as ``--set`` arguments: ``("backbone.image_size=64", ...)``."""
    return tuple(f"{key}={value}" for key, value in TINY_SETTINGS.items())


@pytest.fixture(scope="session")
def tiny_model_config() -> Callable[..., ModelConfig]:
    """Factory: ``tiny_model_config(depth=2, ...)`` -> the tiny model section with those fields changed."""
    return _tiny_model_config
