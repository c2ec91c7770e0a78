"""``build_report``: draw the report of an evaluation from its results and report data (no model runs here)."""

from __future__ import annotations

import csv
import html
import io
import json
import os
import shlex
import time
from pathlib import Path

from dpdiff.figure_data import PathMap, ReportData
from dpdiff.utils.errors import RunFolderError, UsageError
from dpdiff.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from dpdiff.utils.run_files import (
    EVAL_DIR,
    HISTORY_FILE,
    REPORT_DATA_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    TENSORBOARD_DIR,
    VALIDATION_FILE,
    report_files_dir,
)
from dpdiff.viz.report.figures import Figure, example_figures, loss_figures, proto_figures, tsne_figures
from dpdiff.viz.report.images import display_size
from dpdiff.viz.report.page import Section, render_page

__all__ = ["DISPLAY_MAX", "build_report", "check_report_target", "training_links"]

#: Largest side (px) of the images shown in the report (larger evaluation maps are downscaled for display).
DISPLAY_MAX = 256


def check_report_target(output: Path, overwrite: bool) -> Path:
    """The figures folder of the report ``output`` (``<stem>_files/``); raises when ``output`` is not an
    HTML path, or when it or a non-empty figures folder exists and not ``overwrite``."""
    output = Path(output)
    if output.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--output {output}: give a FILE.html path")
    files_dir = report_files_dir(output)
    if not overwrite:
        if output.exists():
            raise RunFolderError(f"{output} exists; pass --overwrite or choose another --output")
        if files_dir.is_dir() and any(files_dir.iterdir()):
            raise RunFolderError(f"{files_dir} is not empty; pass --overwrite or choose another --output")
    return files_dir


def _draw(
    data: ReportData, paths: PathMap, rel: str, files_dir: Path, history: list[dict] | None, timings: dict
) -> tuple[dict[str, list[Figure]], dict[str, str]]:
    """The figures of each section (examples, proto, tsne, loss) and the notes on what is left out."""
    size = display_size(data.map_size, DISPLAY_MAX)
    figs: dict[str, list[Figure]] = {"proto": [], "tsne": [], "loss": []}
    notes: dict[str, str] = {}
    t = time.perf_counter()
    figs["examples"] = example_figures(data, rel, paths, size)
    timings["examples_s"] = time.perf_counter() - t
    po = data.probe_outputs
    if not data.probes:
        notes["proto"] = notes["tsne"] = "no probe images in the report data"
    elif po is None:
        notes["proto"] = notes["tsne"] = (
            "no model outputs on the probe images in the report data (evaluated "
            "with --no-report): `dpdiff report` computes them"
        )
    else:
        t = time.perf_counter()
        if po.sim_local is None and po.sim_global is None:
            notes["proto"] = "this model has no prototypes (ablation): no similarity maps"
        else:
            figs["proto"] = proto_figures(data, rel, paths, size)
        timings["proto_s"] = time.perf_counter() - t
        t = time.perf_counter()
        figs["tsne"], note = tsne_figures(data, rel, files_dir)
        if note:
            notes["tsne"] = note
        timings["tsne_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if history:
        figs["loss"] = loss_figures(history, rel, files_dir)
    else:
        notes["loss"] = f"no {HISTORY_FILE} (training loss history) given: training curves left out"
    timings["loss_s"] = time.perf_counter() - t
    if data.maps_recomputed:
        notes["data"] = (
            f"{REPORT_DATA_FILE} absent: the maps shown were recomputed for this report (other noise "
            f"draws than the evaluation's; colour scale from the shown maps)"
        )
    return figs, notes


def _href(target: Path, html_dir: Path) -> str:
    """A link from the report's folder to ``target``: relative (the report and the run move together), or a
    ``file://`` URI where no relative path exists (another drive)."""
    try:
        return Path(os.path.relpath(target.absolute(), html_dir.absolute())).as_posix()
    except ValueError:
        return target.absolute().as_uri()


def training_links(run_dir: Path, html_dir: Path) -> str:
    """HTML (trusted) linking the run's training curves, those it has: ``loss_history.csv``, ``validation.csv``
    (``train.validate_every``) and the command that shows its TensorBoard events (``train.logger``); ``html_dir``:
    the report's folder. Empty when the run has none of them."""
    run_dir = Path(run_dir)
    parts = []
    for name, what in (
        (HISTORY_FILE, "the losses"),
        (VALIDATION_FILE, "validation metrics on test images while training, to watch it, not to pick a checkpoint"),
    ):
        if (run_dir / name).is_file():
            parts.append(f'<a href="{html.escape(_href(run_dir / name, html_dir))}">{name}</a> ({html.escape(what)})')
    events = run_dir / TENSORBOARD_DIR
    if events.is_dir() and any(events.rglob("events.out.tfevents.*")):
        command = f"tensorboard --logdir {shlex.quote(str(events))}"
        parts.append(f"TensorBoard: <code>{html.escape(command)}</code>")
    return "The run's curves: " + "; ".join(parts) + "." if parts else ""


def _sections(
    figs: dict[str, list[Figure]], notes: dict[str, str], data: ReportData, curves: str = ""
) -> list[Section]:
    k = data.examples_per_category
    fps = [f for f, e in zip(figs["examples"], data.examples, strict=True) if e["kind"] == "fp"]
    fns = [f for f, e in zip(figs["examples"], data.examples, strict=True) if e["kind"] == "fn"]
    return [
        Section(
            "Worst false positives",
            fps,
            f"The {k} highest-scoring <em>normal</em> test images of each category: image, anomaly map "
            f"(colour scale per category, as in <code>overlays/</code>).",
        ),
        Section(
            "Worst false negatives",
            fns,
            f"The {k} lowest-scoring <em>defective</em> test images of each category: image, ground-truth "
            f"contour (red), anomaly map with the contour.",
        ),
        Section(
            "Prototype similarity maps (Fig. 8)",
            figs["proto"],
            "Local (L-Proto) and global (G-Proto) prototypes: per token, the highest cosine similarity "
            "to any prototype of the image.",
            notes.get("proto", ""),
        ),
        Section("Tokens before and after reconstruction (t-SNE, Fig. 7)", figs["tsne"], "", notes.get("tsne", "")),
        Section("Training losses", figs["loss"], curves, notes.get("loss", "")),
    ]


def _write_examples_csv(data: ReportData, path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "category", "rank", "image", "defect", "score", "beyond_fraction", "png"])
    for e in data.examples:
        w.writerow(
            [
                e["kind"],
                e["category"],
                e["rank"] + 1,
                e["image"],
                e["defect"],
                repr(e["score"]),
                repr(e["beyond"]),
                e.get("png", ""),
            ]
        )
    atomic_write_text(path, buf.getvalue())


