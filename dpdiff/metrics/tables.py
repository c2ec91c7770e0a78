"""Results tables: per-category metrics + mean row as JSON, CSV and Markdown (paper column order)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Collection, Mapping
from pathlib import Path

from dpdiff.metrics.anomaly import METRIC_NAMES, mean_ad
from dpdiff.utils.errors import DataError
from dpdiff.utils.io import atomic_write_json, atomic_write_text
from dpdiff.utils.run_files import RESULTS_STEM

__all__ = [
    "TABLE_COLUMNS",
    "MEAN_ROW",
    "add_mean_row",
    "complete_row",
    "format_table_markdown",
    "format_table_csv",
    "NOT_AVAILABLE",
    "available_counts",
    "write_results",
]

#: Columns of every results table: the seven paper metrics, then mAD.
TABLE_COLUMNS = METRIC_NAMES + ("mAD",)
MEAN_ROW = "mean"


#: How a metric that is not available (pixel metrics of a data set with image labels only) is shown.
NOT_AVAILABLE = "\u2014"


def complete_row(metrics: Mapping, name: str) -> dict:
    """``{column: float or None}`` for every table column (mAD computed when absent); ``KeyError`` naming the
    row when one of the seven metrics is missing. ``None`` is "not available" (no defect masks): a pixel
    metric may be None, and then mAD is None too."""
    missing = [k for k in METRIC_NAMES if k not in metrics]
    if missing:
        raise KeyError(f"category {name!r} lacks metrics {missing}")
    row = {k: None if metrics[k] is None else float(metrics[k]) for k in METRIC_NAMES}
    if "mAD" in metrics:
        row["mAD"] = None if metrics["mAD"] is None else float(metrics["mAD"])
    else:
        row["mAD"] = None if any(v is None for v in row.values()) else mean_ad(row)
    return row


def _mean_available(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present) if present else None


def add_mean_row(per_category: dict[str, dict]) -> dict[str, dict]:
    """Return ``{category: row, ..., "mean": row}`` with complete rows (mAD filled in) and the mean
    over categories of every column (including mAD). A column's mean is over the categories where it is
    available (:func:`available_counts` says how many), None where it is available in none."""
    if not per_category:
        raise ValueError("no categories to tabulate")
    if MEAN_ROW in per_category:
        raise DataError(f"{MEAN_ROW!r} is reserved for the mean row and cannot be a category name")
    rows = {str(name): complete_row(m, name) for name, m in per_category.items()}
    rows[MEAN_ROW] = {c: _mean_available([r[c] for r in rows.values()]) for c in TABLE_COLUMNS}
    return rows


def available_counts(per_category: Mapping[str, Mapping]) -> dict[str, int]:
    """``{column: number of categories where it is available}`` (not None)."""
    return {c: sum(1 for m in per_category.values() if m.get(c) is not None) for c in TABLE_COLUMNS}


def _availability_note(per_category: Mapping[str, Mapping]) -> str:
    """A line under a table whose mean row averages fewer categories in some columns ("" when none)."""
    counts, n = available_counts(per_category), len(per_category)
    partial = [c for c in TABLE_COLUMNS if counts[c] < n]
    if not partial:
        return ""
    if all(counts[c] == 0 for c in partial):
        return f"\n{NOT_AVAILABLE}: not available ({', '.join(partial)}): the test images have no defect masks.\n"
    return (
        f"\n{NOT_AVAILABLE}: not available (no defect masks); the mean of "
        + ", ".join(f"{c} is over {counts[c]} of {n} categories" for c in partial)
        + ".\n"
    )


def _pct(value) -> str:
    if value is None:
        return NOT_AVAILABLE
    value = float(value)
    return "nan" if math.isnan(value) else f"{100.0 * value:.1f}"


def _csv_value(value) -> str:
    return NOT_AVAILABLE if value is None else repr(float(value))


def _lead_cell(lead: dict, column: str, name: str, missing: str) -> str:
    value = lead[column].get(name)
    return missing if value is None else str(value)


def format_table_markdown(
    rows: dict[str, dict],
    label: str = "Category",
    bold: Collection[str] = (MEAN_ROW,),
    lead: dict[str, dict] | None = None,
) -> str:
    """Markdown table, paper column order, values (fractions) shown as percentages with 1 decimal.

    ``label`` heads the row-name column; rows named in ``bold`` (summary rows) are shown in bold.
    ``lead`` adds plain columns between the row names and the metrics: ``{column: {row: value}}``.
    Missing values show as an em dash (:data:`NOT_AVAILABLE`).
    """
    lead = lead or {}
    header = [label, *lead, *TABLE_COLUMNS]
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for name, m in rows.items():
        cells = [_lead_cell(lead, c, name, NOT_AVAILABLE) for c in lead] + [_pct(m.get(c)) for c in TABLE_COLUMNS]
        row_label = f"**{name}**" if name in bold else str(name)
        lines.append(f"| {row_label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_table_csv(rows: dict[str, dict], label: str = "category", lead: dict[str, dict] | None = None) -> str:
    """CSV of complete rows: the row name, the ``lead`` columns (as in :func:`format_table_markdown`,
    empty when missing), then the metric columns as fractions (full precision)."""
    lead = lead or {}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow((label, *lead) + TABLE_COLUMNS)
    for name, m in rows.items():
        writer.writerow(
            [name] + [_lead_cell(lead, c, name, "") for c in lead] + [_csv_value(m[c]) for c in TABLE_COLUMNS]
        )
    return buf.getvalue()


def write_results(
    per_category: dict[str, dict],
    out_dir: Path,
    stem: str = RESULTS_STEM,
    protocol: dict | None = None,
    mean_row: bool = True,
) -> dict[str, Path]:
    """Write ``<stem>.json`` / ``.csv`` / ``.md`` (atomically) into ``out_dir``.

    ``per_category`` maps category -> metric dict (fractions in [0, 1]; mAD computed when absent).
    A ``"mean"`` row (mean over categories of each column incl. mAD) is added unless ``mean_row`` is
    False (tables whose rows are methods, not categories).  The JSON holds
    ``{"columns", "per_category", "mean", "protocol"}``; the CSV holds fractions, the Markdown
    percentages with one decimal.  Returns ``{"json": path, "csv": path, "md": path}``.
    """
    out_dir = Path(out_dir)
    rows = add_mean_row(per_category)
    if not mean_row:
        rows.pop(MEAN_ROW)
    per_cat = {k: v for k, v in rows.items() if k != MEAN_ROW}
    paths = {
        "json": out_dir / f"{stem}.json",
        "csv": out_dir / f"{stem}.csv",
        "md": out_dir / f"{stem}.md",
    }
    atomic_write_json(
        paths["json"],
        {
            "columns": list(TABLE_COLUMNS),
            "per_category": per_cat,
            "mean": rows.get(MEAN_ROW),
            "protocol": protocol or {},
        },
    )
    atomic_write_text(paths["csv"], format_table_csv(rows))
    atomic_write_text(paths["md"], format_table_markdown(rows) + _availability_note(per_cat))
    return paths
