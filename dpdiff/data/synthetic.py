"""Procedural multi-category anomaly-detection dataset with planted defects.

Used by ``dpdiff demo`` and by tests: it needs no download, is written in the MVTec-AD layout
(readable by :mod:`dpdiff.data.mvtec`) and is deterministic (same ``seed`` -> same bytes).

Category families (cycled when ``num_categories`` exceeds their number; later cycles get a
numeric suffix, a rotated hue and different geometry so every category is distinct)::

    synth_stripes  texture  oriented stripes (odd cycles: woven fabric), phase/angle jitter
    synth_nut      object   hexagonal nut with a threaded hole and a marker, on a plain background
    synth_leather  texture  multi-scale granular blobs with creases
    synth_chip     object   IC package with pins and printed marks on a PCB-like background
    synth_grid     texture  brushed metal with a regular grid (perforations; odd cycles: checker plates)

Within-class variation: shift and small rotation (objects), random phase, angle jitter and
noise patterns (textures), brightness gain, low-frequency illumination and pixel noise. Noise
fields are random crops (offset + flips) of fixed per-size noise banks rather than fresh
upsampled noise: that, windowed defect/object rendering and a minimal PNG writer are what make
generation fast (~200 images/s rendered, ~120/s written, at 256 px on 2 shared CPU cores).

Defect types (test folders): ``scratch`` (thin curved line of different intensity), ``hole``
(dark or bright irregular ellipse), ``stain`` (colour-shifted smooth blob), ``missing_part``
(region replaced by the background / substrate) and ``foreign_object`` (small patch of a
different texture). Defects lie on the object for object categories and cover 0.3 %-5 % of the
image. The mask is exactly the set of pixels the defect changed: the defect is drawn on the
noise-free image, every pixel of the region is changed by at least :data:`MIN_CHANGE` (in [0, 1]
units, on some channel), then the same noise is added to the clean and the defective image, so
pixels outside the mask are bit-identical to the defect-free rendering
(see :func:`render_sample`).
"""
from __future__ import annotations

import colorsys
import json
import os
import shutil
import struct
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "FAMILIES",
    "DEFECT_TYPES",
    "MIN_CHANGE",
    "CategorySpec",
    "category_specs",
    "render_sample",
    "generate_synthetic_dataset",
]

FAMILIES = ("stripes", "nut", "leather", "chip", "grid")
DEFECT_TYPES = ("scratch", "hole", "stain", "missing_part", "foreign_object")
#: Minimum change (max over channels, [0, 1] units) of every pixel inside a defect mask.
MIN_CHANGE = 0.12
#: Allowed defect area as a fraction of the image.
MIN_AREA, MAX_AREA = 0.003, 0.05
_MARKER = ".dpdiff_synthetic.json"
# base images are kept inside this range so that noise rarely clips a defect away
_LO, _HI = 0.05, 0.95


# ----------------------------------------------------------------------------- helpers


@lru_cache(maxsize=8)
def _grid(S: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (x to the right, y down), float32 (S, S)."""
    c = ((np.arange(S, dtype=np.float32) + 0.5) / S) * 2.0 - 1.0
    X, Y = np.meshgrid(c, c)
    X.setflags(write=False)
    Y.setflags(write=False)
    return X, Y


@lru_cache(maxsize=64)
def _bank(S: int, cells: int, cells_x: int) -> np.ndarray:
    """A (2S, 2S) smooth-noise field of unit std (fixed seed) from which images take crops.

    ``cells == 0`` means white Gaussian noise. Cropping a shared bank instead of drawing and
    upsampling fresh noise for every image is what makes generation fast; the per-image random
    offset and flips keep images distinct.
    """
    rng = np.random.default_rng([7919, S, cells, cells_x])
    if cells == 0:
        a = rng.standard_normal((2 * S, 2 * S), dtype=np.float32)
    else:
        g = rng.standard_normal((2 * max(2, cells), 2 * max(2, cells_x)), dtype=np.float32)
        a = np.asarray(Image.fromarray(g).resize((2 * S, 2 * S), Image.Resampling.BICUBIC), dtype=np.float32)
        a = (a - a.mean()) / (a.std() + 1e-6)
    a.setflags(write=False)
    return a


def _smooth(rng: np.random.Generator, S: int, cells: int, cells_x: int | None = None) -> np.ndarray:
    """Smooth noise (S, S), about unit std, with ``cells`` correlation cells across the image
    (``cells_x`` horizontally if given; ``cells=0``: white noise). A read-only view."""
    bank = _bank(S, int(cells), int(cells if cells_x is None else cells_x))
    oy, ox, fy, fx = rng.integers(0, S + 1), rng.integers(0, S + 1), rng.integers(2), rng.integers(2)
    a = bank[oy:oy + S, ox:ox + S]
    return a[:: -1 if fy else 1, :: -1 if fx else 1]


def _col(*rgb: float) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32)


def _hue_rotate(c: np.ndarray, turns: float, sat_scale: float = 1.0) -> np.ndarray:
    h, l, s = colorsys.rgb_to_hls(*[float(x) for x in c])
    r, g, b = colorsys.hls_to_rgb((h + turns) % 1.0, l, min(1.0, s * sat_scale))
    return _col(r, g, b)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a + (b - a) * t[..., None]


def _coverage(sdf: np.ndarray, S: int) -> np.ndarray:
    """Antialiased coverage from a signed distance in [-1, 1] units (one pixel = 2/S)."""
    return np.clip(0.5 - sdf * (S / 2.0), 0.0, 1.0)


def _rotate(X: np.ndarray, Y: np.ndarray, cx: float, cy: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in a frame centred at (cx, cy) and rotated by ``theta``."""
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    dx, dy = X - np.float32(cx), Y - np.float32(cy)
    return c * dx + s * dy, -s * dx + c * dy


def _box_sdf(u: np.ndarray, v: np.ndarray, hx: float, hy: float, r: float = 0.0) -> np.ndarray:
    qx = np.abs(u) - (hx - r)
    qy = np.abs(v) - (hy - r)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0) - r


