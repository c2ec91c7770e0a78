"""Ablation grids (paper Sec. 5.6: Table 5, Fig. 5, Fig. 6, Table 9): train once, evaluate many, one table.

A grid file (YAML; the shipped grids are package data in ``dpdiff/configs/ablations/``, and ``dpdiff ablate
--grid table5_modules`` takes one by name)::

    name: table5_modules               # optional; default: the file's stem (names the output files)
    base: mtd_lite0                    # a packaged preset by name, or a YAML path found relative to the grid
                                       # file, a folder above it, or the cwd
    set: {train.steps: 500}            # optional overrides common to every row
    columns: {L-Proto: model.use_local_prototypes}   # optional lead columns (default: the keys that vary)
    rows:                              # either named rows ...
      - {name: full model, set: {}}
      - {name: diffusion-only, set: {model.use_local_prototypes: false, model.use_global_prototypes: false}}
    # ... or a sweep of one key:                sweep: inference.noise_step
    #                                           values: [25, 50, 100]
    # ... or the product of several keys:       sweep: {model.num_local_prototypes: [2, 4],
    #                                                   model.num_global_prototypes: [1, 2]}

Each row's configuration is base -> grid ``set`` -> command-line overrides -> row ``set``. Reading a grid file and
the training / evaluation keys: :mod:`dpdiff.experiments.ablation_grid`; running it and the table: here.

Train once, evaluate many: a row's training run is keyed by :func:`training_key`, a hash of every config
value that changes the trained weights: every key but the weight-neutral ones tagged in dpdiff/config.py
(:func:`dpdiff.config.weight_neutral_keys`: ``inference.*``, ``evaluation.*`` and where/how training runs:
device, workers, logging, checkpoint interval, feature cache). Unlike resuming, ``train.steps``,
``data.root`` and ``backbone.weights`` are part of the key: another length or other data is another model.
Rows that differ only in inference or evaluation settings share one run; a rerun (or another grid writing into
the same folder) reuses finished runs, resumes interrupted ones (``train(resume=True)``) and reuses finished
evaluations.

Output folder::

    DIR/<name>.md / .csv / .json   the table: rows = grid rows (mean over categories), the 7 metrics + mAD,
                                   lead columns with each row's settings; the JSON holds the protocol, each
                                   row's overrides, run and evaluation folders and per-category metrics
    DIR/<name>.png                 sweeps: every metric against the swept value
    DIR/runs/<training key>/       one ``dpdiff train`` run folder per distinct training configuration
    DIR/evals/<row>-<eval key>/    the ``dpdiff test`` output of each row

The table files are refused when present unless ``overwrite``; runs and evaluations are never retrained or
re-evaluated (they are keyed by their configuration), delete ``DIR/runs`` or ``DIR/evals`` to redo them.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from dpdiff.config import Config, ConfigError, flatten_config
from dpdiff.experiments.ablation_grid import (
    TRAINING_KEY_IGNORED,
    AblationGrid,
    AblationRow,
    evaluation_key,
    evaluation_overrides,
    grid_from_dict,
    load_grid,
    sweep_row_name,
    training_key,
    validate_row_config,
)
from dpdiff.metrics.tables import TABLE_COLUMNS, complete_row, format_table_csv, format_table_markdown
from dpdiff.model.checkpoint import CONFIG_FILE, MODEL_FILE, RUN_FILES, STATE_FILE, read_run_config, resume_config
from dpdiff.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text, slugify
from dpdiff.utils.progress import progress
from dpdiff.utils.run_files import RESULTS_FILE
from dpdiff.workflows.reporting import evaluate_and_report
from dpdiff.workflows.train import train

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- running it


def run_dir_for(output_dir: Path, row: AblationRow) -> Path:
    return Path(output_dir) / "runs" / row.train_key


def eval_dir_for(output_dir: Path, row: AblationRow) -> Path:
    return Path(output_dir) / "evals" / f"{slugify(row.name, default='row', max_length=60)}-{row.eval_key}"


def table_paths(grid: AblationGrid, output_dir: Path) -> dict[str, Path]:
    exts = ("md", "csv", "json") + (("png",) if grid.is_sweep else ())
    return {ext: Path(output_dir) / f"{grid.name}.{ext}" for ext in exts}


def training_status(run_dir: Path, cfg: Config) -> str:
    """``done`` (weights at ``train.steps``), ``partial`` (a resume state), ``stale`` (files but neither: a run
    stopped before its first checkpoint) or ``new``."""
    run_dir = Path(run_dir)
    if (run_dir / MODEL_FILE).is_file() and (run_dir / CONFIG_FILE).is_file():
        saved, payload = read_run_config(run_dir)
        if training_key(saved) != training_key(cfg):
            raise ConfigError(
                f"{run_dir} holds a run of another configuration (training key "
                f"{training_key(saved)}, expected {training_key(cfg)}); move it away"
            )
        if int(payload.get("step", -1)) >= cfg.train.steps:
            return "done"
    if (run_dir / STATE_FILE).is_file():
        return "partial"
    if any((run_dir / n).exists() for n in RUN_FILES):
        return "stale"
    return "new"


def ensure_trained(cfg: Config, run_dir: Path) -> str:
    """Train ``cfg`` into ``run_dir`` unless a finished run is there; returns what was done: ``reused``,
    ``resumed`` or ``trained``."""
    status = training_status(run_dir, cfg)
    if status == "done":
        return "reused"
    if status == "partial":
        saved = resume_config(run_dir)
        if training_key(saved) != training_key(cfg):
            raise ConfigError(f"{run_dir / STATE_FILE} was made with another configuration; move {run_dir} away")
        # the saved test-time sections: they may not change on resume and do not matter for training
        train(replace(cfg, inference=saved.inference, evaluation=saved.evaluation), run_dir, resume=True)
        return "resumed"
    # "stale": our own run folder, stopped before its first checkpoint; nothing finished is lost
    train(cfg, run_dir, overwrite=(status == "stale"))
    return "trained"


def evaluate_row(
    row: AblationRow, run_dir: Path, eval_dir: Path, device: str = "auto", overlays: int = 0, report: bool = False
) -> tuple[dict, str]:
    """``(results.json contents, "reused" | "evaluated")`` of ``row``'s test-time settings on ``run_dir``.
    ``report=False`` skips the HTML report (its data is saved; ``dpdiff report`` builds it later)."""
    path = Path(eval_dir) / RESULTS_FILE
    status = "reused"
    if not path.is_file():
        cfg = row.config
        evaluate_and_report(
            run_dir,
            data_root=cfg.data.root,
            categories=cfg.data.categories,
            output_dir=eval_dir,
            overlays_per_category=overlays,
            device=device,
            inference_overrides=evaluation_overrides(cfg),
            data_format=cfg.data.format,
            report=report,
        )
        status = "evaluated"
    return json.loads(path.read_text(encoding="utf-8")), status


def plan(grid: AblationGrid, output_dir: Path) -> list[dict]:
    """What :func:`run_ablation` would do, row by row (nothing is run)."""
    out, seen = [], {}
    for row in grid.rows:
        run = run_dir_for(output_dir, row)
        if row.train_key not in seen:
            seen[row.train_key] = training_status(run, row.config)
            train_action = {"done": "reuse", "partial": "resume", "stale": "restart", "new": "train"}[
                seen[row.train_key]
            ]
        else:
            train_action = "shared"
        ev = eval_dir_for(output_dir, row)
        out.append(
            {
                "row": row.name,
                "train_key": row.train_key,
                "training": train_action,
                "run_dir": str(run),
                "evaluation": "reuse" if (ev / RESULTS_FILE).is_file() else "evaluate",
                "eval_dir": str(ev),
                "overrides": row.overrides,
            }
        )
    return out


def run_ablation(
    grid: AblationGrid,
    output_dir: str | Path,
    overwrite: bool = False,
    device: str = "auto",
    overlays: int = 0,
    report: bool = False,
) -> dict:
    """Train each distinct configuration once, evaluate every row, write the table (and the sweep plot).

    Returns ``{"rows": {name: metrics}, "files": {ext: path}, "trainings": {key: action}, "evaluations":
    {name: action}}``. ``FileExistsError`` before anything runs when the table files exist and not
    ``overwrite``."""
    output_dir = Path(output_dir)
    paths = table_paths(grid, output_dir)
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(existing)} already exist; pass --overwrite to replace the table "
            f"(finished trainings and evaluations under {output_dir} are reused either way)"
        )
    for row in grid.rows:
        if not row.config.data.root:
            raise ConfigError(f"row {row.name!r}: no data root; pass --data PATH")
    output_dir.mkdir(parents=True, exist_ok=True)

    groups: dict[str, list[AblationRow]] = {}
    for row in grid.rows:
        groups.setdefault(row.train_key, []).append(row)
    trainings: dict[str, str] = {}
    evaluations: dict[str, str] = {}
    results: dict[str, dict] = {}
    n_groups = len(groups)
    bar = progress(total=len(grid.rows), desc=f"ablation {grid.name}", unit="row")
    try:
        for gi, (key, rows) in enumerate(groups.items(), 1):
            run = run_dir_for(output_dir, rows[0])
            logger.info("training %d/%d (%s) for: %s", gi, n_groups, key, ", ".join(r.name for r in rows))
            trainings[key] = ensure_trained(rows[0].config, run)
            for row in rows:
                results[row.name], evaluations[row.name] = evaluate_row(
                    row, run, eval_dir_for(output_dir, row), device, overlays, report
                )
                bar.update(1)
    finally:
        bar.close()
    files = write_ablation_table(grid, output_dir, results, paths)
    return {
        "rows": {r.name: complete_row(results[r.name]["mean"], r.name) for r in grid.rows},
        "files": files,
        "trainings": trainings,
        "evaluations": evaluations,
    }


# ----------------------------------------------------------------------------- the table


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "✓" if value else "×"
    if value is None:
        return "-"
    return str(value)


def _protocol_split(protocols: list[dict | None]) -> tuple[dict, list[str]]:
    """(entries equal in every row, dotted keys that differ); measurement entries (fps, device) left out."""
    flats = [flatten_config(p or {}) for p in protocols]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    shared, varies = {}, []
    for k in keys:
        if k.rsplit(".", 1)[-1].startswith("fps") or k == "device":
            continue
        vals = {json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}
        if len(vals) == 1:
            shared[k] = flats[0].get(k)
        else:
            varies.append(k)
    return shared, varies


def write_ablation_table(
    grid: AblationGrid, output_dir: Path, results: dict[str, dict], paths: dict[str, Path] | None = None
) -> dict[str, Path]:
    """Write ``<name>.md/.csv/.json`` (and ``.png`` for sweeps) from each row's ``results.json`` contents."""
    paths = paths or table_paths(grid, output_dir)
    rows = {r.name: complete_row(results[r.name]["mean"], r.name) for r in grid.rows}
    flat = {r.name: flatten_config(r.config.to_dict()) for r in grid.rows}
    lead = {h: {r.name: _cell(flat[r.name][k]) for r in grid.rows} for h, k in grid.columns.items()}
    shared, varies = _protocol_split([results[r.name].get("protocol") for r in grid.rows])
    md = _table_markdown(grid, results, rows, lead, varies)
    document = _table_document(grid, output_dir, results, rows, lead, shared, varies)
    atomic_write_json(paths["json"], document)
    atomic_write_text(paths["csv"], format_table_csv(rows, label="variant", lead=lead))
    atomic_write_text(paths["md"], "\n".join(md) + "\n")
    if grid.is_sweep:
        plot_sweep(grid, rows, paths["png"])
    return paths


