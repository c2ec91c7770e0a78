"""Paper-layout summary tables built from the ``results.json`` of several runs.

* Table 2 (category-scale protocol, ``kind="scale"``): one row per subset (e.g. S1, S2, S3, Full, in
  the given order), each the mean row of that run, then a ``Delta`` row: max - min over the subset
  rows of every column, mAD included (a smaller Delta = less sensitive to category expansion).
* Table 3 (several benchmarks, ``kind="datasets"``): one row per dataset (the mean row of its
  results), then optionally an ``Average`` row (mean over the datasets of every column).

Values are fractions in [0, 1]; Delta and Average are computed from the unrounded values, so a Delta
may differ by 0.1 from the difference of the one-decimal percentages shown in the Markdown.
The JSON output records the source file of every row and the protocol each source was evaluated
with; when the sources differ in an evaluation setting it carries a ``warning`` naming the keys.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

from dpdiff.metrics.tables import (
    MEAN_ROW,
    TABLE_COLUMNS,
    add_mean_row,
    complete_row,
    format_table_csv,
    format_table_markdown,
)
from dpdiff.utils.errors import DataError, UsageError
from dpdiff.utils.io import atomic_write_json, atomic_write_text, to_jsonable
from dpdiff.utils.run_files import EVAL_DIR, RESULTS_FILE

__all__ = [
    "KINDS",
    "DELTA_ROW",
    "AVERAGE_ROW",
    "RESULTS_FILE",
    "IGNORED_PROTOCOL_KEYS",
    "scale_table",
    "datasets_table",
    "resolve_results_path",
    "load_results",
    "mean_row_from_results",
    "protocol_mismatch",
    "write_table",
]

KINDS = ("scale", "datasets")
DELTA_ROW = "Delta"
AVERAGE_ROW = "Average"
#: Protocol entries that describe the measurement rather than the evaluation setting; never compared
#: (as are entries whose last dotted component starts with ``fps``).
IGNORED_PROTOCOL_KEYS = frozenset({"device", "fps_end_to_end", "inference.batch_size"})

_LABELS = {"scale": "Subset", "datasets": "Dataset"}
_SUMMARY_RULES = {
    DELTA_ROW: "max - min over the subset rows, per column (mAD included), from unrounded fractions",
    AVERAGE_ROW: "mean over the dataset rows, per column (mAD included)",
}


# ----------------------------------------------------------------------------- rows


def _data_rows(rows: Mapping[str, Mapping], reserved: str) -> dict[str, dict]:
    if not rows:
        raise UsageError("no rows to tabulate")
    if reserved in rows:
        raise UsageError(f"{reserved!r} is reserved for the summary row and cannot name a row")
    return {str(name): complete_row(m, name) for name, m in rows.items()}


def _spread(values: list[float]) -> float:
    # Python's max/min with a NaN depend on its position; a NaN anywhere makes the range NaN.
    if any(math.isnan(v) for v in values):
        return math.nan
    return max(values) - min(values)


def scale_table(rows: Mapping[str, Mapping]) -> dict[str, dict]:
    """Table 2: ``{subset: row, ..., "Delta": row}`` in the given order, rows completed (mAD filled
    in when absent); Delta = max - min over the subset rows of every column, mAD included."""
    data = _data_rows(rows, DELTA_ROW)
    if len(data) < 2:
        raise UsageError(f"a scale table needs at least two subsets for its Delta row, got {list(data)}")
    data[DELTA_ROW] = {c: _spread([r[c] for r in data.values()]) for c in TABLE_COLUMNS}
    return data


def datasets_table(rows: Mapping[str, Mapping], average: bool = True) -> dict[str, dict]:
    """Table 3: ``{dataset: row, ..., "Average": row}`` in the given order (the Average row, the mean
    over datasets of every column, only when ``average``)."""
    data = _data_rows(rows, AVERAGE_ROW)
    if average:
        data[AVERAGE_ROW] = {c: math.fsum(r[c] for r in data.values()) / len(data) for c in TABLE_COLUMNS}
    return data


# ----------------------------------------------------------------------------- loading results


def resolve_results_path(path: str | os.PathLike) -> Path:
    """The results file named by ``path``: the file itself, or ``results.json`` in the folder (an
    evaluation folder), or in its ``eval/`` subfolder (a run folder). ``FileNotFoundError`` naming
    what was looked for otherwise."""
    p = Path(path)
    if p.is_dir():
        candidates = [p / RESULTS_FILE, p / EVAL_DIR / RESULTS_FILE]
        for c in candidates:
            if c.is_file():
                return c
        raise FileNotFoundError(f"no results file in {p} (looked for {', '.join(str(c) for c in candidates)})")
    if not p.is_file():
        raise FileNotFoundError(f"results file {p} not found")
    return p


def load_results(path: str | os.PathLike) -> dict:
    """Read a results file written by ``dpdiff test`` (``write_results``).

    Returns ``{"path": str, "row": {column: fraction}, "protocol": dict | None, "categories": int | None}``:
    the file's mean row (computed from its per-category rows when it has none; mAD filled in when
    absent), its protocol (``None`` when it records none) and its number of categories.
    A missing file raises ``FileNotFoundError``, an unreadable or incomplete one
    :class:`~dpdiff.utils.errors.DataError` (a ``ValueError``); both name the file.
    """
    file = resolve_results_path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{file}: not a readable results JSON ({e})") from e
    if not isinstance(data, dict):
        raise DataError(f"{file}: expected a JSON object with 'mean'/'per_category', got {type(data).__name__}")
    per_category, mean = data.get("per_category"), data.get("mean")
    try:
        if isinstance(mean, dict):
            row = complete_row(mean, MEAN_ROW)
        elif isinstance(per_category, dict) and per_category:
            row = add_mean_row(per_category)[MEAN_ROW]
        else:
            raise ValueError("holds neither a 'mean' row nor 'per_category' metrics")
    except KeyError as e:
        raise DataError(f"{file}: {e.args[0] if e.args else e}") from e
    except (TypeError, ValueError) as e:
        raise DataError(f"{file}: malformed metrics: {e}") from e
    protocol = data.get("protocol")
    if protocol is not None and not isinstance(protocol, dict):
        raise DataError(f"{file}: 'protocol' must be a JSON object, got {type(protocol).__name__}")
    return {
        "path": str(file),
        "row": row,
        "protocol": protocol or None,
        "categories": len(per_category) if isinstance(per_category, dict) and per_category else None,
    }


def mean_row_from_results(path: str | os.PathLike) -> dict:
    """The mean row (all table columns, fractions) of a results file or of the folder holding it."""
    return load_results(path)["row"]


# ----------------------------------------------------------------------------- protocols


def _flatten(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _ignored(key: str) -> bool:
    return key in IGNORED_PROTOCOL_KEYS or key.rsplit(".", 1)[-1].startswith("fps")


def _canonical(value) -> str:
    value = to_jsonable(value)
    if isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # 4 and 4.0 are the same setting
    return json.dumps(value, sort_keys=True)


def protocol_mismatch(protocols: Mapping[str, Mapping | None]) -> dict | None:
    """Compare the protocols of the sources (``{row name: protocol or None}``).

    Nested entries are compared by dotted key (``inference.noise_step``); measurement entries
    (:data:`IGNORED_PROTOCOL_KEYS`, ``fps*``) are skipped. Returns ``None`` when every source that
    records a protocol agrees and either all or none record one; otherwise ``{"message",
    "differing_keys", "values": {key: {name: value}}, "sources_without_protocol"}``.
    """
    known = {n: _flatten(p) for n, p in protocols.items() if p}
    without = [n for n, p in protocols.items() if not p]
    if not known or (len(known) == 1 and not without):
        return None
    keys = sorted({k for flat in known.values() for k in flat if not _ignored(k)})
    absent = object()
    differing = [
        k
        for k in keys
        if len({"<absent>" if f.get(k, absent) is absent else _canonical(f[k]) for f in known.values()}) > 1
    ]
    if not differing and not without:
        return None
    parts = []
    if differing:
        parts.append(f"the sources differ in evaluation settings: {', '.join(differing)}")
    if without:
        parts.append(f"{', '.join(without)} record no protocol, so their settings cannot be checked")
    return {
        "message": "; ".join(parts) + ": the rows may not be comparable",
        "differing_keys": differing,
        "values": {k: {n: f.get(k) for n, f in known.items()} for k in differing},
        "sources_without_protocol": without,
    }


# ----------------------------------------------------------------------------- writing


def _sources(sources: Mapping | None, names: list[str]) -> dict[str, dict] | None:
    if sources is None:
        return None
    missing = [n for n in names if n not in sources]
    extra = [str(n) for n in sources if str(n) not in names]
    if missing or extra:
        raise UsageError(f"sources must name exactly the rows: missing {missing}, unknown {extra}")
    out = {}
    for name in names:
        s = sources[name]
        if isinstance(s, (str, os.PathLike)):
            s = {"path": s}
        entry = {"path": None if s.get("path") is None else os.fspath(s["path"])}
        if s.get("categories") is not None:
            entry["categories"] = int(s["categories"])
        if s.get("protocol"):
            entry["protocol"] = dict(s["protocol"])
        out[name] = entry
    return out


def write_table(
    rows: Mapping[str, Mapping],
    out_dir: str | os.PathLike,
    stem: str | None = None,
    kind: str = "scale",
    sources: Mapping | None = None,
    *,
    average: bool = True,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write a Table 2 (``kind="scale"``) or Table 3 (``kind="datasets"``) as ``<stem>.json``,
    ``.csv`` and ``.md`` (each atomically) into ``out_dir``; ``stem`` defaults to ``<kind>_table``.

    ``rows`` maps subset/dataset name -> mean metrics (fractions; e.g. :func:`mean_row_from_results`),
    in table order. ``sources`` (optional) maps every row name to its results file path, or to a
    :func:`load_results` dict (``path``, ``protocol``, ``categories``). The JSON holds
    ``{"kind", "columns", "rows" (summary row last), "summary_row", "summary_rule", "sources",
    "warning" (only when the protocols differ, see :func:`protocol_mismatch`)}``; the Markdown shows
    percentages with one decimal (plus a Classes column when the category counts are known) and the
    warning under the table. Existing outputs are refused (``FileExistsError``) unless ``overwrite``.
    Returns ``{"json": path, "csv": path, "md": path}``.
    """
    if kind not in KINDS:
        raise UsageError(f"kind must be one of {KINDS}, got {kind!r}")
    summary: str | None
    if kind == "scale":
        table, summary = scale_table(rows), DELTA_ROW
    else:
        table, summary = datasets_table(rows, average=average), (AVERAGE_ROW if average else None)
    names = [n for n in table if n != summary]
    src = _sources(sources, names)
    warning = protocol_mismatch({n: s.get("protocol") for n, s in src.items()}) if src else None

    out_dir = Path(out_dir)
    stem = stem or f"{kind}_table"
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("json", "csv", "md")}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist; pass --overwrite (overwrite=True) to replace")

    counts = {n: s["categories"] for n, s in (src or {}).items() if "categories" in s}
    lead = {"Classes": counts} if counts else None
    label = _LABELS[kind]
    document = {
        "kind": kind,
        "columns": list(TABLE_COLUMNS),
        "rows": table,
        "summary_row": summary,
        "summary_rule": None if summary is None else _SUMMARY_RULES.get(summary),
        "sources": src,
    }
    if warning:
        document["warning"] = warning
    markdown = format_table_markdown(table, label=label, bold=(summary,) if summary else (), lead=lead)
    if warning:
        markdown += f"\n> **Warning:** {warning['message']}.\n"
    atomic_write_json(paths["json"], document)
    atomic_write_text(paths["csv"], format_table_csv(table, label=label.lower(), lead=lead))
    atomic_write_text(paths["md"], markdown)
    return paths
