"""Anomaly-detection metrics (paper Sec. 5.1.2) and results tables."""

from dpdiff.metrics.anomaly import (
    IMAGE_METRIC_NAMES,
    METRIC_NAMES,
    PIXEL_METRIC_NAMES,
    aupro,
    aupro_reference,
    compute_metrics,
    f1_max,
    image_metrics,
    mean_ad,
    pixel_metrics,
)
from dpdiff.metrics.tables import TABLE_COLUMNS, add_mean_row, format_table_markdown, write_results

__all__ = [
    "METRIC_NAMES",
    "IMAGE_METRIC_NAMES",
    "PIXEL_METRIC_NAMES",
    "TABLE_COLUMNS",
    "image_metrics",
    "pixel_metrics",
    "f1_max",
    "aupro",
    "aupro_reference",
    "compute_metrics",
    "mean_ad",
    "add_mean_row",
    "format_table_markdown",
    "write_results",
]
