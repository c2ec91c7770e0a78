"""What the benchmark scripts share. They import it as ``_common`` (Python puts a script's own folder first on
``sys.path``); the ``dpdiff`` package is the installed one (``pip install -e .``), never a path edit.

* :data:`ROOT`, :data:`RESULTS`: the repository and ``benchmarks/results``;
* :data:`INFERENCE_KEYS` / :func:`inference_settings`: the inference settings a scored row records;
* :func:`pct`, :func:`slug`: a metric in percent for tables and logs, a row name as a file name.

Light on purpose (no torch, no dpdiff import): the accuracy harness that ``accuracy.py`` and ``token_grid.py``
share is ``_accuracy_harness.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: The inference settings that decide a scored row (the row's cache key and its ``inference`` entry).
INFERENCE_KEYS = (
    "noise_step",
    "ddim_steps",
    "ensemble",
    "antithetic",
    "ensemble_reduce",
    "common_noise",
    "knn_weight",
    "image_gaussian_weight",
)


def inference_settings(cfg: Any) -> dict:
    """``cfg``'s (a :class:`dpdiff.config.Config`) values of :data:`INFERENCE_KEYS`."""
    return {k: getattr(cfg.inference, k) for k in INFERENCE_KEYS}


def pct(value) -> str:
    return "\u2014" if value is None else f"{100 * value:.1f}"


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()[:80]