def _table_markdown(
    grid: AblationGrid,
    results: dict[str, dict],
    rows: dict[str, dict],
    lead: dict[str, dict[str, str]],
    varies: list[str],
) -> list[str]:
    """The lines of ``<name>.md``: the table, the configuration, each row's settings, the protocol keys that vary."""
    md = [f"## Ablation `{grid.name}`", ""]
    md.append(format_table_markdown(rows, label="Variant", bold=(), lead=lead).rstrip("\n"))
    md += [
        "",
        "Mean over categories; percentages. Configuration: base "
        f"`{Path(grid.base).name if grid.base else 'defaults'}`"
        + (
            ", common overrides " + ", ".join(f"`{k}={v}`" for k, v in {**grid.common, **grid.cli_overrides}.items())
            if (grid.common or grid.cli_overrides)
            else ""
        )
        + ".",
        "",
    ]
    for r in grid.rows:
        sets = ", ".join(f"`{k}={v}`" for k, v in r.overrides.items()) or "(base configuration)"
        cats = len(results[r.name].get("per_category", {}))
        md.append(
            f"- **{r.name}**: {sets} ({cats} {'category' if cats == 1 else 'categories'}, training `{r.train_key}`)"
        )
    if varies:
        md += ["", f"Protocol settings that differ between rows: {', '.join(varies)}."]
    return md


