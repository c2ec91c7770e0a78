"""Anomaly-detection metrics (paper Sec. 5.1.2) and results tables."""

from dpdiff.metrics import anomaly
from dpdiff.metrics.anomaly import *  # noqa: F403 - exactly the names of anomaly.__all__, listed there once
from dpdiff.metrics.tables import TABLE_COLUMNS, add_mean_row, format_table_markdown, write_results

__all__ = [*anomaly.__all__, "TABLE_COLUMNS", "add_mean_row", "format_table_markdown", "write_results"]
