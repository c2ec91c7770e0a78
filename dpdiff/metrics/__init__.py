"""Anomaly-detection metrics (paper Sec. 5.1.2) and results tables.

The names of :mod:`dpdiff.metrics.anomaly` and :mod:`dpdiff.metrics.tables` load on first use (PEP 562), so that
``dpdiff.metrics.thresholds`` (pure numpy, used by the torch-free ONNX path's calibration) imports neither
scikit-learn nor scipy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from dpdiff.metrics.anomaly import *  # noqa: F403
    from dpdiff.metrics.tables import TABLE_COLUMNS as TABLE_COLUMNS
    from dpdiff.metrics.tables import add_mean_row as add_mean_row
    from dpdiff.metrics.tables import format_table_markdown as format_table_markdown
    from dpdiff.metrics.tables import write_results as write_results

_TABLES = ("TABLE_COLUMNS", "add_mean_row", "format_table_markdown", "write_results")


def __getattr__(name: str) -> Any:
    anomaly = importlib.import_module("dpdiff.metrics.anomaly")
    if name == "__all__":
        return [*anomaly.__all__, *_TABLES]
    if name in anomaly.__all__:
        return getattr(anomaly, name)
    if name in _TABLES:
        return getattr(importlib.import_module("dpdiff.metrics.tables"), name)
    raise AttributeError(f"module 'dpdiff.metrics' has no attribute {name!r}")
