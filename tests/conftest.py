"""Shared test fixtures: the one tiny configuration and the one tiny data set the end-to-end tests train with.

* ``tiny_config(root=None)``: a fresh tiny :class:`~dpdiff.config.Config` (64 px images, a 1-block DiT of width
  32, batch 4, 6 steps, a history row every 2 and a checkpoint every 3 steps), optionally on data ``root``;
* ``tiny_settings``: the same settings as a read-only mapping of dotted keys, ``tiny_set_args`` as
  command-line ``--set KEY=VALUE`` arguments;
* ``tiny_model_config(**changes)``: its model section, for tests of the network alone;
* ``tiny_dataset(root, **changes)``: writes the tiny synthetic data set (``TINY_DATA``: 2 categories of 64 px
  images, 6 normal training images and 2 + 2 test images each) to ``root`` and returns its category names;
  ``tiny_data``: that data set's folder, written once per test module (tests that change files work on a copy;
  a module-level ``TINY_DATA_CHANGES`` dict changes the set);
* ``single_thread``: torch on one thread for a test module (``pytestmark = pytest.mark.usefixtures(...)``);
* ``headless_chromium(profile, *args)``: the command line of the browser tests' headless Chromium (skips the test
  when there is no browser).

The settings live in ``TINY_SETTINGS`` and ``TINY_DATA`` only; tests change what they need on their own copy.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

import pytest
import torch

from dpdiff.config import Config, ModelConfig
from dpdiff.data.synthetic import generate_synthetic_dataset

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


#: The tiny synthetic data set, as :func:`~dpdiff.data.synthetic.generate_synthetic_dataset` arguments.
TINY_DATA = {
    "num_categories": 2,
    "train_per_category": 6,
    "test_good_per_category": 2,
    "test_defect_per_category": 2,
    "image_size": 64,
    "seed": 0,
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


def _tiny_dataset(root: Path | str, **changes) -> list[str]:
    return generate_synthetic_dataset(Path(root), **{**TINY_DATA, **changes})


@pytest.fixture(scope="session")
def tiny_dataset() -> Callable[..., list[str]]:
    """Factory: ``tiny_dataset(root, test_good_per_category=3, ...)`` writes the tiny data set (``TINY_DATA``
    with those arguments changed) to ``root`` and returns the category names."""
    return _tiny_dataset


@pytest.fixture(scope="module")
def tiny_data(request, tmp_path_factory) -> Path:
    """The folder of the tiny data set of ``TINY_DATA``, written once per test module (read it; change files
    on a copy). A module changes the set with a module-level ``TINY_DATA_CHANGES = {...}`` (e.g. more test
    images)."""
    root = tmp_path_factory.mktemp("synth") / "data"
    _tiny_dataset(root, **getattr(request.module, "TINY_DATA_CHANGES", {}))
    return root


@pytest.fixture(scope="module")
def single_thread():
    """Torch on one thread for the module: tiny models gain nothing from threads, and on a busy machine OpenMP
    thread sync can cost 10x; a subprocess run on one thread then sums in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: The flags every browser test starts Chromium with: headless, no sandbox, GPU, extensions or first-run pages.
HEADLESS_CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
)


def _chromium_executable() -> str | None:
    for name in (os.environ.get("DPDIFF_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="session")
def headless_chromium() -> Callable[..., list[str]]:
    """Factory: ``headless_chromium(profile, *args)`` -> the command line of headless Chromium with the profile
    folder ``profile`` and the further flags/URL ``args``. The browser is $DPDIFF_CHROMIUM, else chromium /
    chromium-browser / google-chrome on PATH; a test asking for it is skipped when there is none."""
    exe = _chromium_executable()
    if exe is None:
        pytest.skip(
            "chromium not found on PATH (Debian: apt-get install chromium chromium-driver; .ci/run "
            "installs it); set DPDIFF_CHROMIUM to a Chrome/Chromium binary"
        )

    def command(profile: Path, *args: str) -> list[str]:
        return [exe, *HEADLESS_CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]

    return command


def _train_tiny_run(data: Path, tmp_path_factory, tiny_config: Callable[..., Config], name: str) -> Path:
    """A tiny trained run on ``data`` (the tests' tiny config) with independent draws: after a few steps an
    antithetic pair reconstructs the tokens almost exactly (scores ~1e-6), which would leave nothing to rank."""
    from dpdiff.workflows.train import train

    out = tmp_path_factory.mktemp(name) / "run"
    train(tiny_config(data).override({"inference.antithetic": False}), out)
    return out


@pytest.fixture(scope="session")
def train_tiny_run() -> Callable[..., Path]:
    """Function: ``train_tiny_run(data, tmp_path_factory, tiny_config, name)`` -> a tiny trained run folder."""
    return _train_tiny_run