# ----------------------------------------------------------------------------- categories


@dataclass(frozen=True)
class CategorySpec:
    name: str
    family: str
    index: int
    params: dict = field(default_factory=dict, compare=False, hash=False)


def _family_params(family: str, cycle: int, rng: np.random.Generator) -> dict:
    """Hand-tuned defaults for cycle 0; later cycles rotate hue and change the geometry."""
    turn = (cycle * 0.381966) % 1.0  # golden-angle hue steps
    j = (lambda lo, hi: float(rng.uniform(lo, hi))) if cycle else (lambda lo, hi: (lo + hi) / 2)

    def hue(c):
        return _hue_rotate(_col(*c), turn) if cycle else _col(*c)

    if family == "stripes":
        return dict(
            angle=float(np.deg2rad(30.0 + (j(-60, 60) if cycle else 0.0))),
            freq=j(9, 15) if cycle else 11.0,
            woven=bool(cycle % 2),
            c0=hue((0.20, 0.25, 0.45)), c1=hue((0.80, 0.78, 0.65)), sigma=0.02,
        )
    if family == "nut":
        return dict(
            radius=j(0.50, 0.62) if cycle else 0.56, hole=j(0.20, 0.28) if cycle else 0.24,
            metal=hue((0.78, 0.62, 0.36)), bg=_col(0.14, 0.14, 0.16) if cycle % 2 == 0 else _col(0.86, 0.86, 0.84),
            sigma=0.015,
        )
    if family == "leather":
        return dict(
            base=hue((0.55, 0.33, 0.20)), grain=j(40, 72) if cycle else 56.0,
            crease=j(0.15, 0.3) if cycle else 0.22, sigma=0.02,
        )
    if family == "chip":
        return dict(
            body=_col(0.13, 0.13, 0.15), pin=_col(0.80, 0.80, 0.78), pcb=hue((0.12, 0.42, 0.22)),
            hx=j(0.38, 0.52) if cycle else 0.46, hy=j(0.24, 0.34) if cycle else 0.30,
            pins=int(rng.choice([5, 7, 9])) if cycle else 7, sigma=0.015,
        )
    if family == "grid":
        return dict(
            metal=hue((0.62, 0.64, 0.68)) if cycle else _col(0.62, 0.64, 0.68),
            pitch=j(0.18, 0.3) if cycle else 0.25, holes=cycle % 2 == 0,
            angle=float(np.deg2rad(j(-20, 20))) if cycle else 0.0, sigma=0.02,
        )
    raise ValueError(f"unknown family {family!r}")


def category_specs(num_categories: int, seed: int = 0) -> list[CategorySpec]:
    """Category names and parameters: families cycled, ``synth_<family>[_<cycle>]``."""
    if num_categories < 1:
        raise ValueError(f"num_categories must be >= 1, got {num_categories}")
    specs = []
    for i in range(num_categories):
        family = FAMILIES[i % len(FAMILIES)]
        cycle = i // len(FAMILIES)
        rng = np.random.default_rng([int(seed), 1000 + i])
        name = f"synth_{family}" + (f"_{cycle}" if cycle else "")
        specs.append(CategorySpec(name, family, i, _family_params(family, cycle, rng)))
    return specs


