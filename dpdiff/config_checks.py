"""One configuration value against its declaration: the type from the section's annotation, the ``choices``
and the numeric bounds of its field metadata (``dpdiff.config._setting``). :func:`check_value` raises a
:class:`ConfigError` naming the key, the value and what is allowed; :func:`type_text` and :func:`bounds_text`
say what is allowed in words (the error messages and ``docs/configuration.md`` use the same words).

A bottom-layer module beside ``dpdiff.config``: it imports nothing from dpdiff but ``dpdiff.utils.errors``.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from dpdiff.utils.errors import ConfigError

_HINTS: dict[type, dict[str, Any]] = {}


def field_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a config section class (computed once per class)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def type_text(hint: Any) -> str:
    """``list[int] | None`` -> ``"a list of int, or null"`` (YAML words: null, true/false)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        parts = [type_text(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (", or null" if type(None) in args else "")
    origin = typing.get_origin(hint)
    if origin is list:
        return f"a list of {type_text(args[0])}" if args else "a list"
    if hint is dict or origin is dict:
        return "a mapping"
    if hint is bool:
        return "bool (true/false)"
    return getattr(hint, "__name__", str(hint))


def type_ok(value: Any, hint: Any) -> bool:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(type_ok(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # an int is a valid float (YAML `lr: 1`)
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, (list, tuple)) and (item is Any or all(type_ok(v, item) for v in value))
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return isinstance(value, hint)


def _number_hint(value: Any, hint: Any) -> str:
    """How to write a value YAML read as the wrong type: text where a number belongs ('1e3': YAML 1.1 reads
    exponent numbers without a dot and a signed exponent as text), numbers where text belongs (BTAD's `01`)."""
    wants_text = hint is str or any(a is str or str in typing.get_args(a) for a in typing.get_args(hint))
    if wants_text and not isinstance(value, str):
        return "; quote text values in YAML, e.g. '01'"
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    wants_int = hint is int or int in typing.get_args(hint)
    if wants_int and number.is_integer():
        return f"; YAML reads {value!r} as text: write the integer {int(number)}"
    if not wants_int:
        return f"; YAML reads {value!r} as text: write {number!r}"
    return ""


def bounds_text(meta: Mapping) -> str:
    lo = (">= " + _num(meta["ge"])) if "ge" in meta else ("> " + _num(meta["gt"])) if "gt" in meta else ""
    hi = ("<= " + _num(meta["le"])) if "le" in meta else ("< " + _num(meta["lt"])) if "lt" in meta else ""
    return " and ".join(p for p in (lo, hi) if p)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _in_bounds(value: float, meta: Mapping) -> bool:
    checks = (
        ("ge", lambda b: value >= b),
        ("gt", lambda b: value > b),
        ("le", lambda b: value <= b),
        ("lt", lambda b: value < b),
    )
    return all(test(meta[name]) for name, test in checks if name in meta)  # NaN fails every bound


def check_value(key: str, value: Any, hint: Any, meta: Mapping, where: str) -> None:
    if not type_ok(value, hint):
        raise ConfigError(
            f"{where}{key}: expected {type_text(hint)}, got {value!r} ({type(value).__name__})"
            f"{_number_hint(value, hint)}"
        )
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}{key}: {value!r} is not allowed; choose one of {', '.join(choices)}")
    bounds = bounds_text(meta)
    # a list (an [height, width] size) is bounded element by element
    items = value if isinstance(value, (list, tuple)) else [value]
    if bounds and not all(_in_bounds(v, meta) for v in items):
        raise ConfigError(f"{where}{key}: must be {bounds}, got {value!r}")


def check_relations(cfg: Any, where: str) -> None:
    """The relations between keys of a ``Config``: hidden_dim divisible, beta_start <= beta_end, noise_step < T."""
    m, inf = cfg.model, cfg.inference
    for divisor, why in ((m.num_heads, "model.num_heads (attention heads)"), (4, "4 (2-D sincos position embedding)")):
        if m.hidden_dim % divisor:
            raise ConfigError(
                f"{where}model.hidden_dim: {m.hidden_dim} is not divisible by {why}; "
                f"use a multiple of {math.lcm(m.num_heads, 4)}"
            )
    if m.beta_start > m.beta_end:
        raise ConfigError(f"{where}model.beta_start: {m.beta_start} is above model.beta_end {m.beta_end}")
    for key, size in (
        ("backbone.image_size", cfg.backbone.image_size),
        ("evaluation.resolution", cfg.evaluation.resolution),
    ):
        if isinstance(size, list) and len(size) != 2:
            raise ConfigError(f"{where}{key}: expected one int or [height, width], got {size!r}")
    if cfg.data.roi is not None:
        check_roi(cfg.data.roi, where)
    if cfg.data.tiling is not None:
        check_tiling(cfg.data.tiling, where)
        if inf.image_gaussian_weight:
            raise ConfigError(
                f"{where}inference.image_gaussian_weight: {inf.image_gaussian_weight} is not supported with "
                "data.tiling (a tiled image is scored from its stitched map); set inference.image_gaussian_weight=0"
            )
    if inf.noise_step >= m.num_timesteps:
        raise ConfigError(
            f"{where}inference.noise_step: must be < model.num_timesteps ({m.num_timesteps}), "
            f"got {inf.noise_step} (0-based index of t)"
        )


#: Largest ``data.tiling.overlap`` (as ``dpdiff.data.tiling.MAX_OVERLAP``, which this module cannot import).
MAX_TILE_OVERLAP = 0.9


def check_tiling(value: Any, where: str = "") -> None:
    """``data.tiling``: null, ``{tile: [h, w] | n, overlap}`` or ``{grid: [rows, cols], overlap}`` (positive ints,
    overlap in [0, 0.9], default 0.25). The one rule: the config check and ``dpdiff.data.tiling.TilingSpec.parse``
    use it."""
    if value is None:
        return
    form = "null, {tile: [h, w], overlap: 0.25} or {grid: [rows, cols], overlap: 0.25}"
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}data.tiling must be {form}, got {value!r}")
    unknown = sorted(set(map(str, value)) - {"tile", "grid", "overlap"})
    if unknown:
        raise ConfigError(f"{where}data.tiling: unknown keys {unknown}; expected tile or grid, and overlap")
    has_tile, has_grid = value.get("tile") is not None, value.get("grid") is not None
    if has_tile == has_grid:
        raise ConfigError(
            f"{where}data.tiling needs exactly one of tile: [h, w] (pixels) or grid: [rows, cols], got {value!r}"
        )
    overlap = value.get("overlap", 0.25)
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0.0 <= overlap <= MAX_TILE_OVERLAP:
        raise ConfigError(
            f"{where}data.tiling.overlap must be in [0, {MAX_TILE_OVERLAP}] (a fraction of the tile), got {overlap!r}"
        )
    name = "tile" if has_tile else "grid"
    pair = value[name]
    pair = [pair, pair] if isinstance(pair, int) and not isinstance(pair, bool) else pair
    ok = isinstance(pair, (list, tuple)) and len(pair) == 2
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        raise ConfigError(f"{where}data.tiling.{name} must be two positive integers [h, w], got {value[name]!r}")


def check_roi(roi: Any, where: str = "") -> None:
    """``data.roi``: four finite numbers [x0, y0, x1, y1] with x0 < x1, y0 < y1; all integers = pixels (>= 0), else
    fractions in [0, 1]. The one rule: the config check and :class:`dpdiff.data.geometry.ImageGeometry` use it."""
    values = tuple(roi) if isinstance(roi, (list, tuple)) else ()
    if len(values) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}data.roi: expected [x0, y0, x1, y1] (pixels or fractions of the image), got {roi!r}")
    if not all(math.isfinite(float(v)) for v in values):
        raise ConfigError(f"{where}data.roi: values must be finite, got {roi!r}")
    x0, y0, x1, y1 = values
    if not (x0 < x1 and y0 < y1):
        raise ConfigError(f"{where}data.roi: need x0 < x1 and y0 < y1 (a box [x0, y0, x1, y1]), got {roi!r}")
    if all(isinstance(v, int) for v in values):
        if x0 < 0 or y0 < 0:
            raise ConfigError(f"{where}data.roi: pixel coordinates must be >= 0, got {roi!r}")
    elif not all(0.0 <= float(v) <= 1.0 for v in values):
        raise ConfigError(
            f"{where}data.roi: {roi!r} holds a non-integer, so it is read as fractions of the image, which must "
            f"lie in [0, 1]; write a pixel box with integers only (e.g. [100, 40, 900, 420])"
        )


__all__ = [
    "field_hints",
    "type_text",
    "type_ok",
    "bounds_text",
    "check_value",
    "check_relations",
    "check_roi",
    "check_tiling",
]
