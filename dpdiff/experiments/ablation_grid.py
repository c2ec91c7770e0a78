"""Ablation grids (``dpdiff ablate``): a grid file read into an :class:`AblationGrid` of :class:`AblationRow` s, and
the keys that decide what a row shares with the others: :func:`training_key` (one training per distinct key) and
:func:`evaluation_key`. The grid-file format and how a grid is run: :mod:`dpdiff.experiments.ablate`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dpdiff.config import (
    GRID_DIR,
    TEST_TIME,
    Config,
    ConfigError,
    find_yaml,
    flatten_config,
    is_weight_neutral,
    preset_names,
    sections_with_role,
    weight_neutral_keys,
)

__all__ = [
    "AblationGrid",
    "AblationRow",
    "GRID_KEYS",
    "TEST_TIME_SECTIONS",
    "TRAINING_KEY_IGNORED",
    "evaluation_key",
    "evaluation_overrides",
    "grid_from_dict",
    "load_grid",
    "sweep_row_name",
    "training_key",
    "validate_row_config",
]

#: Config keys left out of the training key: the weight-neutral keys of dpdiff/config.py (the ``inference``
#: and ``evaluation`` sections, device, workers, logging, checkpoint interval, feature cache), so e.g. another
#: device or noise step reuses a finished run.
TRAINING_KEY_IGNORED = weight_neutral_keys()
#: The sections evaluated per row (``inference``, ``evaluation``): they key the evaluation, not the training.
TEST_TIME_SECTIONS = sections_with_role(TEST_TIME)


# ----------------------------------------------------------------------------- config keys


def _hash(obj: Any, n: int = 12) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def training_key(cfg: Config) -> str:
    """Hash of the configuration values that determine the trained weights (12 hex digits)."""
    flat = flatten_config(cfg.to_dict())
    kept = {k: v for k, v in flat.items() if not is_weight_neutral(k)}
    return _hash(kept)


def evaluation_key(cfg: Config) -> str:
    """Hash of the training key and the test-time settings (inference, evaluation protocol); 8 hex digits."""
    d = cfg.to_dict()
    return _hash({"train": training_key(cfg), **{s: d[s] for s in TEST_TIME_SECTIONS}}, 8)


def evaluation_overrides(cfg: Config) -> dict[str, Any]:
    """Every ``inference.*`` and ``evaluation.*`` value of ``cfg`` as dotted overrides for ``evaluate``."""
    flat = flatten_config(cfg.to_dict())
    return {k: v for k, v in flat.items() if k.split(".", 1)[0] in TEST_TIME_SECTIONS}


# ----------------------------------------------------------------------------- the grid


@dataclass
class AblationRow:
    name: str
    overrides: dict[str, Any]  # the row's own settings (its ``set``, or its swept values)
    config: Config  # the resolved configuration
    sweep: dict[str, Any] = field(default_factory=dict)

    @property
    def train_key(self) -> str:
        return training_key(self.config)

    @property
    def eval_key(self) -> str:
        return evaluation_key(self.config)


@dataclass
class AblationGrid:
    name: str
    rows: list[AblationRow]
    source: str = "<dict>"
    base: str | None = None
    common: dict[str, Any] = field(default_factory=dict)
    cli_overrides: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)  # table header -> dotted config key
    sweep_keys: list[str] = field(default_factory=list)

    @property
    def is_sweep(self) -> bool:
        return bool(self.sweep_keys)


def _resolve_base(base: str, grid_dir: Path | None) -> Path:
    """A packaged preset by name (``mtd_lite0``), else a YAML path: absolute, or relative to the grid file's
    folder, a folder above it, or the cwd."""
    if base in preset_names():
        return find_yaml(base)
    p = Path(base).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        folders = [grid_dir, *grid_dir.parents] if grid_dir is not None else []
        candidates = [f / p for f in folders] + [Path.cwd() / p]
    for c in candidates:
        if c.is_file():
            return c
    moved = f"; the shipped presets are packaged now: use `base: {p.stem}`" if p.stem in preset_names() else ""
    raise FileNotFoundError(
        f"base preset {base!r} not found (packaged presets: {', '.join(preset_names())}; "
        f"looked in: {', '.join(str(c) for c in candidates)}){moved}"
    )


def _mapping(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a mapping of dotted.key: value, got {type(value).__name__}")
    return dict(value)


def validate_row_config(cfg: Config, where: str) -> None:
    """Combinations that would fail only after training are rejected up front (each value was checked on
    its own by :meth:`Config.validate` when the row was built)."""
    m, inf = cfg.model, cfg.inference
    has_protos = (m.use_local_prototypes and m.num_local_prototypes > 0) or (
        m.use_global_prototypes and m.num_global_prototypes > 0
    )
    if not m.diffusion and inf.scoring != "prototype":
        raise ConfigError(f"{where}: model.diffusion=false has no denoiser; set inference.scoring=prototype")
    if inf.scoring == "prototype" and not has_protos:
        raise ConfigError(f"{where}: inference.scoring=prototype needs local or global prototypes")
    if not m.diffusion and not has_protos:
        raise ConfigError(f"{where}: model.diffusion=false needs local or global prototypes")


def sweep_row_name(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in values.items())


GRID_KEYS = frozenset({"name", "base", "set", "columns", "rows", "sweep", "values", "description"})


def grid_from_dict(
    spec: dict, name: str, source: str = "<dict>", grid_dir: Path | None = None, overrides: dict[str, Any] | None = None
) -> AblationGrid:
    """Build the grid of ``spec`` (the YAML mapping); ``overrides`` (command line) apply to every row
    after the grid's own ``set`` and before each row's."""
    name = _grid_name(spec, name, source)
    cfg0, base, common, cli = _grid_base_config(spec, source, grid_dir, overrides)
    entries, sweep_keys = _grid_entries(spec, source)
    grid_rows = []
    for row_name, row_set, values in entries:
        try:
            cfg = cfg0.override(row_set)  # always a fresh copy, even for an empty `set`
        except KeyError as e:
            raise ConfigError(f"{source}: row {row_name!r}: {e.args[0]}") from None
        if cfg.data.root:
            cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
        validate_row_config(cfg, f"{source}: row {row_name!r}")
        grid_rows.append(AblationRow(row_name, row_set, cfg, values))
    columns = _grid_columns(spec.get("columns"), grid_rows, sweep_keys, source)
    return AblationGrid(name, grid_rows, source, base, common, cli, columns, sweep_keys)


def _grid_name(spec: dict, name: str, source: str) -> str:
    """The grid's name (``name:`` or the file stem) once ``spec``'s keys are checked."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{source}: a grid file must be a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown grid key(s) {unknown}; known: {sorted(GRID_KEYS)}")
    name = str(spec.get("name") or name)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ConfigError(f"{source}: grid name {name!r} must use letters, digits, '.', '_' or '-' (it names files)")
    return name