# ----------------------------------------------------------------------------- scenes


@dataclass
class _Scene:
    base: np.ndarray  # (S, S, 3) noise-free normal image in [_LO, _HI]
    fg: np.ndarray  # (S, S) object coverage (ones for textures)
    bg: np.ndarray  # (S, S, 3) what a missing part reveals (may be a broadcast view)
    is_object: bool


def _illumination(rng: np.random.Generator, S: int) -> np.ndarray:
    """Brightness gain times low-frequency illumination (part of the normal variation), (S, S, 1)."""
    gain = float(rng.uniform(0.93, 1.07))
    light = _smooth(rng, S, 3) * (0.04 * gain)
    light += gain
    return light[..., None]


def _lit(img: np.ndarray, light: np.ndarray) -> np.ndarray:
    out = img * light
    np.clip(out, _LO, _HI, out=out)
    return out.astype(np.float32, copy=False)


def _window(cx: float, cy: float, rx: float, ry: float, S: int) -> tuple[slice, slice]:
    """Pixel slices covering [cx - rx, cx + rx] x [cy - ry, cy + ry] (units), clipped to the image."""
    h = S / 2.0
    x0, x1 = int(np.floor((cx - rx + 1) * h)), int(np.ceil((cx + rx + 1) * h)) + 1
    y0, y1 = int(np.floor((cy - ry + 1) * h)), int(np.ceil((cy + ry + 1) * h)) + 1
    return slice(max(0, y0), min(S, max(0, y1))), slice(max(0, x0), min(S, max(0, x1)))


def _texture_scene(base: np.ndarray, substrate: np.ndarray) -> _Scene:
    S = base.shape[0]
    return _Scene(base, np.ones((S, S), np.float32), np.broadcast_to(substrate, base.shape), False)


