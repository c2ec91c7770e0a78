"""dpdiff.data has no import cycle (sub-packages included), and every public name is importable from its module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import dpdiff.data

PACKAGE = "dpdiff.data"
PACKAGE_DIR = Path(dpdiff.data.__file__).resolve().parent


def _module_name(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` (sub-packages included), counting imports inside
    functions too.

    ``from . import x`` counts as an import of the package itself (its ``__init__`` runs) and of
    ``x`` when ``x`` is a sub-module, as static import checkers do.
    """
    modules = {_module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base_parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                # the module itself, or its deepest ancestor that is a module of the package
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle found by a DFS (one per back edge), as module lists."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n) :] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycle_in_dpdiff_data():
    graph = import_graph()
    assert {
        "dpdiff.data.types",
        "dpdiff.data.readers",
        "dpdiff.data.readers.registry",
        "dpdiff.data.readers.realiad",
        "dpdiff.data.readers.realiad_variety_splits",
        "dpdiff.data.synthetic",
        "dpdiff.data.synthetic.writer",
    } <= set(graph)
    assert find_cycles(graph) == []


def test_cycle_finder_sees_the_cycles_it_must_refuse(tmp_path):
    """The checker itself: the two cycles this package used to have are reported."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "__init__.py").write_text("from .formats import load_samples\n")
    (d / "formats.py").write_text("from . import mvtec, realiad\n")
    (d / "mvtec.py").write_text("X = 1\n")
    (d / "realiad.py").write_text("def f():\n    from .realiad_variety_splits import S1\n")
    (d / "realiad_variety_splits.py").write_text("def g():\n    from .realiad import f\n")
    cycles = {tuple(c) for c in find_cycles(import_graph(d))}
    assert ("dpdiff.data", "dpdiff.data.formats", "dpdiff.data") in cycles
    assert ("dpdiff.data.realiad", "dpdiff.data.realiad_variety_splits", "dpdiff.data.realiad") in cycles


# the public names of each module, as one space-separated string each
PUBLIC = {
    "dpdiff.data": (
        "FORMATS LayoutError detect_format list_categories_for load_samples Sample load_dataset "
        "shared_data_dir generate_synthetic_dataset"
    ).split(),
    "dpdiff.data.types": "IMAGE_EXTENSIONS Sample is_image_file list_images".split(),
    "dpdiff.data.readers": (
        "FORMATS AUTO FormatSpec LayoutError MPDD_CATEGORIES detect_format list_categories_for load_samples"
    ).split(),
    "dpdiff.data.readers.registry": (
        "FORMATS AUTO FormatSpec LayoutError MPDD_CATEGORIES detect_format list_categories_for load_samples"
    ).split(),
    "dpdiff.data.readers.mvtec": "SPLITS list_categories load_split load_dataset find_mask count_samples".split(),
    "dpdiff.data.readers.generic": "LayoutError expect_dir expect_file load_generic".split(),
    "dpdiff.data.readers.realiad": (
        "RESOLUTIONS NORMAL_CLASS NG_WITHOUT_MASK find_json_dir list_categories list_variety_categories "
        "load_realiad load_realiad_variety object_id group_by_object object_scores REALIAD VARIETY"
    ).split(),
    "dpdiff.data.readers.realiad_variety_splits": "S1 S2 S3 SUBSETS SUBSET_NAMES FULL subset_categories".split(),
    "dpdiff.data.readers.visa": "SPLIT_CSV load_visa read_split_csv list_categories".split(),
    "dpdiff.data.readers.btad": "load_btad list_categories KO_DEFECT".split(),
    "dpdiff.data.synthetic": (
        "DEFECT_TYPES MIN_CHANGE MAX_AREA DEFECT_MIN_AREA PALETTES VARIANTS FAMILIES CategorySpec category_specs "
        "render_sample generate_synthetic_dataset ensure_synthetic_dataset read_marker"
    ).split(),
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_importable_first_in_a_fresh_interpreter(module):
    """Each module imported FIRST in a new interpreter (an import cycle fails in one order or another)."""
    code = (
        f"import {module} as m; missing = [n for n in {PUBLIC[module]!r} if not hasattr(m, n)]; "
        f"assert not missing, missing"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE_DIR.parents[1])
    assert r.returncode == 0, r.stderr


def test_layout_error_is_one_class_everywhere():
    from dpdiff.data import readers
    from dpdiff.data.readers import generic, layout, realiad, registry, visa

    assert readers.LayoutError is registry.LayoutError is generic.LayoutError is layout.LayoutError
    assert layout.LayoutError is dpdiff.data.LayoutError
    assert realiad.find_json_dir.__module__ == "dpdiff.data.readers.realiad_layout"
    assert visa.LayoutError is layout.LayoutError