def _table_document(
    grid: AblationGrid,
    output_dir: Path,
    results: dict[str, dict],
    rows: dict[str, dict],
    lead: dict[str, dict[str, str]],
    shared: dict,
    varies: list[str],
) -> dict:
    """The contents of ``<name>.json``: the table, each row's settings, folders and per-category metrics, the
    protocol."""
    document = {
        "grid": grid.name,
        "grid_file": grid.source,
        "base": grid.base,
        "common_overrides": grid.common,
        "command_line_overrides": grid.cli_overrides,
        "columns": list(TABLE_COLUMNS),
        "lead_columns": grid.columns,
        "rows": rows,
        "row_details": [
            {
                "name": r.name,
                "overrides": r.overrides,
                "sweep": r.sweep or None,
                "lead": {h: lead[h][r.name] for h in lead},
                "train_key": r.train_key,
                "run_dir": str(run_dir_for(output_dir, r)),
                "eval_dir": str(eval_dir_for(output_dir, r)),
                "per_category": results[r.name].get("per_category", {}),
                "protocol": results[r.name].get("protocol", {}),
            }
            for r in grid.rows
        ],
        "protocol": shared,
        "protocol_varies": varies,
        "trainings": len({r.train_key for r in grid.rows}),
    }
    if grid.is_sweep:
        document["sweep"] = {"keys": grid.sweep_keys}
    return document