def _render_stripes(p: dict, rng: np.random.Generator, S: int) -> _Scene:
    X, Y = _grid(S)
    th = p["angle"] + float(rng.normal(0, np.deg2rad(2.0)))
    f = p["freq"] * float(rng.uniform(0.98, 1.02)) * np.pi  # phase per unit (width 2 -> freq cycles)
    u, v = _rotate(X + 0.01 * _smooth(rng, S, 4), Y, 0.0, 0.0, th)
    pu = u * f + float(rng.uniform(0, 2 * np.pi))
    pv = v * f + float(rng.uniform(0, 2 * np.pi))
    if p["woven"]:
        iu, iv = np.floor(pu / (2 * np.pi)), np.floor(pv / (2 * np.pi))
        fu, fv = pu / (2 * np.pi) - iu, pv / (2 * np.pi) - iv
        checker = (iu + iv) % 2 == 0
        t = np.where(
            checker,
            (0.5 + 0.5 * np.cos(3 * pv)) * (0.55 + 0.45 * np.sin(np.pi * fu)),
            (0.5 + 0.5 * np.cos(3 * pu)) * (0.55 + 0.45 * np.sin(np.pi * fv)),
        )
    else:
        t = 0.5 + 0.4 * np.sin(pu) + 0.1 * np.sin(3 * pu)
        t *= 0.9 + 0.1 * np.cos(4 * pv)  # fine cross-hatching
    t += 0.08 * _smooth(rng, S, S // 4)
    np.clip(t, 0, 1, out=t)
    base = _lit(_lerp(p["c0"], p["c1"], t), _illumination(rng, S))
    dark = float((p["c0"] + p["c1"]).mean()) / 2 > 0.45
    return _texture_scene(base, _col(0.08, 0.08, 0.08) if dark else _col(0.9, 0.9, 0.88))


def _render_leather(p: dict, rng: np.random.Generator, S: int) -> _Scene:
    n = 0.55 * _smooth(rng, S, 6) + 0.3 * _smooth(rng, S, 20) + 0.35 * _smooth(rng, S, int(p["grain"] * S / 256) + 8)
    c = _smooth(rng, S, 10) * (1 / 0.12)
    t = 0.9 + (0.9 * 0.14 / 0.78) * n - (0.9 / 0.78 * p["crease"]) * np.exp(-(c * c))
    base = _lit(p["base"] * t[..., None], _illumination(rng, S))
    return _texture_scene(base, _col(0.9, 0.88, 0.82))


@lru_cache(maxsize=16)
def _vignette(S: int) -> np.ndarray:
    X, Y = _grid(S)
    a = (1.0 - 0.12 * (X * X + Y * Y))[..., None]
    a.setflags(write=False)
    return a


def _render_nut(p: dict, rng: np.random.Generator, S: int) -> _Scene:
    X, Y = _grid(S)
    cx, cy = (float(x) for x in rng.uniform(-0.05, 0.05, size=2))
    th = float(rng.uniform(-np.deg2rad(12), np.deg2rad(12)))
    R, r = p["radius"], p["hole"]
    sl = _window(cx, cy, R + 0.02, R + 0.02, S)
    u, v = _rotate(X[sl], Y[sl], cx, cy, th)
    apothem = R * float(np.sqrt(3)) / 2
    c30 = float(np.sqrt(3)) / 2
    hexd = np.maximum(np.abs(v), np.maximum(np.abs(c30 * u + 0.5 * v), np.abs(c30 * u - 0.5 * v))) - apothem
    rho = np.sqrt(u * u + v * v) + 1e-6
    fg_w = _coverage(np.maximum(hexd, r - rho), S)  # hexagon minus the hole
    cphi = u / rho
    c2 = cphi * cphi
    cos6 = ((32 * c2 - 48) * c2 + 18) * c2 - 1  # Chebyshev T6: cos(6 phi), facets
    lx, ly = float(np.cos(0.8 + th)), float(np.sin(0.8 + th))  # light fixed in the image frame
    shade = 0.82 + 0.12 * (u * lx + v * ly) / rho + 0.06 * cos6
    chamfer = np.clip((rho - apothem * 0.93) * (1 / (R - apothem * 0.93)), 0, 1)  # darker corners
    thread = np.where(rho < r + 0.06, 0.8 + 0.2 * np.cos((2 * np.pi / 0.02) * (rho - r)), 1.0)
    mid = (r + apothem) / 2
    ring = (rho - mid) * (1 / 0.05)
    face = 1.0 + 0.08 * np.exp(-(ring * ring))
    mark = _coverage(np.sqrt((u - mid) ** 2 + v * v) - 0.035, S)  # rotation marker
    t = shade * (1 - 0.35 * chamfer) * thread * face * (1 - 0.45 * mark)
    light = _illumination(rng, S)
    bg = _lit(p["bg"] * _vignette(S), light)
    base = bg.copy()
    obj = _lit(p["metal"] * t[..., None], light[sl])
    base[sl] += (obj - base[sl]) * fg_w[..., None]
    fg = np.zeros((S, S), np.float32)
    fg[sl] = fg_w
    return _Scene(base, fg, bg, True)


@lru_cache(maxsize=16)
def _traces(S: int) -> np.ndarray:
    _, Y = _grid(S)
    a = (0.9 + 0.1 * (np.abs(((Y + 1) * 6) % 1 - 0.5) < 0.06)).astype(np.float32)[..., None]
    a.setflags(write=False)
    return a


def _render_chip(p: dict, rng: np.random.Generator, S: int) -> _Scene:
    X, Y = _grid(S)
    cx, cy = (float(x) for x in rng.uniform(-0.05, 0.05, size=2))
    th = float(rng.uniform(-np.deg2rad(5), np.deg2rad(5)))
    hx, hy, n = p["hx"], p["hy"], p["pins"]
    plen = 0.14
    ext = float(np.hypot(hx, hy + plen)) + 0.02
    sl = _window(cx, cy, ext, ext, S)
    u, v = _rotate(X[sl], Y[sl], cx, cy, th)
    av = np.abs(v)
    body = _box_sdf(u, v, hx, hy, 0.03)
    pitch = 2 * hx / n
    k = (n - 1) // 2
    ur = u - pitch * np.clip(np.round(u * (1 / pitch)), -k, k)
    pins = _box_sdf(ur, av - (hy + plen / 2 - 0.02), pitch * 0.28, plen / 2, 0.005)
    fg_body = _coverage(body, S)
    fg_pin = _coverage(pins, S) * (1 - fg_body)
    # body details: matte texture, pin-1 dot, two printed lines
    dot = _coverage(np.sqrt((u + hx * 0.72) ** 2 + (v - hy * 0.55) ** 2) - 0.045, S)
    text = _coverage(np.maximum(_box_sdf(u - 0.05, av - 0.07, hx * 0.55, 0.025), -_box_sdf(ur, v, pitch * 0.5, 1)), S)
    body_t = (1 + 0.06 * _smooth(rng, S, 24)[sl])
    body_col = _lerp(p["body"] * body_t[..., None], _col(0.42, 0.42, 0.44), np.clip(0.8 * dot + 0.7 * text, 0, 1))
    pin_col = p["pin"] * (0.85 + 0.15 * np.cos(ur * (np.pi / (pitch * 0.28))))[..., None]
    light = _illumination(rng, S)
    bg = _lit(p["pcb"] * _traces(S) * (1 + 0.03 * _smooth(rng, S, 8))[..., None], light)
    base = bg.copy()
    w = base[sl]
    w *= (1 - fg_body - fg_pin)[..., None]
    w += _lit(body_col, light[sl]) * fg_body[..., None] + _lit(pin_col, light[sl]) * fg_pin[..., None]
    fg = np.zeros((S, S), np.float32)
    fg[sl] = fg_body + fg_pin
    return _Scene(base, fg, bg, True)


def _render_grid(p: dict, rng: np.random.Generator, S: int) -> _Scene:
    X, Y = _grid(S)
    u, v = _rotate(X, Y, 0.0, 0.0, p["angle"])
    brushed = _smooth(rng, S, max(8, S // 2), 4)  # streaks along x
    pitch = p["pitch"]
    pu = u * (1 / pitch) + float(rng.uniform(0, 1))
    pv = v * (1 / pitch) + float(rng.uniform(0, 1))
    iu, iv = np.floor(pu), np.floor(pv)
    fu, fv = pu - iu - 0.5, pv - iv - 0.5
    if p["holes"]:
        d = np.sqrt(fu * fu + fv * fv) * pitch - 0.3 * pitch  # round perforations
        hole = _coverage(d, S)
        rim = d * (1 / 0.012)
        t = (0.8 + 0.05 * brushed) * (1 - 0.75 * hole) + 0.12 * np.exp(-(rim * rim)) * (fu + fv < 0)
    else:  # checker plates brushed in alternating directions, with grooves
        checker = ((iu + iv) % 2 == 0)
        g = (0.5 - np.maximum(np.abs(fu), np.abs(fv))) * (pitch / 0.01)
        brushed_v = _smooth(rng, S, 4, max(8, S // 2))
        t = 0.78 + 0.05 * np.where(checker, brushed, brushed_v) + 0.05 * checker - 0.35 * np.exp(-(g * g))
    base = _lit(p["metal"] * t[..., None], _illumination(rng, S))
    return _texture_scene(base, _col(0.1, 0.09, 0.08))


_RENDERERS = {
    "stripes": _render_stripes,
    "nut": _render_nut,
    "leather": _render_leather,
    "chip": _render_chip,
    "grid": _render_grid,
}


# ----------------------------------------------------------------------------- defects
# Each defect function returns (window slices, region R (bool, window), new values (window, 3)).


def _pick_centre(scene: _Scene, rng: np.random.Generator, S: int, margin: float = 0.7) -> tuple[float, float]:
    """A centre in [-1, 1] units: anywhere (textures) or on the object interior (objects)."""
    if not scene.is_object:
        return float(rng.uniform(-margin, margin)), float(rng.uniform(-margin, margin))
    idx = np.flatnonzero(scene.fg.ravel() > 0.99)
    k = int(idx[rng.integers(len(idx))])
    X, Y = _grid(S)
    return float(X.flat[k]), float(Y.flat[k])


def _blob(rng, S, cx, cy, rx, ry, irregular: float, reach: float = 1.0):
    """Window and normalised elliptic radius ``e`` (< 1 inside) of a randomly rotated, wobbly ellipse."""
    m = max(rx, ry) * reach * (1 + 3 * irregular)
    sl = _window(cx, cy, m, m, S)
    X, Y = _grid(S)
    u, v = _rotate(X[sl], Y[sl], cx, cy, float(rng.uniform(0, np.pi)))
    e = np.sqrt((u * (1 / rx)) ** 2 + (v * (1 / ry)) ** 2)
    if irregular > 0:
        ang = np.arctan2(v * (1 / ry), u * (1 / rx))
        wob = sum(float(rng.uniform(0, irregular)) * np.cos(k * ang + float(rng.uniform(0, 2 * np.pi))) for k in (2, 3, 5))
        e = e / (1 + wob)
    return sl, e


def _away(clean: np.ndarray) -> float:
    """-1 (go darker) if the pixels are bright on average, else +1."""
    return -1.0 if float(clean.mean()) > 0.5 else 1.0


def _on_object(scene: _Scene, sl, R: np.ndarray) -> np.ndarray:
    return R & (scene.fg[sl] >= 0.5) if scene.is_object else R


def _scratch(scene, rng, S):
    cx, cy = _pick_centre(scene, rng, S)
    L = float(rng.uniform(0.5, 1.0)) * (0.8 if scene.is_object else 1.0)
    a = float(rng.uniform(0, np.pi))
    d = np.array([np.cos(a), np.sin(a)]) * L / 2
    bend = np.array([-d[1], d[0]]) * float(rng.uniform(-0.5, 0.5))
    t = np.linspace(0, 1, 17)[:, None]
    c = np.array([cx, cy])
    p0, p1, p2 = c - d, c + bend, c + d
    pts = ((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2).astype(np.float32)
    half_w = max(1.5, S / 64.0) / S  # half of (width in px) in units (1 px = 2/S)
    lo, hi = pts.min(0), pts.max(0)
    sl = _window((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, (hi[0] - lo[0]) / 2 + 2 * half_w,
                 (hi[1] - lo[1]) / 2 + 2 * half_w, S)
    X, Y = _grid(S)
    xs, ys = X[sl], Y[sl]
    P = np.stack([xs.ravel(), ys.ravel()], 1)[:, None, :]  # (M, 1, 2)
    A, AB = pts[:-1][None], (pts[1:] - pts[:-1])[None]
    tt = np.clip(((P - A) * AB).sum(-1) / ((AB * AB).sum(-1) + 1e-12), 0, 1)[..., None]
    dist = np.sqrt(((P - (A + tt * AB)) ** 2).sum(-1)).min(1).reshape(xs.shape)
    R = _on_object(scene, sl, dist <= half_w)
    clean = scene.base[sl]
    if not R.any():
        return sl, R, clean
    prof = np.clip(1 - 0.5 * (dist / half_w) ** 2, 0.5, 1)
    delta = _away(clean[R]) * float(rng.uniform(0.3, 0.45))
    return sl, R, clean + (delta * prof)[..., None]


def _hole(scene, rng, S):
    cx, cy = _pick_centre(scene, rng, S)
    sl, e = _blob(rng, S, cx, cy, float(rng.uniform(0.05, 0.13)), float(rng.uniform(0.05, 0.13)), 0.12)
    R = _on_object(scene, sl, e < 1)
    clean = scene.base[sl]
    if not R.any():
        return sl, R, clean
    target = _col(0.06, 0.05, 0.05) if _away(clean[R]) < 0 else _col(0.95, 0.94, 0.9)
    depth = np.clip(1.15 - 0.5 * e, 0.6, 1.0)  # shaded towards the centre
    return sl, R, _lerp(clean, target, 0.85 * depth)


def _stain(scene, rng, S):
    cx, cy = _pick_centre(scene, rng, S)
    r = float(rng.uniform(0.09, 0.2))
    sl, e = _blob(rng, S, cx, cy, r, r * float(rng.uniform(0.6, 1.0)), 0.0, reach=1.3)
    field_ = (1 - e) + 0.3 * _smooth(rng, S, 10)[sl]
    R = _on_object(scene, sl, (field_ > 0.25) & (e < 1.3))
    clean = scene.base[sl]
    if not R.any():
        return sl, R, clean
    shift = np.asarray(colorsys.hls_to_rgb(float(rng.uniform(0, 1)), 0.5, 1.0), np.float32) - 0.5
    shift = shift / np.abs(shift).max() * float(rng.uniform(0.25, 0.35))
    strength = np.clip(0.7 + field_, 0.7, 1.0)
    return sl, R, clean + strength[..., None] * shift


def _missing(scene, rng, S):
    if scene.is_object:  # a chunk of the object's outline
        edge = np.flatnonzero(((scene.fg > 0.5) & (scene.fg < 1.0)).ravel())
        if len(edge) == 0:
            edge = np.flatnonzero((scene.fg > 0.5).ravel())
        k = int(edge[rng.integers(len(edge))])
        X, Y = _grid(S)
        cx, cy = float(X.flat[k]), float(Y.flat[k])
        r = float(rng.uniform(0.1, 0.2))
        sl, e = _blob(rng, S, cx, cy, r, r * float(rng.uniform(0.6, 1.0)), 0.1)
        R = (e < 1) & (scene.fg[sl] > 0.02)
    else:
        cx, cy = _pick_centre(scene, rng, S)
        r = float(rng.uniform(0.07, 0.15))
        sl, e = _blob(rng, S, cx, cy, r, r * float(rng.uniform(0.5, 1.0)), 0.2)
        R = e < 1
    return sl, R, np.array(scene.bg[sl], dtype=np.float32)


def _foreign(scene, rng, S):
    cx, cy = _pick_centre(scene, rng, S)
    r = float(rng.uniform(0.06, 0.12))
    sl, e = _blob(rng, S, cx, cy, r, r * float(rng.uniform(0.5, 1.0)), 0.25)
    R = _on_object(scene, sl, e < 1)
    if not R.any():
        return sl, R, scene.base[sl]
    X, Y = _grid(S)
    u, v = _rotate(X[sl], Y[sl], cx, cy, float(rng.uniform(0, np.pi)))
    f = float(rng.uniform(25, 45))
    kind = int(rng.integers(3))
    if kind == 0:  # fine checker
        t = ((np.floor(u * f / 2) + np.floor(v * f / 2)) % 2).astype(np.float32)
    elif kind == 1:  # fibres
        t = (0.5 + 0.5 * np.sin(u * f * np.pi + 3 * _smooth(rng, S, 12)[sl])).astype(np.float32)
    else:  # speckle
        t = (_smooth(rng, S, S // 3)[sl] > 0).astype(np.float32)
    c0 = np.asarray(colorsys.hls_to_rgb(float(rng.uniform(0, 1)), float(rng.uniform(0.2, 0.35)), 0.9), np.float32)
    c1 = np.asarray(colorsys.hls_to_rgb(float(rng.uniform(0, 1)), float(rng.uniform(0.65, 0.8)), 0.9), np.float32)
    return sl, R, _lerp(c0, c1, t)


_DEFECTS = {
    "scratch": (_scratch, False),
    "hole": (_hole, False),
    "stain": (_stain, False),
    "missing_part": (_missing, True),  # restrict: only pixels the background really changes
    "foreign_object": (_foreign, False),
}


def _apply_defect(scene: _Scene, defect: str, rng: np.random.Generator, S: int) -> tuple[np.ndarray, np.ndarray]:
    fn, restrict = _DEFECTS[defect]
    for _ in range(100):
        sl, R, new = fn(scene, rng, S)
        clean = scene.base[sl]
        new = np.clip(np.asarray(new, np.float32), 0.0, 1.0)
        change = np.abs(new - clean).max(-1)
        if restrict:
            R = R & (change >= MIN_CHANGE)
        else:
            weak = R & (change < MIN_CHANGE)
            if weak.any():  # push too-faint pixels away from their value, towards mid-grey
                c = clean[weak]
                direction = np.where(c.mean(-1, keepdims=True) > 0.5, -1.0, 1.0).astype(np.float32)
                new[weak] = np.clip(c + 1.5 * MIN_CHANGE * direction, 0.0, 1.0)
        frac = R.sum() / float(S * S)
        if MIN_AREA <= frac <= MAX_AREA:
            out = scene.base.copy()
            out[sl][R] = new[R]
            mask = np.zeros((S, S), bool)
            mask[sl] = R
            return out, mask
    raise RuntimeError(f"could not place a {defect!r} defect of {MIN_AREA:.1%}-{MAX_AREA:.0%} area")


def _quantise(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_sample(spec: CategorySpec, image_size: int, rng: np.random.Generator | int, defect: str | None = None):
    """Render one image of ``spec``.

    Returns ``(image uint8 (S,S,3), mask bool (S,S), clean uint8 (S,S,3))``: ``clean`` is the same
    image without the defect (identical to ``image`` when ``defect`` is None, mask all False).
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    S = int(image_size)
    if S < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    scene = _RENDERERS[spec.family](spec.params, rng, S)
    noise = (_smooth(rng, S, 0) * np.float32(spec.params["sigma"]))[..., None]
    clean = _quantise(scene.base + noise)
    if defect is None:
        return clean, np.zeros((S, S), bool), clean
    if defect not in _DEFECTS:
        raise ValueError(f"unknown defect type {defect!r}; expected one of {DEFECT_TYPES}")
    img, R = _apply_defect(scene, defect, rng, S)
    return _quantise(img + noise), R, clean


# ----------------------------------------------------------------------------- writer


def _png_bytes(arr: np.ndarray, level: int) -> bytes:
    """Minimal PNG encoder (8-bit gray or RGB, no filter): byte-identical across runs and ~2x
    faster than PIL's adaptive-filter encoder, which matters for noisy 256 px images."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    h, w = arr.shape[:2]
    ch = 1 if arr.ndim == 2 else arr.shape[2]
    raw = np.zeros((h, 1 + w * ch), np.uint8)  # filter byte 0 ("None") on every row
    raw[:, 1:] = arr.reshape(h, w * ch)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, {1: 0, 3: 2}[ch], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + chunk(b"IEND", b"")


def _save_png(arr: np.ndarray, path: Path, level: int = 1) -> None:
    Path(path).write_bytes(_png_bytes(arr, level))


def generate_synthetic_dataset(
    root: Path,
    num_categories: int = 4,
    train_per_category: int = 48,
    test_good_per_category: int = 12,
    test_defect_per_category: int = 12,
    image_size: int = 256,
    seed: int = 0,
    png_compress_level: int = 1,
) -> list[str]:
    """Write the dataset in MVTec-AD layout under ``root`` and return the category names.

    Images are ``<split>/<defect>/NNN.png`` (RGB) and masks ``ground_truth/<defect>/NNN_mask.png``
    (0/255). Defect types are assigned round-robin over :data:`DEFECT_TYPES`. Each image has its
    own random stream (seeded by ``seed``, category, split and index), so the output is
    byte-identical for the same arguments. A category folder that already exists is replaced if
    ``root`` was made by this function (marker file ``.dpdiff_synthetic.json``), else it is an error.
    ``png_compress_level`` (zlib 0-9): 0 writes ~1.4x larger files about 1.5x faster.
    """
    root = Path(root)
    for name, val in (("train_per_category", train_per_category), ("test_good_per_category", test_good_per_category),
                      ("test_defect_per_category", test_defect_per_category)):
        if val < 0:
            raise ValueError(f"{name} must be >= 0, got {val}")
    if train_per_category < 1:
        raise ValueError("train_per_category must be >= 1")
    if not 0 <= png_compress_level <= 9:
        raise ValueError(f"png_compress_level must be in 0..9, got {png_compress_level}")
    specs = category_specs(num_categories, seed)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / _MARKER
    for spec in specs:
        cat_dir = root / spec.name
        if cat_dir.exists():
            if not marker.is_file():
                raise FileExistsError(f"{str(cat_dir)!r} exists and {str(root)!r} was not made by generate_synthetic_dataset")
            shutil.rmtree(cat_dir)
    marker.write_text(json.dumps(dict(
        generator="dpdiff.data.synthetic", num_categories=num_categories, train_per_category=train_per_category,
        test_good_per_category=test_good_per_category, test_defect_per_category=test_defect_per_category,
        image_size=image_size, seed=seed, categories=[s.name for s in specs], defect_types=list(DEFECT_TYPES),
    ), indent=1))

    # PNG compression (zlib releases the GIL) runs in a writer thread while the next image renders;
    # rendering stays sequential, so the bytes do not depend on scheduling.
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        pending: list[Future] = []

        def save(arr: np.ndarray, path: Path, level: int = png_compress_level) -> None:
            pending.append(pool.submit(_save_png, arr, path, level))
            if len(pending) > 32:
                pending.pop(0).result()

        for spec in specs:
            cat_dir = root / spec.name

            def rng_for(split_code: int, k: int) -> np.random.Generator:
                return np.random.default_rng([int(seed), spec.index, split_code, k])

            (cat_dir / "train" / "good").mkdir(parents=True)
            for k in range(train_per_category):
                save(render_sample(spec, image_size, rng_for(0, k))[0], cat_dir / "train" / "good" / f"{k:03d}.png")
            (cat_dir / "test" / "good").mkdir(parents=True)
            for k in range(test_good_per_category):
                save(render_sample(spec, image_size, rng_for(1, k))[0], cat_dir / "test" / "good" / f"{k:03d}.png")
            counters = {d: 0 for d in DEFECT_TYPES}
            for k in range(test_defect_per_category):
                defect = DEFECT_TYPES[k % len(DEFECT_TYPES)]
                img, mask, _ = render_sample(spec, image_size, rng_for(2, k), defect)
                n = counters[defect]
                counters[defect] += 1
                img_dir, gt_dir = cat_dir / "test" / defect, cat_dir / "ground_truth" / defect
                img_dir.mkdir(parents=True, exist_ok=True)
                gt_dir.mkdir(parents=True, exist_ok=True)
                save(img, img_dir / f"{n:03d}.png")
                save(mask.astype(np.uint8) * 255, gt_dir / f"{n:03d}_mask.png", max(1, png_compress_level))
        for f in pending:
            f.result()
    return [s.name for s in specs]
