"""Fixtures of the training tests that compare runs: the loss history of a run folder, and the environment
of a ``dpdiff`` subprocess (this checkout first on ``PYTHONPATH``, one thread, unbuffered output)."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _loss_history(run: Path) -> list[dict]:
    with open(run / "loss_history.csv") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


@pytest.fixture(scope="session")
def loss_history() -> Callable[[Path], list[dict]]:
    """Function: ``loss_history(run)`` -> the rows of ``run/loss_history.csv`` as ``{column: float}``."""
    return _loss_history


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """A fresh environment for ``python -m dpdiff.cli`` / ``torchrun`` subprocesses: this checkout first on
    ``PYTHONPATH``, one OpenMP/MKL thread, unbuffered output."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env