def plot_sweep(grid: AblationGrid, rows: dict[str, dict], out_path: Path) -> Path:
    """One panel per metric (7 + mAD, in %) against the first swept key; with several swept keys one line per
    combination of the others. Non-numeric values are placed at evenly spaced positions; positive numbers spanning
    a factor of 10 or more (noise steps 25..400, ensemble 1..16) on a log axis, so small values stay readable."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x_key, others = grid.sweep_keys[0], grid.sweep_keys[1:]
    xs_all = list(dict.fromkeys(r.sweep[x_key] for r in grid.rows))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs_all)
    pos = {v: (float(v) if numeric else float(i)) for i, v in enumerate(xs_all)}
    log_x = numeric and min(xs_all) > 0 and max(xs_all) >= 10 * min(xs_all)
    lines: dict[str, list[tuple[float, dict]]] = {}
    for r in grid.rows:
        label = sweep_row_name({k: r.sweep[k] for k in others}) if others else ""
        lines.setdefault(label, []).append((pos[r.sweep[x_key]], rows[r.name]))
    fig = Figure(figsize=(13.0, 6.0), dpi=100)
    FigureCanvasAgg(fig)
    for i, metric in enumerate(TABLE_COLUMNS):
        ax = fig.add_subplot(2, 4, i + 1)
        for label, pts in lines.items():
            pts = sorted(pts, key=lambda p: p[0])
            ys = [100.0 * m[metric] if math.isfinite(m[metric]) else math.nan for _, m in pts]
            ax.plot([p[0] for p in pts], ys, marker="o", linewidth=1.2, label=label or None)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        lo, hi = ax.get_ylim()
        if hi - lo < 1.0:  # at least 1 percentage point: tiny differences do not look like trends
            low = max(0.0, 0.5 * (lo + hi) - 0.5)
            ax.set_ylim(low, low + 1.0)
        ax.set_title(metric, fontsize="medium")
        if log_x:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks([pos[v] for v in xs_all])
        ax.set_xticklabels([str(v) for v in xs_all], fontsize="small")
        ax.grid(True, alpha=0.3)
        if i % 4 == 0:
            ax.set_ylabel("%")
        if i >= 4:
            ax.set_xlabel(x_key)
    if others:
        handles, labels = fig.axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), fontsize="small")
    fig.suptitle(f"{grid.name}: metrics vs {x_key}", y=0.995 if not others else 0.93, fontsize="medium")
    fig.tight_layout(rect=(0, 0, 1, 0.9 if others else 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(out_path, buf.getvalue())


__all__ = [
    "AblationGrid",
    "AblationRow",
    "load_grid",
    "grid_from_dict",
    "training_key",
    "evaluation_key",
    "run_ablation",
    "plan",
    "ensure_trained",
    "evaluate_row",
    "write_ablation_table",
    "plot_sweep",
    "validate_row_config",
    "TRAINING_KEY_IGNORED",
]
