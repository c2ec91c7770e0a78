"""Parametric objects (washer, gear, screw, capsule, cap, bracket, knob, tag) on a background, and the
family -> renderer table."""

from __future__ import annotations

import numpy as np

from dpdiff.data.synthetic._common import Size, _box_sdf, _col, _coverage, _grid, _hw, _lerp, _px, _rotate, _smooth
from dpdiff.data.synthetic.categories import _BG_COLOURS, SHAPES
from dpdiff.data.synthetic.scenes import (
    _cells,
    _illumination,
    _lit,
    _render_bricks,
    _render_chip,
    _render_dots,
    _render_grid,
    _render_knurled,
    _render_leather,
    _render_marble,
    _render_nut,
    _render_stripes,
    _render_terrazzo,
    _render_tiles,
    _render_wood,
    _Scene,
    _traces,
    _vignette,
    _window,
)

#: layout -> (instance centres, instance scale)
_LAYOUT_SLOTS = {
    "single": (((0.0, 0.0),), 1.0),
    "pair": (((-0.48, 0.0), (0.48, 0.0)), 0.5),
    "quad": (((-0.48, -0.48), (0.48, -0.48), (-0.48, 0.48), (0.48, 0.48)), 0.44),
}


def _background(kind: str, rng: np.random.Generator, S: Size, light: np.ndarray) -> np.ndarray:
    colour = _col(*_BG_COLOURS[kind])
    if kind == "pcb":
        img = colour * _traces(S) * (1 + 0.03 * _smooth(rng, S, 8))[..., None]
    elif kind == "cloth":
        X, Y = _grid(S)
        f = np.float32(np.pi * min(40.0, _px(S) / 5.0))
        weave = 0.92 + 0.05 * np.cos(X * f) * np.cos(Y * f) + 0.04 * _smooth(rng, S, 6)
        img = colour * weave[..., None]
    else:
        img = colour * _vignette(S)
    return _lit(img, light)


def _shape_sdf(p: dict, u: np.ndarray, v: np.ndarray, R: float, S: Size):
    """Signed distance (units, < 0 inside) of one instance and its detail maps: ``dark`` (recesses,
    grooves; darkens) and ``accent`` (printed or two-tone parts in the secondary colour), in [0, 1]."""
    shape = p["shape"]
    rho = np.sqrt(u * u + v * v) + 1e-6
    zero = np.zeros_like(u)
    dark, accent = zero, zero
    if shape == "washer":
        ri = p["inner"] * R
        d = np.maximum(rho - R, ri - rho)
        g = (rho - (R + ri) / 2) * (1 / (0.03 * R))
        dark = 0.3 * np.exp(-(g * g))
    elif shape == "gear":
        phi = np.arctan2(v, u)
        teeth = np.clip(1.8 * np.cos(p["teeth"] * phi), -1, 1) * 0.5 + 0.5
        d = np.maximum(rho - R * (0.8 + 0.2 * teeth), 0.2 * R - rho)
        g = (rho - 0.45 * R) * (1 / (0.025 * R))
        dark = 0.35 * np.exp(-(g * g))
    elif shape == "screw":
        d = rho - 0.85 * R
        slot = _box_sdf(u, v, 0.5 * R, 0.07 * R)
        if p["cross"]:
            slot = np.minimum(slot, _box_sdf(u, v, 0.07 * R, 0.5 * R))
        dark = 0.8 * _coverage(slot, S)
    elif shape == "capsule":
        d = _box_sdf(u, v, R, 0.42 * R, 0.42 * R)
        accent = np.clip(u * (_px(S) / 2) + 0.5, 0, 1)  # two-tone halves
        g = u * (1 / (0.02 * R))
        dark = 0.4 * np.exp(-(g * g))
    elif shape == "cap":
        d = rho - 0.92 * R
        phi = np.arctan2(v, u)
        dark = 0.35 * (rho > 0.78 * R) * (0.5 + 0.5 * np.cos(36 * phi))
        accent = _coverage(np.abs(rho - 0.4 * R) - 0.05 * R, S)
    elif shape == "bracket":
        d = _box_sdf(u, v, 0.72 * R, 0.72 * R, 0.15 * R)
        holes = np.sqrt((np.abs(u) - 0.46 * R) ** 2 + (np.abs(v) - 0.46 * R) ** 2) - 0.11 * R
        d = np.maximum(d, -np.minimum(holes, _box_sdf(u, v, 0.25 * R, 0.06 * R)))
    elif shape == "knob":
        phi = np.arctan2(v, u)
        d = rho - R * (0.8 + 0.14 * np.cos(p["lobes"] * phi))
        accent = _coverage(rho - 0.25 * R, S)
    elif shape == "tag":  # rounded equilateral triangle with a hole
        k = np.float32(np.sqrt(3.0))
        r = 0.8 * R
        px, py = np.abs(u) - r, -v + r / k
        flip = px + k * py > 0
        px, py = np.where(flip, (px - k * py) / 2, px), np.where(flip, (-k * px - py) / 2, py)
        px = px - np.clip(px, -2 * r, 0)
        d = -np.sqrt(px * px + py * py) * np.sign(py) - 0.12 * R
        d = np.maximum(d, 0.16 * R - rho)
    else:  # pragma: no cover
        raise ValueError(f"unknown shape {shape!r}")
    return d, dark, accent


