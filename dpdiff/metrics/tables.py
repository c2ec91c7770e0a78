"""Results tables: per-category metrics + mean row as JSON, CSV and Markdown (paper column order)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from dpdiff.io import atomic_write_json, atomic_write_text
from dpdiff.metrics.anomaly import METRIC_NAMES, mean_ad

__all__ = ["TABLE_COLUMNS", "MEAN_ROW", "add_mean_row", "format_table_markdown", "write_results"]

#: Columns of every results table: the seven paper metrics, then mAD.
TABLE_COLUMNS = METRIC_NAMES + ("mAD",)
MEAN_ROW = "mean"


def _complete(metrics: dict, name: str) -> dict:
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
        raise ValueError(f"{MEAN_ROW!r} is reserved for the mean row and cannot be a category name")
    rows = {str(name): _complete(m, name) for name, m in per_category.items()}
    rows[MEAN_ROW] = {c: math.fsum(r[c] for r in rows.values()) / len(rows) for c in TABLE_COLUMNS}
    return rows


def _pct(value) -> str:
    if value is None:
        return "-"
    value = float(value)
    return "nan" if math.isnan(value) else f"{100.0 * value:.1f}"


def format_table_markdown(rows: dict[str, dict]) -> str:
    """Markdown table, paper column order, values (fractions) shown as percentages with 1 decimal.

    Missing values show as ``-``.
    """
    lines = [
        "| Category | " + " | ".join(TABLE_COLUMNS) + " |",
        "|---|" + "---:|" * len(TABLE_COLUMNS),
    ]
    for name, m in rows.items():
        cells = [_pct(m.get(c)) for c in TABLE_COLUMNS]
        label = f"**{name}**" if name == MEAN_ROW else str(name)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _format_csv(rows: dict[str, dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("category",) + TABLE_COLUMNS)
    for name, m in rows.items():
        writer.writerow([name] + [repr(float(m[c])) for c in TABLE_COLUMNS])
    return buf.getvalue()


def write_results(
    per_category: dict[str, dict],
    out_dir: Path,
    stem: str = "results",
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
    atomic_write_text(paths["csv"], _format_csv(rows))
    atomic_write_text(paths["md"], format_table_markdown(rows))
    return paths
