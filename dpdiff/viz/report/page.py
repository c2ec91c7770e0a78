"""The report's HTML: ``template.html`` (package data: styles, the table-sorting script, the page skeleton)
filled with the metrics table and the figure sections. Images are embedded as PNG data URIs."""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from string import Template

from dpdiff.utils.run_files import RESULTS_FILE, RESULTS_STEM
from dpdiff.viz.report.figures import Figure

__all__ = ["Section", "render_page"]

TEMPLATE_FILE = "template.html"


def _esc(s) -> str:
    return html.escape(str(s), quote=True)


def _template() -> Template:
    return Template(resources.files(__package__).joinpath(TEMPLATE_FILE).read_text(encoding="utf-8"))


def metrics_table(results: dict) -> str:
    """The per-category metrics of ``results.json`` in percent (mean in the footer), sortable by the script."""
    cols = list(results.get("columns") or [])
    per = results.get("per_category") or {}
    if not cols and per:
        cols = list(next(iter(per.values())))

    def cells(row: dict) -> str:
        out = []
        for c in cols:
            value = row.get(c)
            try:
                f = None if value is None else float(value)
            except (TypeError, ValueError):
                f = None
            if f is None:  # not available (no defect masks) or not a number
                out.append('<td data-v="" title="not available">\u2014</td>')
                continue
            out.append(f'<td data-v="{f!r}">{"nan" if math.isnan(f) else f"{100 * f:.1f}"}</td>')
        return "".join(out)

    head = "".join(f"<th>{_esc(c)}</th>" for c in ["category", *cols])
    body = "\n".join(f'<tr><td data-v="{_esc(n)}">{_esc(n)}</td>{cells(r)}</tr>' for n, r in per.items())
    foot = ""
    if results.get("mean"):
        foot = f"<tfoot><tr><td>mean</td>{cells(results['mean'])}</tr></tfoot>"
    return (
        f'<table class="metrics" id="metrics"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>{foot}</table>'
    )


def figure_html(f: Figure) -> str:
    b64 = base64.b64encode(f.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{b64}" alt="{_esc(f.alt)}" data-file="{_esc(f.file)}">'
        f'<figcaption>{_esc(f.caption)} <a href="{_esc(f.file)}">PNG</a></figcaption></figure>'
    )


def protocol_line(results: dict) -> str:
    p = results.get("protocol") or {}
    inf = p.get("inference") or {}
    parts = [
        f"{k}={inf[k]}"
        for k in ("noise_step", "ddim_steps", "ensemble", "smoothing_sigma", "pool_size", "image_score")
        if k in inf
    ]
    parts += [f"{k}={p[k]}" for k in ("evaluation_resolution", "device", "fps_end_to_end") if k in p]
    return ", ".join(parts)


class Section:
    """A titled list of figures with an optional introduction (trusted HTML) and note (escaped)."""

    def __init__(self, title: str, figures: list[Figure], intro: str = "", note: str = ""):
        self.title, self.figures, self.intro, self.note = title, figures, intro, note

    def html(self) -> str:
        parts = [f"<h2>{_esc(self.title)}</h2>"]
        if self.intro:
            parts.append(f"<p>{self.intro}</p>")
        if self.note:
            parts.append(f'<p class="note">{_esc(self.note)}</p>')
        parts += [figure_html(f) for f in self.figures]
        return "\n".join(parts)


def render_page(run_dir: Path, eval_dir: Path, results: dict, sections: list[Section], data_note: str = "") -> str:
    """The whole self-contained HTML document."""
    return _template().substitute(
        run_name=_esc(Path(run_dir).name),
        run_dir=_esc(run_dir),
        eval_dir=_esc(eval_dir),
        created=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        protocol=_esc(protocol_line(results)),
        data_note=f'<p class="note">{_esc(data_note)}</p>' if data_note else "",
        results_file=_esc(RESULTS_FILE),
        results_stem=_esc(RESULTS_STEM),
        metrics_table=metrics_table(results),
        sections="\n".join(s.html() for s in sections),
    )
