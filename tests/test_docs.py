"""The documentation site (mkdocs.yml, docs/, `make docs`): it builds offline with warnings as errors, its pages
hold what they are generated from (every config key, the public API, every benchmark results folder, README's
own-images commands), and the link checker for the Markdown outside docs/ finds broken links and anchors."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from dpdiff.config import config_keys

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str) -> ModuleType:
    """A module of tools/ (not a package: loaded from its file)."""
    spec = importlib.util.spec_from_file_location(f"_tools_{name}", REPO / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site as `make docs` builds it (strict: a warning, broken link or anchor fails), in a temporary folder."""
    pytest.importorskip("mkdocs", reason="the docs requirements (requirements-docs.txt) are not installed")
    out = tmp_path_factory.mktemp("site")
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}
    mkdocs = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    proc = subprocess.run(mkdocs, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _text(html: str) -> str:
    """The visible text of a page (tags dropped, entities of the config table decoded)."""
    text = re.sub(r"<[^>]+>", "", html)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")


def test_configuration_page_lists_every_key(site):
    """The configuration page of the built site has a row for every key of dpdiff.config (the committed
    Markdown being current is tests/test_config_docs.py)."""
    page = _text((site / "configuration.html").read_text(encoding="utf-8"))
    missing = [key for key in config_keys() if not re.search(rf"^{re.escape(key)}$", page, re.M)]
    assert not missing, f"keys missing from the site's configuration page: {missing}"


def test_api_page_documents_the_public_names(site):
    html = (site / "api.html").read_text(encoding="utf-8")
    for anchor in (
        "dpdiff.fit",
        "dpdiff.workflows.train.train",
        "dpdiff.workflows.evaluate.evaluate",
        "dpdiff.inference.predictor.Detector.predict",
        "dpdiff.inference.predictor.Detector.calibrate",
        "dpdiff.inference.predictor.Prediction",
        "dpdiff.inference.onnx_runtime.OnnxDetector",
        "dpdiff.inference.calibration.Thresholds",
        "dpdiff.config.load_config",
        "dpdiff.config.Config",
        "dpdiff.utils.errors.DpdiffError",
    ):
        assert f'id="{anchor}"' in html, anchor
    assert ":class:`" not in html and ":func:`" not in html  # Sphinx roles are rendered (tools/griffe_rst.py)


def test_every_results_folder_has_a_page(site):
    results = REPO / "benchmarks" / "results"
    folders = sorted(p.name for p in results.iterdir() if p.is_dir())
    assert folders, "no benchmark results folders"
    for name in folders:
        page = site / "results" / f"{name}.html"
        assert page.is_file(), f"no results page for benchmarks/results/{name}/"
    scale = _text((site / "results" / "scale.html").read_text(encoding="utf-8"))
    table = (results / "scale" / "scale_table_dpdiff.md").read_text(encoding="utf-8")
    delta = next(line for line in table.splitlines() if "Delta" in line)
    assert " ".join(c.strip() for c in delta.strip("|").split("|")[2:]) in " ".join(scale.split())
    assert (site / "results" / "scale" / "scale_plot.png").read_bytes() == (
        results / "scale" / "scale_plot.png"
    ).read_bytes()


def test_getting_started_includes_the_readme_commands(site):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- own-images:start -->\s*```bash\n(.*?)```", readme, re.S)
    assert block, "README.md has no own-images block"
    page = _text((site / "getting-started.html").read_text(encoding="utf-8"))
    for line in block.group(1).strip().splitlines():
        assert " ".join(line.split()) in " ".join(page.split()), line


def test_results_pages_are_generated_from_the_files(tmp_path):
    """tools/mkdocs_hooks.py on a results tree of its own: a new folder gets a page, a Markdown table is shown
    with its headings below the section's, a CSV as a table, a JSON folded, a PNG as an image."""
    hooks = _tool("mkdocs_hooks")
    base = tmp_path / "benchmarks" / "results"
    (base / "new_study" / "sub").mkdir(parents=True)
    links = "![plot](sub/curve.png), [notes](sub/notes.md#why), [web](https://example.org/a.md), [up](#a-table)"
    table = f"# A table\n\n| a |\n|---|\n| 1 |\n\n## Notes\n\n{links}\n\n```\n[code](x.md)\n```\n"
    (base / "new_study" / "table.md").write_text(table, encoding="utf-8")
    (base / "new_study" / "table.json").write_text("{}", encoding="utf-8")
    (base / "new_study" / "sub" / "curve.csv").write_text("x,y\n1,2|3\n", encoding="utf-8")
    (base / "new_study" / "sub" / "curve.png").write_bytes(b"\x89PNG")
    (base / "speed.json").write_text(json.dumps({"fps": 3.5}), encoding="utf-8")
    (base / "notes.txt").write_text("not a result kind", encoding="utf-8")

    pages = hooks.results_pages(tmp_path)
    assert [(p.name, p.uri) for p in pages] == [("new_study", "results/new_study.md"), ("other", "results/other.md")]
    text = hooks.page_markdown(pages[0], tmp_path)
    assert "## table\n" in text and "### A table" in text and "#### Notes" in text
    assert "[table.md](table.md.txt)" not in text and "[table.md](new_study/table.md.txt)" in text
    assert "| x | y |" in text and "| 1 | 2\\|3 |" in text  # the CSV's "|" escaped, not a new column
    assert "![sub/curve](new_study/sub/curve.png)" in text
    # the table's own links, written from its folder, work from the page's (results/)
    rebased = "![plot](new_study/sub/curve.png), [notes](new_study/sub/notes.md.txt), [web](https://example.org/a.md)"
    assert rebased + ", [up](#a-table)" in text and "\n[code](x.md)\n" in text
    assert text.index("## table") < text.index("## sub/curve")  # the folder's own files before its sub-folders'
    other = hooks.page_markdown(pages[1], tmp_path)
    assert '??? note "speed.json"' in other and '\n      "fps": 3.5\n' in other
    assert "notes.txt" not in other


def test_demoted_headings_leave_code_alone():
    hooks = _tool("mkdocs_hooks")
    text = "# Title\n```bash\n# a comment\n```\n## Part\n"
    assert hooks._demoted(text, top=3) == "### Title\n```bash\n# a comment\n```\n#### Part"


def test_sphinx_roles_become_code_spans():
    griffe_rst = _tool("griffe_rst")
    text = "See :class:`~dpdiff.config.Config` and :func:`fit`, :mod:`dpdiff.inference.predictor`::\n\n    x = 1\n"
    assert griffe_rst.markdown_docstring(text) == (
        "See `Config` and `fit`, `dpdiff.inference.predictor`:\n\n    x = 1\n"
    )


def test_link_checker_reports_broken_links_and_anchors(tmp_path):
    checker = _tool("check_md_links")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## Options beyond the paper (off by default)\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "[ok](docs/page.md) [ok anchor](docs/page.md#options-beyond-the-paper-off-by-default) [web](https://x.y/z)\n"
        "[gone](docs/missing.md)\n"
        "[bad anchor](docs/page.md#options)\n"
        "`[in code](docs/missing2.md)`\n"
        "```\n[in a fence](docs/missing3.md)\n```\n",
        encoding="utf-8",
    )
    problems = checker.broken_links(readme)
    assert len(problems) == 2, problems
    assert "README.md:2" in problems[0] and "docs/missing.md" in problems[0]
    assert "README.md:3" in problems[1] and "#options" in problems[1]
    assert checker.main([str(readme)]) == 1
    assert checker.main([str(tmp_path / "docs" / "page.md")]) == 0


def test_repository_markdown_links_resolve():
    """README.md, CONTRIBUTING.md and CHANGELOG.md (read on GitHub, not built by MkDocs) link to what exists."""
    checker = _tool("check_md_links")
    files = [REPO / name for name in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md")]
    problems = [problem for path in files for problem in checker.broken_links(path)]
    assert not problems, problems
