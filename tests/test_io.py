"""dpdiff.utils: io (atomic writes, JSON conversion, slugs), run_files, progress: the shared bottom layer."""

from __future__ import annotations

import ast
import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dpdiff.utils.io as dio
from dpdiff.utils import progress as progress_mod
from dpdiff.utils import run_files
from dpdiff.utils.io import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    new_file_mode,
    slugify,
    to_jsonable,
)

PACKAGE = Path(dio.__file__).resolve().parent


def _visible_and_temp(folder: Path) -> tuple[list[str], list[str]]:
    names = sorted(p.name for p in folder.iterdir())
    return [n for n in names if not n.endswith(dio.TEMP_SUFFIX)], [n for n in names if n.endswith(dio.TEMP_SUFFIX)]


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_the_file_creates_folders_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "b" / "model.bin"
    assert atomic_write_bytes(target, b"old") == target
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"new content"))
    assert target.read_bytes() == b"new content"
    assert _visible_and_temp(target.parent) == (["model.bin"], [])
    atomic_write_text(tmp_path / "t.txt", "h\u00e9llo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "h\u00e9llo\n"


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    target = tmp_path / "config.json"
    atomic_write_text(target, "old\n")

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_text("half a fi")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old\n"
    assert _visible_and_temp(tmp_path) == (["config.json"], [])


def test_the_file_and_then_its_folder_are_fsynced_before_returning(tmp_path, monkeypatch):
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(dio.os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(dio.os, "replace", lambda a, b: calls.append("replace") or real_replace(a, b))
    dirs: list[Path] = []
    real_dir = dio.fsync_dir
    monkeypatch.setattr(dio, "fsync_dir", lambda folder: dirs.append(Path(folder)) or real_dir(folder))
    atomic_write_bytes(tmp_path / "x.bin", b"1")
    assert calls[:2] == ["fsync", "replace"]  # data on disk before the rename makes it visible
    assert dirs == [tmp_path]  # then the rename itself


_KILL_MID_WRITE = r"""
import os, signal, sys
from pathlib import Path
from dpdiff.utils.io import atomic_write

def writer(tmp):
    with open(tmp, "wb") as fh:
        fh.write(b"partial")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)   # a hard crash in the middle of the write

atomic_write(Path(sys.argv[1]), writer)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_during_a_write_leaves_the_old_file_and_at_most_a_temp_file(tmp_path):
    target = tmp_path / "train_state.pt"
    atomic_write_bytes(target, b"the previous checkpoint")
    proc = subprocess.run([sys.executable, "-c", _KILL_MID_WRITE, str(target)], cwd=PACKAGE.parent, timeout=120)
    assert proc.returncode == -9
    assert target.read_bytes() == b"the previous checkpoint"
    visible, temps = _visible_and_temp(tmp_path)
    assert visible == ["train_state.pt"] and len(temps) == 1 and temps[0].startswith(".train_state.pt.")
    # what dpdiff.model.checkpoint.remove_stale_temp_files cleans up before a run folder is reused
    from dpdiff.model.checkpoint import remove_stale_temp_files

    assert [p.name for p in remove_stale_temp_files(tmp_path)] == temps
    assert _visible_and_temp(tmp_path) == (["train_state.pt"], [])


# ----------------------------------------------------------------------------- JSON


def test_to_jsonable_converts_numpy_torch_paths_tuples_and_sets():
    value = {
        1: np.float32(0.5),
        "a": (np.int64(3), Path("x/y")),
        "t": torch.tensor([1.5, 2.0]),
        "s": {7},
        "n": np.array([[1, 2]]),
        "b": np.bool_(True),
        "none": None,
    }
    out = to_jsonable(value)
    assert out == {"1": 0.5, "a": [3, "x/y"], "t": [1.5, 2.0], "s": [7], "n": [[1, 2]], "b": True, "none": None}
    assert type(out["a"][0]) is int and type(out["b"]) is bool
    json.dumps(out)  # plain JSON types only


def test_to_jsonable_leaves_unknown_objects_unless_a_fallback_is_given():
    class Thing:
        def __repr__(self) -> str:
            return "Thing()"

    assert isinstance(to_jsonable({"k": Thing()})["k"], Thing)
    assert to_jsonable({"k": [Thing()]}, fallback=repr) == {"k": ["Thing()"]}


def test_atomic_write_json_round_trips_non_finite_floats(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"auroc": np.float64(0.75), "nan": float("nan"), "p": Path("a")})
    back = json.loads(path.read_text())
    assert back["auroc"] == 0.75 and back["p"] == "a" and math.isnan(back["nan"])
    assert path.read_text().endswith("}\n")


# ----------------------------------------------------------------------------- slugs


@pytest.mark.parametrize(
    "name,expected",
    [
        ("screw/thread side", "screw_thread_side"),
        ("tf_efficientnet_lite0", "tf_efficientnet_lite0"),  # cache folder names of real backbones unchanged
        ("vit_base_patch14_reg4_dinov2.lvd142m", "vit_base_patch14_reg4_dinov2.lvd142m"),
        ("..hidden", "hidden"),  # never a hidden file
        ("a  b//c", "a_b_c"),  # one _ per run of unsafe characters
        ("_x_", "x"),
        ("\u00e9t\u00e9", "t"),  # non-ASCII letters are replaced
        ("", "x"),
        ("///", "x"),
    ],
)
def test_slugify(name, expected):
    assert slugify(name) == expected


def test_slugify_default_and_length():
    assert slugify("", default="row") == "row"
    assert slugify("a" * 100, max_length=60) == "a" * 60
    assert slugify(3) == "3"


# ----------------------------------------------------------------------------- run files


def test_run_file_names_are_the_ones_on_disk_and_re_exported_by_checkpoint():
    from dpdiff.model import checkpoint
    from dpdiff.training import trainer as train

    assert run_files.RUN_FILES == (
        "train_state.pt",
        "model.safetensors",
        "config.json",
        "loss_history.csv",
        "loss_curves.png",
        "validation.csv",
    )
    for name in ("MODEL_FILE", "CONFIG_FILE", "STATE_FILE", "RUN_FILES"):
        assert getattr(checkpoint, name) is getattr(run_files, name)
    assert train.HISTORY_FILE == run_files.HISTORY_FILE == "loss_history.csv"
    assert run_files.RESULTS_FILE == "results.json" and run_files.REPORT_FILE == "report.html"
    assert run_files.report_files_dir("/e/report.html") == Path("/e/report_files")


@pytest.mark.parametrize("module", ["io.py", "errors.py", "run_files.py", "progress.py"])
def test_bottom_layer_modules_import_nothing_from_dpdiff(module):
    tree = ast.parse((PACKAGE / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("dpdiff"), (module, ast.dump(node))
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("dpdiff") for a in node.names), module


@pytest.mark.parametrize(
    "helper", ["def _atomic", "def _fsync_dir", "def _jsonable", "def _safe(", "def _slug", "mkstemp", "os.replace("]
)
def test_no_copies_of_the_io_helpers_left_in_the_package(helper):
    hits = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name != "io.py" and helper in p.read_text(encoding="utf-8")
    ]
    assert hits == [], f"{helper!r} outside dpdiff/utils/io.py: {hits}"


# ----------------------------------------------------------------------------- progress bars


@pytest.fixture
def bars_default(monkeypatch):
    monkeypatch.delenv(progress_mod.NO_PROGRESS_ENV, raising=False)
    progress_mod.set_progress_enabled(True)
    yield
    progress_mod.set_progress_enabled(True)


def test_progress_bars_follow_the_switch_and_the_environment(bars_default, monkeypatch):
    assert progress_mod.progress_enabled()
    assert not progress_mod.progress(range(3), disable=False).disable
    assert progress_mod.progress(range(3), disable=True).disable  # a caller's own choice (worker rank) stays
    for value in ("1", "yes", "true"):
        monkeypatch.setenv(progress_mod.NO_PROGRESS_ENV, value)
        assert progress_mod.progress(range(3), disable=False).disable
    monkeypatch.setenv(progress_mod.NO_PROGRESS_ENV, "0")
    assert progress_mod.progress_enabled()
    progress_mod.set_progress_enabled(False)
    bar = progress_mod.progress(range(3), disable=False)
    assert bar.disable and list(bar) == [0, 1, 2]  # a disabled bar still iterates


def test_no_module_uses_tqdm_directly():
    hits = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name != "progress.py" and "tqdm" in p.read_text(encoding="utf-8")
    ]
    assert hits == [], f"tqdm used outside dpdiff/utils/progress.py (use dpdiff.utils.progress.progress): {hits}"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_mode_a_new_file_would(tmp_path, umask, mode):
    """Not mkstemp's 0600: a run folder written by one account must be readable by a service account."""
    old = os.umask(umask)
    try:
        for i, write in enumerate((atomic_write_text, atomic_write_bytes, atomic_write_json)):
            p = tmp_path / f"f{i}"
            write(p, {"a": 1} if write is atomic_write_json else ("x" if write is atomic_write_text else b"x"))
            assert stat.S_IMODE(p.stat().st_mode) == mode, (write.__name__, oct(p.stat().st_mode))
            assert new_file_mode() == mode
    finally:
        os.umask(old)
