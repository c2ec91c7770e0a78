"""Results tables: per-category metrics + mean row as JSON, CSV and Markdown (paper column order)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Collection, Mapping
from pathlib import Path

from dpdiff.errors import DataError
from dpdiff.io import atomic_write_json, atomic_write_text
from dpdiff.metrics.anomaly import METRIC_NAMES, mean_ad
from dpdiff.run_files import RESULTS_STEM

__all__ = [
    "TABLE_COLUMNS",
    "MEAN_ROW",
    "add_mean_row",
    "complete_row",
    "format_table_markdown",
    "format_table_csv",
    "write_results",
]

#: Columns of every results table: the seven paper metrics, then mAD.
TABLE_COLUMNS = METRIC_NAMES + ("mAD",)
MEAN_ROW = "mean"


def complete_row(metrics: Mapping, name: str) -> dict:
    """``{column: float}`` for every table column (mAD computed when absent); ``KeyError`` naming the
    row when one of the seven metrics is missing."""
    missing = [k for k in METRIC_NAMES if k not in metrics]
    if missing:
        raise KeyError(f"category {name!r} lacks metrics {missing}")
    row = {k: float(metrics[k]) for k in METRIC_NAMES}
    row["mAD"] = float(metrics["mAD"]) if "mAD" in metrics else mean_ad(row)
    return row


def add_mean_row(per_category: dict[str, dict]) -> dict[str, dict]:
    """Return ``{category: row, ..., "mean": row}`` with complete rows (mAD filled in) and the mean
    over categories of every column (including mAD)."""
    if not per_category:
        raise ValueError("no categories to tabulate")
    if MEAN_ROW in per_category:
        raise DataError(f"{MEAN_ROW!r} is reserved for the mean row and cannot be a category name")
    rows = {str(name): complete_row(m, name) for name, m in per_category.items()}
    rows[MEAN_ROW] = {c: math.fsum(r[c] for r in rows.values()) / len(rows) for c in TABLE_COLUMNS}
    return rows


def _pct(value) -> str:
    if value is None:
        return "-"
    value = float(value)
    return "nan" if math.isnan(value) else f"{100.0 * value:.1f}"


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
    Missing values show as ``-``.
    """
    lead = lead or {}
    header = [label, *lead, *TABLE_COLUMNS]
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for name, m in rows.items():
        cells = [_lead_cell(lead, c, name, "-") for c in lead] + [_pct(m.get(c)) for c in TABLE_COLUMNS]
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
            [name] + [_lead_cell(lead, c, name, "") for c in lead] + [repr(float(m[c])) for c in TABLE_COLUMNS]
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
    atomic_write_text(paths["md"], format_table_markdown(rows))
    return paths
