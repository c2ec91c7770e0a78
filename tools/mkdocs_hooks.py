"""MkDocs hooks (``hooks:`` in mkdocs.yml): the benchmark results pages, generated from ``benchmarks/results/``
at build time so that the site shows exactly what is committed there (nothing copied by hand).

One page per top-level folder of ``benchmarks/results/`` (``results/<folder>.md``) and one for the files at its
top (``results/other.md``). Each result (the files that share a path without their suffix: ``x.md``, ``x.csv``,
``x.json``, ``x.png``) is one section, headed by its path: the committed Markdown table when there is one (its
headings moved below the section's), else the CSV as a table, else the JSON in a folded block; its PNG plot
below; links to the raw files, which are copied into the site beside the page. The pages are appended to the
``Results`` section of the navigation, so a new results folder gets its page with no edit here.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.livereload import LiveReloadServer
from mkdocs.structure.files import File, Files

#: where the results live, relative to the folder of mkdocs.yml
RESULTS = Path("benchmarks") / "results"
#: where their pages go in the site (under docs_dir, generated)
PAGES = "results"
#: the navigation section the pages are appended to
NAV_SECTION = "Results"
#: the file kinds a result may have, in the order they are shown
SUFFIXES = (".md", ".csv", ".json", ".png")
#: a short description of the known folders (a new folder is shown without one)
ABOUT = {
    "accuracy": "The shipped preset against kNN memory banks on the same tokens, with the estimator variants and "
    "the extra trainings (`benchmarks/accuracy.py`); read with the reproduction record, "
    '"The score as an estimator".',
    "ablations": "The paper's ablation grids (Table 5, Fig. 6, Table 9, Fig. 5) and two checks the paper does not "
    "have (seed spread, noise-draw reduction) on the Magnetic Tile data and on synthetic categories "
    "(`benchmarks/ablations.py`).",
    "scale": "The category-scale protocol on synthetic data (paper Table 2, `dpdiff scale`): one model per "
    "category count N, DPDiff-AD and the kNN baseline on the same tokens; the per-N results follow the tables.",
    "": "The results written at the top of `benchmarks/results/`: speed, export, serving, AUPRO, token grid and "
    "reader checks (`benchmarks/*.py`, one file each).",
}
_HEADING = re.compile(r"^(#{1,6})(\s)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK_TARGET = re.compile(r"(\]\()([^)\s]+)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@dataclass(frozen=True)
class ResultsPage:
    """One generated page: its site path (``results/<name>.md``), title and the files it shows."""

    name: str
    folder: str  # relative to RESULTS; "" for the top-level files
    files: tuple[Path, ...]

    @property
    def uri(self) -> str:
        return f"{PAGES}/{self.name}.md"

    @property
    def title(self) -> str:
        return f"{self.folder}/" if self.folder else "Other results"


def results_pages(root: Path) -> list[ResultsPage]:
    """The pages for the results under ``root`` (the repository): one per top-level folder, then the top files."""
    base = root / RESULTS
    if not base.is_dir():
        return []
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(p for p in base.rglob("*") if p.is_file() and p.suffix in SUFFIXES):
        rel = path.relative_to(base)
        groups[rel.parts[0] if len(rel.parts) > 1 else ""].append(path)
    names = sorted(k for k in groups if k)
    pages = [ResultsPage(name, name, tuple(groups[name])) for name in names]
    if groups[""]:
        pages.append(ResultsPage("other", "", tuple(groups[""])))
    return pages


def _demoted(markdown: str, top: int) -> str:
    """``markdown`` with its headings moved down so that the highest one is at level ``top`` (code untouched)."""
    lines = markdown.splitlines()
    levels, fenced = [], False
    for line in lines:
        fenced ^= bool(_FENCE.match(line))
        if not fenced and (m := _HEADING.match(line)):
            levels.append(len(m.group(1)))
    shift = top - min(levels) if levels else 0
    out, fenced = [], False
    for line in lines:
        fenced ^= bool(_FENCE.match(line))
        if not fenced and shift > 0 and _HEADING.match(line):
            line = "#" * min(6, len(line) - len(line.lstrip("#")) + shift) + line.lstrip("#")
        out.append(line)
    return "\n".join(out)


def _csv_table(text: str) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return "*(empty file)*"

    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([row(rows[0]), "|" + "---|" * len(rows[0]), *(row(r) for r in rows[1:])])


def _json_block(text: str, name: str) -> str:
    try:
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except json.JSONDecodeError as err:  # shown as it is: a broken file is not hidden from the reader
        name = f"{name} (not valid JSON: {err})"
    body = "\n".join("    " + line for line in ["```json", *text.splitlines(), "```"])
    return f'??? note "{name}"\n\n{body}'


def page_markdown(page: ResultsPage, root: Path) -> str:
    """The Markdown of one results page: a section per result, its files linked (copied beside the page)."""
    base = root / RESULTS
    folder = f"benchmarks/results/{page.folder}/" if page.folder else "benchmarks/results/"
    parts = [
        f"# Benchmark results: {page.title}",
        "",
        f"Generated from `{folder}` when the site is built (`tools/mkdocs_hooks.py`): the committed files as they "
        "are. What each script measures and how to rerun it: [Benchmarks](../benchmarks.md).",
    ]
    if about := ABOUT.get(page.folder):
        parts += ["", about]
    stems: dict[Path, dict[str, Path]] = defaultdict(dict)
    for path in page.files:
        rel = path.relative_to(base)
        stems[rel.with_suffix("")][path.suffix] = path
    # the folder's own files first, then its sub-folders' (a table before the per-N results it sums up)
    for stem in sorted(stems, key=lambda s: (len(s.parts), str(s))):
        kinds = stems[stem]
        shown = stem.relative_to(page.folder) if page.folder else stem  # the page's title names the folder
        parts += ["", f"## {shown.as_posix()}", ""]
        links = [f"[{stem.name}{suffix}]({_site_path(stem, suffix)})" for suffix in SUFFIXES if suffix in kinds]
        parts += ["Files: " + ", ".join(links), ""]
        if ".md" in kinds:
            own_folder = "" if stem.parent == Path() else stem.parent.as_posix()
            text = _rebased(kinds[".md"].read_text(encoding="utf-8"), own_folder)
            parts.append(_demoted(text, top=3))
        elif ".csv" in kinds:
            parts.append(_csv_table(kinds[".csv"].read_text(encoding="utf-8")))
        elif ".json" in kinds:
            parts.append(_json_block(kinds[".json"].read_text(encoding="utf-8"), f"{stem.name}.json"))
        if ".png" in kinds:
            parts += ["", f"![{shown.as_posix()}]({_site_path(stem, '.png')})"]
    return "\n".join(parts) + "\n"


def _site_path(stem: Path, suffix: str) -> str:
    """A raw file's link from its page (``results/<name>.md``): :func:`on_files` copies the file to
    ``results/<stem><suffix>`` (a Markdown file with ``.txt`` added, so that it is not built as a page)."""
    return f"{stem.as_posix()}{suffix}" + (".txt" if suffix == ".md" else "")


def _rebased(markdown: str, folder: str) -> str:
    """A results Markdown file's relative links (``![plot](plot.png)``), written from its own folder, rewritten
    from its page's (``results/``), where the file is shown; a link to another results Markdown file goes to its
    ``.md.txt`` copy. Links with a scheme, anchors and code are left as they are."""
    if not folder:
        return markdown

    def rebase(match: re.Match[str]) -> str:
        target = match.group(2)
        if _SCHEME.match(target) or target.startswith(("#", "/")):
            return match.group(0)
        path, _, anchor = target.partition("#")
        path = f"{folder}/{path}" + (".txt" if path.endswith(".md") else "")
        return f"{match.group(1)}{path}{'#' + anchor if anchor and not path.endswith('.txt') else ''}"

    out, fenced = [], False
    for line in markdown.splitlines():
        fenced ^= bool(_FENCE.match(line))
        out.append(line if fenced else _LINK_TARGET.sub(rebase, line))
    return "\n".join(out)


def _root(config: MkDocsConfig) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Append the results pages to the navigation's ``Results`` section (an error when that section is gone)."""
    entries = [{page.title: page.uri} for page in results_pages(_root(config))]
    for item in config.nav or []:
        if isinstance(item, dict) and NAV_SECTION in item:
            item[NAV_SECTION] = list(item[NAV_SECTION]) + [{"Benchmark results": entries}]
            return config
    raise ValueError(f"mkdocs.yml: the nav has no {NAV_SECTION!r} section for the benchmark results pages")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """The generated pages, and every results file copied beside them (the Markdown ones as ``.md.txt``, which
    is shown as text, not built as a page)."""
    root = _root(config)
    base = root / RESULTS
    for page in results_pages(root):
        files.append(File.generated(config, page.uri, content=page_markdown(page, root)))
        for path in page.files:
            rel = path.relative_to(base).as_posix()
            uri = f"{PAGES}/{rel}.txt" if path.suffix == ".md" else f"{PAGES}/{rel}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_serve(server: LiveReloadServer, config: MkDocsConfig, builder: Callable[[], None]) -> LiveReloadServer:
    """``mkdocs serve`` rebuilds when a result changes."""
    server.watch(str(_root(config) / RESULTS))
    return server