def _material_colour_map(p: dict, u, v, d, R: float, lx: float, ly: float, rng, sl, S: Size) -> np.ndarray:
    """Surface colour (h, w, 3) of one instance: the material's shading under a light from (lx, ly)."""
    mat = p["material"]
    lin = (u * lx + v * ly) * (1 / R)
    bevel = np.clip(-d * (1 / (0.12 * R)), 0, 1)  # 0 on the outline, 1 inside
    colour = p["colour"]
    if mat == "metal":
        streak = _smooth(rng, S, max(8, _px(S) // 2), 3)[sl]
        hx, hy = u - 0.35 * R * lx, v - 0.35 * R * ly
        spec = 0.22 * np.exp(-(hx * hx + hy * hy) * (1 / (0.09 * R * R)))
        t = 0.78 + 0.14 * lin + 0.05 * streak
        col = colour * t[..., None] + spec[..., None]
    elif mat == "plastic":
        t = 0.9 + 0.06 * lin + 0.02 * _smooth(rng, S, 12)[sl]
        col = colour * t[..., None]
    elif mat == "rubber":
        t = 0.95 + 0.05 * lin + 0.1 * _smooth(rng, S, _cells(_px(S) / 3, S))[sl]
        col = colour * t[..., None]
    elif mat == "glossy":
        hx, hy = u - 0.45 * R * lx, v - 0.45 * R * ly
        spec = 0.45 * np.exp(-(hx * hx + hy * hy) * (1 / (0.03 * R * R)))
        col = colour * (0.86 + 0.08 * lin)[..., None] + spec[..., None]
    else:  # wood
        g = np.sin(u * (p["grain"] / R) + 2.0 * _smooth(rng, S, 4)[sl])
        col = _lerp(colour, colour * 0.7, 0.5 + 0.5 * g) * (0.92 + 0.06 * lin)[..., None]
    return col * (0.72 + 0.28 * bevel)[..., None]


def _render_object(p: dict, rng: np.random.Generator, S: Size) -> _Scene:
    X, Y = _grid(S)
    light = _illumination(rng, S)
    bg = _background(p["background"], rng, S, light)
    base = bg.copy()
    fg = np.zeros(_hw(S), np.float32)
    slots, scale = _LAYOUT_SLOTS[p["layout"]]
    la = p["light_angle"] + float(rng.normal(0, 0.25))
    for sx, sy in slots:
        R = 0.56 * scale * p["size"] * float(rng.uniform(0.97, 1.03))
        cx = sx + float(rng.uniform(-0.05, 0.05)) * scale
        cy = sy + float(rng.uniform(-0.05, 0.05)) * scale
        th = float(rng.uniform(-p["rotation"], p["rotation"]))
        sl = _window(cx, cy, 1.05 * R + 0.02, 1.05 * R + 0.02, S)
        u, v = _rotate(X[sl], Y[sl], cx, cy, th)
        d, dark, accent = _shape_sdf(p, u, v, R, S)
        cov = _coverage(d, S)
        lx, ly = float(np.cos(la - th)), float(np.sin(la - th))  # light fixed in the image frame
        col = _material_colour_map(p, u, v, d, R, lx, ly, rng, sl, S)
        col = _lerp(col, p["c1"] * (0.9 + 0.1 * lx), accent) * (1 - 0.6 * dark)[..., None]
        obj = _lit(col, light[sl])
        base[sl] += (obj - base[sl]) * cov[..., None]
        np.maximum(fg[sl], cov, out=fg[sl])
    return _Scene(base, fg, bg, True)


_RENDERERS = {
    "stripes": _render_stripes,
    "woven": _render_stripes,
    "leather": _render_leather,
    "grid": _render_grid,
    "plates": _render_grid,
    "wood": _render_wood,
    "marble": _render_marble,
    "tiles": _render_tiles,
    "dots": _render_dots,
    "terrazzo": _render_terrazzo,
    "bricks": _render_bricks,
    "knurled": _render_knurled,
    "nut": _render_nut,
    "chip": _render_chip,
    **{s: _render_object for s in SHAPES if s not in ("nut", "chip")},
}