def build_report(
    run_dir: Path,
    eval_dir: Path | None = None,
    output: Path | None = None,
    overwrite: bool = False,
    data: ReportData | None = None,
    data_root: str | None = None,
    history: list[dict] | None = None,
    timings: dict[str, float] | None = None,
) -> dict:
    """Write the HTML report of an evaluated run; returns ``{"html", "files_dir", "figures", "seconds", ...}``.

    ``eval_dir`` (default ``RUN/eval``) must hold ``results.json``; ``data`` defaults to its
    ``report_data.npz`` (``dpdiff.workflows.report_inputs.prepare_report_data`` completes one that lacks the
    probe outputs); ``history``: the run's loss history rows (``dpdiff.training.trainer.load_history``), drawn
    when given; ``timings``: extra entries for ``report.json``. ``output`` defaults to ``EVAL/report.html``,
    its PNGs go to ``<output stem>_files/``; an existing report is kept unless ``overwrite``. ``data_root``
    re-roots the test image paths when the dataset moved.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    eval_dir = Path(eval_dir) if eval_dir else run_dir / EVAL_DIR
    out = Path(output) if output else eval_dir / REPORT_FILE
    files_dir = check_report_target(out, overwrite)
    res_path = eval_dir / RESULTS_FILE
    if not res_path.is_file():
        raise FileNotFoundError(f"{res_path} not found: evaluate the run first (dpdiff test {run_dir})")
    results = json.loads(res_path.read_text(encoding="utf-8"))
    data = data if data is not None else ReportData.load(eval_dir / REPORT_DATA_FILE)
    timings = dict(timings or {})
    files_dir.mkdir(parents=True, exist_ok=True)
    figs, notes = _draw(data, PathMap(data.data_root, data_root), files_dir.name, files_dir, history, timings)
    drawn = figs["examples"] + figs["proto"] + figs["tsne"]
    for f in drawn:  # (the loss PNG is already written)
        atomic_write_bytes(out.parent / f.file, f.png)
    _write_examples_csv(data, files_dir / "examples.csv")
    sections = _sections(figs, notes, data, training_links(run_dir, out.parent))
    atomic_write_text(out, render_page(run_dir, eval_dir, results, sections, notes.get("data", "")))
    figures = [f.file for f in drawn + figs["loss"]]
    summary = {
        "html": str(out),
        "files_dir": str(files_dir),
        "figures": figures,
        "categories": list((results.get("per_category") or {}).keys()),
        "notes": notes,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_json(files_dir / "report.json", summary)
    # the folder belongs to this report: figures of an earlier one (other categories ...) go, once the new
    # report is complete
    keep = (
        {Path(f).name for f in figures}
        | {"examples.csv", "report.json"}
        | ({"tsne_tokens.csv"} if figs["tsne"] else set())
    )
    for old in sorted(files_dir.iterdir()):
        if old.is_file() and old.suffix in (".png", ".csv", ".json") and old.name not in keep:
            old.unlink()
    return summary