def _grid_base_config(
    spec: dict, source: str, grid_dir: Path | None, overrides: dict[str, Any] | None
) -> tuple[Config, str | None, dict, dict]:
    """The config every row starts from: the base preset, then the grid's ``set``, then ``overrides``;
    also the base preset's path and those two mappings."""
    base = spec.get("base")
    if base is not None:
        base_path = _resolve_base(str(base), grid_dir)
        cfg0 = Config.from_yaml(base_path)
        base = str(base_path)
    else:
        cfg0 = Config()
    common = _mapping(spec.get("set"), f"{source}: set")
    cli = dict(overrides or {})
    try:
        cfg0 = cfg0.override(common) if common else cfg0
        cfg0 = cfg0.override(cli) if cli else cfg0
    except KeyError as e:
        raise ConfigError(f"{source}: {e.args[0]}") from None
    if cfg0.data.root:
        cfg0.data.root = str(Path(cfg0.data.root).expanduser().resolve())
    return cfg0, base, common, cli


def _grid_entries(spec: dict, source: str) -> tuple[list[tuple[str, dict, dict]], list[str]]:
    """(name, overrides, sweep values) of every row, from ``rows`` or ``sweep``; and the swept keys."""
    has_rows, has_sweep = "rows" in spec, "sweep" in spec
    if has_rows == has_sweep:
        raise ConfigError(
            f"{source}: give either `rows` or `sweep` (with `values`), not {'both' if has_rows else 'neither'}"
        )
    entries: list[tuple[str, dict, dict]] = []
    sweep_keys: list[str] = []
    if has_rows:
        rows = spec["rows"]
        if not isinstance(rows, list) or not rows:
            raise ConfigError(f"{source}: `rows` must be a non-empty list of {{name: ..., set: {{...}}}}")
        for i, r in enumerate(rows):
            if not isinstance(r, dict) or "name" not in r or set(r) - {"name", "set"}:
                raise ConfigError(f"{source}: row {i + 1} must be {{name: ..., set: {{dotted.key: value}}}}, got {r!r}")
            entries.append((str(r["name"]), _mapping(r.get("set"), f"{source}: row {r['name']!r} set"), {}))
    else:
        axes = _sweep_axes(spec, source)
        sweep_keys = list(axes)
        for combo in itertools.product(*axes.values()):
            values = dict(zip(sweep_keys, combo, strict=True))
            entries.append((sweep_row_name(values), dict(values), values))
    names = [e[0] for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{source}: row names must be unique, repeated: {dup}")
    return entries, sweep_keys


def _sweep_axes(spec: dict, source: str) -> dict[str, list]:
    """``sweep: key`` with ``values: [...]``, or ``sweep: {key: [...], ...}``, as key -> values."""
    sweep = spec["sweep"]
    if isinstance(sweep, str):
        if not isinstance(spec.get("values"), list) or not spec["values"]:
            raise ConfigError(f"{source}: `sweep: {sweep}` needs a non-empty list `values`")
        return {sweep: list(spec["values"])}
    if isinstance(sweep, dict) and sweep and "values" not in spec:
        axes = {str(k): v for k, v in sweep.items()}
        bad = [k for k, v in axes.items() if not isinstance(v, list) or not v]
        if bad:
            raise ConfigError(f"{source}: every swept key needs a non-empty list of values ({bad})")
        return axes
    raise ConfigError(f"{source}: `sweep` is a dotted key (with `values: [...]`) or a mapping key -> values")


def _grid_columns(columns: Any, grid_rows: list[AblationRow], sweep_keys: list[str], source: str) -> dict[str, str]:
    """Table header -> config key: the grid's ``columns``, else the swept keys, else the keys the rows set
    whose values differ between rows."""
    flat_rows = [flatten_config(r.config.to_dict()) for r in grid_rows]
    if columns is None:
        if sweep_keys:
            columns = {k: k for k in sweep_keys}
        else:
            keys = list(dict.fromkeys(k for r in grid_rows for k in r.overrides))
            columns = {k: k for k in keys if len({json.dumps(f.get(k), default=str) for f in flat_rows}) > 1}
    else:
        columns = _mapping(columns, f"{source}: columns")
        missing = [f"{h}: {k}" for h, k in columns.items() if k not in flat_rows[0]]
        if missing:
            raise ConfigError(f"{source}: columns name unknown config keys: {missing}")
    return {str(h): str(k) for h, k in columns.items()}


def load_grid(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> AblationGrid:
    """Read a grid: a packaged one by name (``table5_modules``, see :func:`dpdiff.config.grid_names`) or a YAML
    file (module docstring); ``overrides`` are command-line ``--set``/``--data`` values."""
    path = find_yaml(name_or_path, GRID_DIR, "ablation grid")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    return grid_from_dict(spec, path.stem, str(path), path.resolve().parent, overrides)
