"""Procedural many-category anomaly-detection dataset with planted defects.

Used by ``dpdiff demo``, ``dpdiff scale`` and by tests: it needs no download, is written in the
MVTec-AD layout (readable by :mod:`dpdiff.data.mvtec`) and is deterministic (same ``seed`` -> same
bytes).

Categories are combinations of factors, so several hundred are distinct (not recoloured copies):

* textures: pattern (``stripes``, ``woven``, ``leather``, ``grid`` (perforated metal), ``plates``
  (tread plates), ``wood``, ``marble``, ``tiles``, ``dots``, ``terrazzo``, ``bricks``, ``knurled``)
  x structural variant (three per pattern, :data:`VARIANTS`: e.g. woven plain / twill / basket,
  bricks running / stack / English bond) x colour palette (:data:`PALETTES`) x scale (coarse / fine);
* objects: shape (``nut``, ``chip``, ``washer``, ``gear``, ``screw``, ``capsule``, ``cap``,
  ``bracket``, ``knob``, ``tag``) x material (metal, plastic, rubber, glossy paint, wood) x
  background (dark, light, PCB, cloth) x layout (one, two or four instances) x colour palette.

The first five categories are the original hand-tuned ``synth_stripes``, ``synth_nut``,
``synth_leather``, ``synth_chip``, ``synth_grid`` (the demo uses the first four). Later ones follow a
fixed most-different-first order (:func:`category_specs`): every category differs from every other
in at least two factors (never a recoloured copy), every pattern/shape is used before any is
repeated, and every fourth one is a texture. The order is prefix-stable, so the first N categories
of a larger dataset are exactly the N-category dataset (nested subsets, as the paper's S1 in S2 in
S3); the names and factors do not depend on the seed, the continuous parameters (frequencies, sizes,
angles) do.

Within-class variation: pose (shift, rotation; objects), translation/phase and angle jitter
(textures), light direction, brightness gain, low-frequency illumination and pixel noise. Noise
fields are random crops (offset + flips) of fixed per-size noise banks rather than fresh upsampled
noise: that, windowed defect/object rendering and a minimal PNG writer make generation fast
(``benchmarks/synthetic_speed.py`` measures it).

Defect types (test folders, :data:`DEFECT_TYPES`): ``scratch`` (thin smooth curve of different
intensity), ``hole`` (dark or bright irregular ellipse), ``stain`` (colour-shifted smooth blob),
``missing_part`` (region replaced by the background / substrate), ``foreign_object`` (small patch of
a different texture), ``crack`` (thin jagged branching dark line), ``color_deviation`` (a region
re-coloured in another hue, texture kept) and ``shape_deviation`` (objects: the outline bulges or is
dented; textures: a local swirl of the pattern with bump shading). Defects lie on the object for
object categories and cover 0.3 %-5 % of the image (scratches and cracks 0.1 %-5 %). The mask is
exactly the set of pixels the defect changed: the defect is drawn on the noise-free image, every
pixel of the region is changed by at least :data:`MIN_CHANGE` (in [0, 1] units, on some channel),
then the same noise is added to the clean and the defective image, so pixels outside the mask are
bit-identical to the defect-free rendering (see :func:`render_sample`).
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from dpdiff.utils.io import atomic_write_text

__all__ = [
    "FAMILIES",
    "PATTERNS",
    "SHAPES",
    "MATERIALS",
    "BACKGROUNDS",
    "LAYOUTS",
    "PALETTES",
    "VARIANTS",
    "DEFECT_TYPES",
    "MIN_CHANGE",
    "MIN_AREA",
    "MAX_AREA",
    "DEFECT_MIN_AREA",
    "CategorySpec",
    "category_specs",
    "render_sample",
    "generate_synthetic_dataset",
    "ensure_synthetic_dataset",
    "read_marker",
]

DEFECT_TYPES = (
    "scratch",
    "hole",
    "stain",
    "missing_part",
    "foreign_object",
    "crack",
    "color_deviation",
    "shape_deviation",
)
#: Minimum change (max over channels, [0, 1] units) of every pixel inside a defect mask.
MIN_CHANGE = 0.12
#: Allowed defect area as a fraction of the image.
MIN_AREA, MAX_AREA = 0.003, 0.05
#: Smallest area per defect type: thin lines (scratch, crack) may be smaller, e.g. on a small part.
DEFECT_MIN_AREA = {d: (0.001 if d in ("scratch", "crack") else MIN_AREA) for d in DEFECT_TYPES}
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


@lru_cache(maxsize=128)
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
    a = bank[oy : oy + S, ox : ox + S]
    return a[:: -1 if fy else 1, :: -1 if fx else 1]


def _col(*rgb: float) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32)


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
#
# A category is a combination of factors. Textures: pattern x colour palette x scale. Objects:
# shape x material x background x layout x colour palette. The order in which combinations are
# used is fixed (it does not depend on the seed) and prefix-stable: the first N categories of a
# dataset with M > N categories are the N categories of a dataset with N categories, so subsets are
# nested (S1 in S2 in S3). Categories 0-4 are the original hand-tuned five (the demo uses 0-3).

#: Colour palettes: (primary, secondary) RGB in [0, 1].
PALETTES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "navy": ((0.20, 0.25, 0.45), (0.80, 0.78, 0.65)),
    "brass": ((0.78, 0.62, 0.36), (0.36, 0.26, 0.14)),
    "tan": ((0.55, 0.33, 0.20), (0.86, 0.76, 0.60)),
    "green": ((0.12, 0.42, 0.22), (0.88, 0.84, 0.40)),
    "steel": ((0.62, 0.64, 0.68), (0.24, 0.26, 0.30)),
    "crimson": ((0.66, 0.12, 0.16), (0.96, 0.80, 0.62)),
    "teal": ((0.08, 0.46, 0.50), (0.80, 0.93, 0.88)),
    "violet": ((0.40, 0.22, 0.58), (0.90, 0.84, 0.94)),
    "amber": ((0.88, 0.58, 0.10), (0.30, 0.18, 0.08)),
    "olive": ((0.44, 0.47, 0.18), (0.88, 0.86, 0.66)),
    "rose": ((0.86, 0.50, 0.60), (0.40, 0.16, 0.24)),
    "cobalt": ((0.14, 0.32, 0.78), (0.92, 0.92, 0.96)),
    "charcoal": ((0.22, 0.22, 0.24), (0.78, 0.56, 0.30)),
}
#: Texture patterns (whole-image surfaces).
PATTERNS = (
    "stripes",
    "woven",
    "leather",
    "grid",
    "plates",
    "wood",
    "marble",
    "tiles",
    "dots",
    "terrazzo",
    "bricks",
    "knurled",
)
#: Structural variants of each pattern (the first is the default; the original categories use it).
VARIANTS = {
    "stripes": ("straight", "wavy", "pinstripe"),
    "woven": ("plain", "twill", "basket"),
    "leather": ("pebbled", "smooth", "creased"),
    "grid": ("round", "square", "slot"),
    "plates": ("checker", "diamond", "ribbed"),
    "wood": ("straight", "cathedral", "knotty"),
    "marble": ("veined", "cloudy", "crossed"),
    "tiles": ("hex", "square", "scales"),
    "dots": ("polka", "rings", "squares"),
    "terrazzo": ("chips", "flakes", "dense"),
    "bricks": ("running", "stack", "english"),
    "knurled": ("diamond", "straight", "cross"),
}
TEXTURE_SCALES = ("coarse", "fine")
#: Object shapes (``nut`` and ``chip`` keep their original renderers: single layout, fixed material).
SHAPES = ("nut", "chip", "washer", "gear", "screw", "capsule", "cap", "bracket", "knob", "tag")
MATERIALS = ("metal", "plastic", "rubber", "glossy", "wood")
BACKGROUNDS = ("dark", "light", "pcb", "cloth")
LAYOUTS = ("single", "pair", "quad")
#: Every structural family (the ``family`` of a :class:`CategorySpec`).
FAMILIES = PATTERNS + SHAPES

_BG_COLOURS = {
    "dark": (0.14, 0.14, 0.16),
    "light": (0.86, 0.86, 0.84),
    "pcb": (0.12, 0.42, 0.22),
    "cloth": (0.62, 0.58, 0.50),
}
_CHIP_BODY = (0.13, 0.13, 0.15)
_WOOD_BROWN = (0.50, 0.32, 0.18)
_LEGACY = (  # (kind, family, variant, material, background, layout, palette, scale) of categories 0-4
    ("texture", "stripes", "straight", None, None, None, "navy", "coarse"),
    ("object", "nut", None, "metal", "dark", "single", "brass", None),
    ("texture", "leather", "pebbled", None, None, None, "tan", "coarse"),
    ("object", "chip", None, "plastic", "pcb", "single", "green", None),
    ("texture", "grid", "round", None, None, None, "steel", "coarse"),
)
_FACTORS = ("kind", "family", "variant", "material", "background", "layout", "palette", "scale")
_LEGACY_NAMES = ("synth_stripes", "synth_nut", "synth_leather", "synth_chip", "synth_grid")


@dataclass(frozen=True)
class CategorySpec:
    name: str
    family: str
    index: int
    params: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def factors(self) -> dict:
        """The combination this category is made of (kind, family, material, background, layout, palette, scale)."""
        return dict(self.params.get("factors", {}))


def _material_colour(material: str, primary) -> np.ndarray:
    p = _col(*primary)
    if material == "rubber":
        return p * 0.4 + 0.04
    if material == "wood":
        return (p + _col(*_WOOD_BROWN)) / 2
    return p


def _contrast_ok(combo: tuple) -> bool:
    """Objects must stand out from their background (defects on the outline must be visible)."""
    kind, family, _, material, bg, _, palette, _ = combo
    if kind == "texture":
        return True
    primary = PALETTES[palette][0]
    if family == "chip":  # the palette colours the board, the body is dark
        return float(np.abs(_col(*primary) - _col(*_CHIP_BODY)).max()) >= 0.2
    obj = _material_colour(material, primary) * 0.85
    return float(np.abs(obj - _col(*_BG_COLOURS[bg])).max()) >= 0.25


@lru_cache(maxsize=1)
def _candidates() -> tuple[tuple, ...]:
    out: list[tuple] = []
    for pattern in PATTERNS:
        for variant in VARIANTS[pattern]:
            for palette in PALETTES:
                for scale in TEXTURE_SCALES:
                    out.append(("texture", pattern, variant, None, None, None, palette, scale))
    for shape in SHAPES:
        for palette in PALETTES:
            if shape == "nut":
                out += [("object", "nut", None, "metal", bg, "single", palette, None) for bg in ("dark", "light")]
            elif shape == "chip":
                out.append(("object", "chip", None, "plastic", "pcb", "single", palette, None))
            else:
                out += [
                    ("object", shape, None, m, bg, lay, palette, None)
                    for m in MATERIALS
                    for bg in BACKGROUNDS
                    for lay in LAYOUTS
                ]
    return tuple(c for c in out if _contrast_ok(c))


_ORDER: list[tuple] = []


def _composition(n: int) -> list[tuple]:
    """The first ``n`` factor combinations, in the fixed order (greedy, most-different-first).

    After the five original categories, every fourth category is a texture. Each next combination of
    that kind is the unused one that (1) differs from every category chosen so far in at least two
    factors, if any such is left, then (2) uses its pattern/shape least so far, then (3) differs most
    (Hamming distance over the factors, minimum over the categories chosen so far), then (4) uses its
    palette least, then (5) uses its other factors least; remaining ties by a fixed random order.
    """
    cands = _candidates()
    if n > len(cands):
        raise ValueError(f"at most {len(cands)} distinct synthetic categories, asked for {n}")
    if len(_ORDER) >= n:
        return _ORDER[:n]
    values = [sorted({c[f] for c in cands if c[f] is not None}) for f in range(len(_FACTORS))]
    enc = np.array([[-1 if c[f] is None else values[f].index(c[f]) for f in range(len(_FACTORS))] for c in cands])
    kinds = enc[:, 0]
    tex_kind = values[0].index("texture")
    rank = np.random.default_rng(20261129).permutation(len(cands))
    used = np.zeros(len(cands), bool)
    min_ham = np.full(len(cands), len(_FACTORS), np.int64)
    counts = [np.zeros(len(v) + 1, np.int64) for v in values]  # last slot: "not applicable"
    order: list[tuple] = []

    def take(k: int) -> None:
        used[k] = True
        np.minimum(min_ham, (enc != enc[k]).sum(1), out=min_ham)
        for f in range(len(_FACTORS)):
            counts[f][enc[k, f]] += 1
        order.append(cands[k])

    index = {c: k for k, c in enumerate(cands)}
    for c in _LEGACY:
        take(index[c])
    while len(order) < n:
        want_texture = len(order) % 4 == 3
        ok = ~used & ((kinds == tex_kind) == want_texture)
        if not ok.any():
            ok = ~used
        idx = np.flatnonzero(ok)
        e = enc[idx]
        others = sum(counts[f][e[:, f]] * (e[:, f] >= 0) for f in (2, 3, 4, 5, 7))
        keys = (rank[idx], others, counts[6][e[:, 6]], -min_ham[idx], counts[1][e[:, 1]], -np.minimum(min_ham[idx], 2))
        take(int(idx[np.lexsort(keys)[0]]))
    _ORDER[:] = order
    return _ORDER[:n]


def _category_name(combo: tuple) -> str:
    kind, family, variant, material, bg, layout, palette, scale = combo
    if kind == "texture":
        return f"synth_{family}_{variant}_{palette}_{scale}"
    if family in ("nut", "chip"):
        return f"synth_{family}_{palette}" + (f"_{bg}" if family == "nut" else "")
    lay = {"single": "", "pair": "_x2", "quad": "_x4"}[layout]
    return f"synth_{family}_{material}_{palette}_{bg}{lay}"


#: rotation range (radians, +-) of an object instance per shape; round shapes turn freely
_ROTATION = {
    "washer": np.pi,
    "gear": np.pi,
    "screw": np.pi,
    "capsule": 0.35,
    "cap": np.pi,
    "bracket": 0.25,
    "knob": np.pi,
    "tag": 0.3,
}


def _family_params(combo: tuple, index: int, rng: np.random.Generator) -> dict:
    """Renderer parameters of one category. Categories 0-4 keep their original hand-tuned values;
    the others draw their continuous parameters (frequencies, sizes, angles ...) from ``rng``."""
    kind, family, variant, material, bg, layout, palette, scale = combo
    legacy = index < len(_LEGACY)
    c0, c1 = (_col(*c) for c in PALETTES[palette])
    draw = _uniform_draw(legacy, rng)
    p: dict = dict(
        factors=dict(zip(_FACTORS, combo, strict=True)),
        c0=c0,
        c1=c1,
        sigma=0.02 if kind == "texture" else 0.015,
        variant=variant,
    )
    if family in SHAPES:
        p.update(_object_params(combo, legacy, draw, rng, c0))
    else:
        p.update(_texture_params(family, scale == "fine", legacy, draw, rng, c0))
    return p


def _uniform_draw(legacy: bool, rng: np.random.Generator) -> Callable[[float, float], float]:
    """``draw(lo, hi)``: a uniform draw from ``rng``, or the range's middle for the hand-tuned categories 0-4."""
    if legacy:
        return lambda lo, hi: (lo + hi) / 2
    return lambda lo, hi: float(rng.uniform(lo, hi))


def _texture_params(
    family: str, fine: bool, legacy: bool, u: Callable[[float, float], float], rng: np.random.Generator, c0
) -> dict:
    """The pattern parameters of a texture family (draws from ``rng`` in a fixed order: the images depend on it)."""
    if family in ("stripes", "woven"):
        return dict(
            angle=float(np.deg2rad(30.0 if legacy else rng.uniform(-30, 90))),
            freq=11.0 if legacy else (u(15, 19) if fine else u(9, 12)),
            woven=family == "woven",
        )
    if family == "leather":
        return dict(
            base=c0,
            grain=56.0 if legacy else (u(85, 110) if fine else u(45, 65)),
            crease=0.22 if legacy else u(0.15, 0.3),
        )
    if family in ("grid", "plates"):
        return dict(
            metal=c0,
            pitch=0.25 if legacy else (u(0.15, 0.19) if fine else u(0.24, 0.3)),
            holes=family == "grid",
            angle=0.0 if legacy else float(np.deg2rad(rng.uniform(-20, 20))),
        )
    if family == "wood":
        return dict(vertical=bool(rng.integers(2)), freq=u(10, 13) if fine else u(5, 7), warp=u(0.1, 0.2))
    if family == "marble":
        return dict(angle=u(0, np.pi), freq=u(5, 7) if fine else u(2.5, 4), turbulence=u(1.2, 2.0))
    if family == "tiles":
        return dict(angle=u(0, np.pi / 3), cell=u(0.09, 0.11) if fine else u(0.16, 0.2), grout=u(0.05, 0.08))
    if family == "dots":
        return dict(angle=u(-0.4, 0.4), pitch=u(0.09, 0.12) if fine else u(0.16, 0.2), radius=u(0.26, 0.34))
    if family == "terrazzo":
        return dict(cells=u(26, 32) if fine else u(12, 16), density=u(0.9, 1.2))
    if family == "bricks":
        return dict(
            angle=float(np.deg2rad(rng.uniform(-3, 3))) + (np.pi / 2 if rng.integers(4) == 0 else 0.0),
            height=u(0.08, 0.1) if fine else u(0.14, 0.18),
            ratio=u(1.8, 2.6),
        )
    if family == "knurled":
        return dict(angle=float(np.deg2rad(rng.uniform(25, 35))), pitch=u(0.05, 0.065) if fine else u(0.09, 0.12))
    raise ValueError(f"unknown family {family!r}")  # pragma: no cover - the candidates only hold known families


def _object_params(
    combo: tuple, legacy: bool, u: Callable[[float, float], float], rng: np.random.Generator, c0
) -> dict:
    """The parameters of an object family: a nut, a chip or one of the other :data:`SHAPES` (draws from ``rng``
    in a fixed order: the images depend on it)."""
    _, family, _, material, bg, layout, palette, _ = combo
    if family == "nut":
        return dict(
            radius=0.56 if legacy else u(0.50, 0.62),
            hole=0.24 if legacy else u(0.20, 0.28),
            metal=c0,
            bg=_col(*_BG_COLOURS[bg]),
        )
    if family == "chip":
        return dict(
            body=_col(*_CHIP_BODY),
            pin=_col(0.80, 0.80, 0.78),
            pcb=c0,
            hx=0.46 if legacy else u(0.38, 0.52),
            hy=0.30 if legacy else u(0.24, 0.34),
            pins=7 if legacy else int(rng.choice([5, 7, 9])),
        )
    return dict(
        shape=family,
        material=material,
        background=bg,
        layout=layout,
        colour=_material_colour(material, PALETTES[palette][0]),
        size=u(0.92, 1.04),
        light_angle=u(0, 2 * np.pi),
        rotation=_ROTATION[family],
        teeth=int(rng.integers(8, 15)),
        lobes=int(rng.integers(4, 7)),
        inner=u(0.4, 0.55),
        cross=bool(rng.integers(2)),
        grain=u(18, 30),
    )


def category_specs(num_categories: int, seed: int = 0) -> list[CategorySpec]:
    """The first ``num_categories`` categories (prefix-stable: nested subsets for growing counts).

    Names: ``synth_stripes``, ``synth_nut``, ``synth_leather``, ``synth_chip``, ``synth_grid`` for the
    original five, then ``synth_<pattern>_<variant>_<palette>_<scale>`` (textures),
    ``synth_<shape>_<material>_<palette>_<background>[_x2|_x4]`` (objects; x2/x4: layouts with two or
    four instances), ``synth_nut_<palette>_<background>`` and ``synth_chip_<palette>``. The names and
    factors do not depend on ``seed``; the continuous parameters of categories 5+ do.
    """
    if num_categories < 1:
        raise ValueError(f"num_categories must be >= 1, got {num_categories}")
    specs = []
    for i, combo in enumerate(_composition(int(num_categories))):
        rng = np.random.default_rng([int(seed), 1000 + i])
        name = _LEGACY_NAMES[i] if i < len(_LEGACY_NAMES) else _category_name(combo)
        specs.append(CategorySpec(name, combo[1], i, _family_params(combo, i, rng)))
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
    variant = p.get("variant", "straight")
    if p["woven"]:
        iu, iv = np.floor(pu / (2 * np.pi)), np.floor(pv / (2 * np.pi))
        fu, fv = pu / (2 * np.pi) - iu, pv / (2 * np.pi) - iv
        if variant == "twill":  # diagonal floats
            checker = (iu - iv) % 4 < 2
        elif variant == "basket":  # pairs of threads
            checker = (np.floor(iu / 2) + np.floor(iv / 2)) % 2 == 0
        else:  # plain weave
            checker = (iu + iv) % 2 == 0
        t = np.where(
            checker,
            (0.5 + 0.5 * np.cos(3 * pv)) * (0.55 + 0.45 * np.sin(np.pi * fu)),
            (0.5 + 0.5 * np.cos(3 * pu)) * (0.55 + 0.45 * np.sin(np.pi * fv)),
        )
    elif variant == "pinstripe":  # thin bright lines on a plain ground
        t = 0.12 + 0.88 * np.clip((np.cos(pu) - 0.75) * 5, 0, 1)
        t *= 0.92 + 0.08 * np.cos(4 * pv)
    else:
        if variant == "wavy":
            pu = pu + 1.3 * np.sin(pv * 0.22)
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
    variant = p.get("variant", "pebbled")
    if variant == "smooth":  # fine-grained, almost no pebbles, soft creases
        n = 0.35 * _smooth(rng, S, 6) + 0.12 * _smooth(rng, S, _cells(S / 3, S))
    crease = (0.9 / 0.78 * p["crease"]) * np.exp(-(c * c))
    if variant == "creased":  # a second, denser crease network
        c2 = _smooth(rng, S, 18) * (1 / 0.1)
        crease = crease * 1.3 + 0.25 * np.exp(-(c2 * c2))
    t = 0.9 + (0.9 * 0.14 / 0.78) * n - crease
    base = _lit(p["base"] * t[..., None], _illumination(rng, S))
    return _texture_scene(base, _col(0.9, 0.88, 0.82))


@lru_cache(maxsize=16)
def _vignette(S: int) -> np.ndarray:
    X, Y = _grid(S)
    a = (1.0 - 0.12 * (X * X + Y * Y))[..., None]
    a.setflags(write=False)
    return a


def _placement(
    rng: np.random.Generator, S: int, max_degrees: float
) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """The pixel grid (X, Y) and a random placement of a single object: centre (cx, cy) within +-0.05 of the
    image centre, then rotation th within +-``max_degrees`` (drawn from ``rng`` in this order)."""
    X, Y = _grid(S)
    cx, cy = (float(x) for x in rng.uniform(-0.05, 0.05, size=2))
    th = float(rng.uniform(-np.deg2rad(max_degrees), np.deg2rad(max_degrees)))
    return X, Y, cx, cy, th


def _render_nut(p: dict, rng: np.random.Generator, S: int) -> _Scene:
    X, Y, cx, cy, th = _placement(rng, S, 12)
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
    X, Y, cx, cy, th = _placement(rng, S, 5)
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
    body_t = 1 + 0.06 * _smooth(rng, S, 24)[sl]
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
    variant = p.get("variant", "round" if p["holes"] else "checker")
    if p["holes"]:
        if variant == "square":
            d = (np.maximum(np.abs(fu), np.abs(fv)) - 0.27) * pitch
        elif variant == "slot":  # elongated slots
            d = _box_sdf(fu * pitch, fv * pitch, 0.36 * pitch, 0.12 * pitch, 0.1 * pitch)
        else:  # round perforations
            d = np.sqrt(fu * fu + fv * fv) * pitch - 0.3 * pitch
        hole = _coverage(d, S)
        rim = d * (1 / 0.012)
        t = (0.8 + 0.05 * brushed) * (1 - 0.75 * hole) + 0.12 * np.exp(-(rim * rim)) * (fu + fv < 0)
    elif variant == "diamond":  # diamond tread plate: raised lenses, alternating orientation
        flip = np.where((iu + iv) % 2 == 0, 1.0, -1.0).astype(np.float32)
        a, b = (fu + flip * fv) * 0.7071, (fu - flip * fv) * 0.7071
        lens = (a / 0.42) ** 2 + (b / 0.12) ** 2
        t = 0.72 + 0.05 * brushed + 0.18 * np.clip(1 - lens, 0, 1) + 0.1 * np.clip(1 - lens, 0, 1) * (a < 0)
    elif variant == "ribbed":  # parallel grooves, one direction
        g = (0.5 - np.abs(fu)) * (pitch / 0.012)
        t = 0.8 + 0.06 * brushed - 0.4 * np.exp(-(g * g)) + 0.06 * np.clip(fu * 4, -1, 1)
    else:  # checker plates brushed in alternating directions, with grooves
        checker = (iu + iv) % 2 == 0
        g = (0.5 - np.maximum(np.abs(fu), np.abs(fv))) * (pitch / 0.01)
        brushed_v = _smooth(rng, S, 4, max(8, S // 2))
        t = 0.78 + 0.05 * np.where(checker, brushed, brushed_v) + 0.05 * checker - 0.35 * np.exp(-(g * g))
    base = _lit(p["metal"] * t[..., None], _illumination(rng, S))
    return _texture_scene(base, _col(0.1, 0.09, 0.08))


def _hash2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random values in [0, 1) per integer cell (a, b)."""
    x = np.sin(a.astype(np.float64) * 127.1 + b.astype(np.float64) * 311.7) * 43758.5453
    return (x - np.floor(x)).astype(np.float32)


def _cells(n: float, S: int) -> int:
    """Noise cells across the image, at most a third of the pixels (finer noise would alias)."""
    return int(max(2, min(round(n), S // 3)))


def _texture_frame(p: dict, rng: np.random.Generator, S: int, angle: float, jitter_deg: float = 2.0):
    """Rotated coordinates with a random translation (the normal variation of a surface)."""
    X, Y = _grid(S)
    th = angle + float(rng.normal(0, np.deg2rad(jitter_deg)))
    u, v = _rotate(X, Y, 0.0, 0.0, th)
    return u + np.float32(rng.uniform(-1, 1)), v + np.float32(rng.uniform(-1, 1))


def _render_wood(p: dict, rng: np.random.Generator, S: int) -> _Scene:
    X, Y = _grid(S)
    along, across = (Y, X) if p["vertical"] else (X, Y)
    warp = p["warp"] * _smooth(rng, S, 3) + 0.03 * _smooth(rng, S, 7)
    pos = across + warp + np.float32(rng.uniform(-1, 1)) + 0.05 * along * np.float32(rng.normal())
    knot = np.zeros_like(pos)
    if p["variant"] == "cathedral":  # arched rings (flat-sawn)
        pos = pos + 0.45 * (along - np.float32(rng.uniform(-0.3, 0.3))) ** 2
    elif p["variant"] == "knotty":  # rings flow around one or two knots
        for _ in range(1 + int(rng.integers(2))):
            kx, ky = (float(x) for x in rng.uniform(-0.7, 0.7, size=2))
            rk2 = ((along - kx) ** 2 + (across - ky) ** 2) * (1 / 0.03)
            pos = pos + 0.12 * np.exp(-rk2) * np.sign(across - ky)
            knot = np.maximum(knot, np.exp(-rk2 * 6))
    ring = pos * p["freq"]
    t = ring - np.floor(ring)
    late = np.maximum(t**4, knot)  # dark late-wood lines (and knot cores)
    rows, cols = (3, max(4, S // 2)) if p["vertical"] else (max(4, S // 2), 3)
    fibres = _smooth(rng, S, rows, cols)  # streaks along the grain
    m = np.clip(0.15 + 0.6 * late + 0.08 * fibres, 0, 1)
    base = _lit(_lerp(p["c0"], p["c1"] * 0.8 + p["c0"] * 0.2, m), _illumination(rng, S))
    return _texture_scene(base, _col(0.08, 0.07, 0.06))


def _render_marble(p: dict, rng: np.random.Generator, S: int) -> _Scene:
    u, v = _texture_frame(p, rng, S, p["angle"], 4.0)
    turb = _smooth(rng, S, 3) + 0.5 * _smooth(rng, S, 7) + 0.25 * _smooth(rng, S, _cells(15, S))
    s = np.abs(np.sin((u * p["freq"] + p["turbulence"] * 0.35 * turb) * np.pi))
    vein = np.clip(1.0 - s * 4.0, 0, 1) ** 1.5  # thin veins where the phase crosses zero
    cloud = 0.06 * _smooth(rng, S, 5)
    if p["variant"] == "cloudy":  # no veins: soft blotches of the second colour
        vein = np.clip(0.3 + 0.45 * turb, 0, 1) ** 2
    elif p["variant"] == "crossed":  # a second, finer vein set across the first
        s2 = np.abs(np.sin((v * p["freq"] * 1.7 + p["turbulence"] * 0.3 * turb) * np.pi))
        vein = np.maximum(vein, 0.8 * np.clip(1.0 - s2 * 6.0, 0, 1) ** 1.5)
    base = _lit(_lerp(p["c0"] * (1 + cloud[..., None]), p["c1"], 0.85 * vein), _illumination(rng, S))
    return _texture_scene(base, _col(0.08, 0.08, 0.08))


def _render_tiles(p: dict, rng: np.random.Generator, S: int) -> _Scene:
    u, v = _texture_frame(p, rng, S, p["angle"])
    s3 = np.float32(np.sqrt(3.0))
    qx, qy = u * (1 / p["cell"]), v * (1 / p["cell"])
    if p["variant"] == "square":  # square mosaic
        gx, gy = np.mod(qx, 1.0) - 0.5, np.mod(qy, 1.0) - 0.5
        hd = np.maximum(np.abs(gx), np.abs(gy))
        tile = _hash2(np.floor(qx), np.floor(qy))
    else:
        ax, ay = np.mod(qx, 1.0) - 0.5, np.mod(qy, s3) - s3 / 2
        bx, by = np.mod(qx - 0.5, 1.0) - 0.5, np.mod(qy - s3 / 2, s3) - s3 / 2
        use_a = ax * ax + ay * ay < bx * bx + by * by
        gx, gy = np.where(use_a, ax, bx), np.where(use_a, ay, by)  # offset from the nearest tile centre
        if p["variant"] == "scales":  # round tiles in hexagonal packing
            hd = np.sqrt(gx * gx + gy * gy) * 1.02
        else:
            hd = np.maximum(np.abs(gx), 0.5 * np.abs(gx) + (s3 / 2) * np.abs(gy))  # 0.5 on the tile edge
        tile = _hash2(np.round((qx - gx) * 2), np.round((qy - gy) * 2 / s3))
    grout = np.clip((hd - (0.5 - p["grout"])) * (p["cell"] * S / 2), 0, 1)  # antialiased over ~1 px
    bevel = np.clip((hd - 0.3) * 4, 0, 1)
    col = p["c0"] * (0.88 + 0.22 * tile - 0.12 * bevel)[..., None]
    base = _lit(_lerp(col, p["c1"], grout), _illumination(rng, S))
    return _texture_scene(base, _col(0.07, 0.07, 0.07))


def _render_dots(p: dict, rng: np.random.Generator, S: int) -> _Scene:
    u, v = _texture_frame(p, rng, S, p["angle"])
    pv = v * (1 / p["pitch"])
    row = np.floor(pv)
    pu = u * (1 / p["pitch"]) + 0.5 * (row % 2)
    fu, fv = pu - np.floor(pu) - 0.5, pv - row - 0.5
    if p["variant"] == "rings":
        d = (np.abs(np.sqrt(fu * fu + fv * fv) - p["radius"]) - 0.08) * p["pitch"]
    elif p["variant"] == "squares":
        d = _box_sdf(fu, fv, p["radius"] * 0.85, p["radius"] * 0.85, 0.05) * p["pitch"]
    else:  # polka dots
        d = (np.sqrt(fu * fu + fv * fv) - p["radius"]) * p["pitch"]
    dot = _coverage(d, S)
    fabric = 0.94 + 0.05 * _smooth(rng, S, _cells(S / 4, S))
    base = _lit(_lerp(p["c0"] * fabric[..., None], p["c1"], dot), _illumination(rng, S))
    return _texture_scene(base, _col(0.9, 0.9, 0.88) if float(p["c0"].mean()) < 0.45 else _col(0.08, 0.08, 0.08))


def _render_terrazzo(p: dict, rng: np.random.Generator, S: int) -> _Scene:
    c = _cells(p["cells"], S)
    grain = 0.05 * _smooth(rng, S, _cells(S / 4, S))
    k = S / 16.0  # edge sharpness of the chips
    density = p["density"] - (0.45 if p["variant"] == "dense" else 0.0)
    if p["variant"] == "flakes":  # elongated flakes
        chips1 = np.clip((_smooth(rng, S, c, _cells(c / 3, S)) - density) * k, 0, 1)
    else:
        chips1 = np.clip((_smooth(rng, S, c) - density) * k, 0, 1)
    chips2 = np.clip((-density - 0.1 - _smooth(rng, S, _cells(c * 1.4, S))) * k, 0, 1)
    col = p["c0"] * (0.97 + grain)[..., None]
    col = _lerp(col, p["c1"], chips1)
    col = _lerp(col, p["c0"] * 0.35 + 0.03, chips2)
    base = _lit(col, _illumination(rng, S))
    return _texture_scene(base, _col(0.9, 0.9, 0.88) if float(p["c0"].mean()) < 0.45 else _col(0.08, 0.08, 0.08))


def _render_bricks(p: dict, rng: np.random.Generator, S: int) -> _Scene:
    u, v = _texture_frame(p, rng, S, p["angle"], 1.0)
    h = p["height"]
    w = h * p["ratio"]
    pv = v * (1 / h)
    row = np.floor(pv)
    if p["variant"] == "stack":  # no offset between rows
        pu = u * (1 / w)
    elif p["variant"] == "english":  # rows of stretchers alternate with rows of headers (half bricks)
        w = np.where(row % 2 == 0, w, w / 2).astype(np.float32)
        pu = u / w + 0.25 * (row % 2)
    else:  # running bond
        pu = u * (1 / w) + 0.5 * (row % 2)
    col_i = np.floor(pu)
    dist = np.minimum(np.minimum(pu - col_i, col_i + 1 - pu) * w, np.minimum(pv - row, row + 1 - pv) * h)
    mortar = np.clip((0.11 * h - dist) * (S / 2) + 0.5, 0, 1)
    shade = 0.82 + 0.3 * _hash2(row, col_i) + 0.06 * _smooth(rng, S, _cells(S / 5, S))
    base = _lit(_lerp(p["c0"] * shade[..., None], p["c1"], mortar), _illumination(rng, S))
    return _texture_scene(base, _col(0.07, 0.07, 0.07))


def _render_knurled(p: dict, rng: np.random.Generator, S: int) -> _Scene:
    X, Y = _grid(S)
    a = p["angle"] + float(rng.normal(0, np.deg2rad(1.5)))
    f = 2 * np.pi / p["pitch"]
    o1, o2 = (float(x) for x in rng.uniform(0, 2 * np.pi, size=2))
    ca, sa = np.float32(np.cos(a)), np.float32(np.sin(a))
    if p["variant"] == "cross":  # square pyramids, axis-aligned (90 degrees between the two ridge sets)
        j = a - p["angle"]
        cj, sj = np.float32(np.cos(j)), np.float32(np.sin(j))
        p1, p2 = (X * cj + Y * sj) * f + o1, (Y * cj - X * sj) * f + o2
    else:  # diamond: ridge sets at +-angle
        p1, p2 = (X * ca + Y * sa) * f + o1, (X * ca - Y * sa) * f + o2
    if p["variant"] == "straight":  # straight knurl: parallel ridges only
        p2 = np.zeros_like(p2)
    t = (0.5 + 0.5 * np.cos(p1)) * (0.5 + 0.5 * np.cos(p2))  # diamond pyramids
    ridge = 0.5 + 0.5 * np.sin(p1 + p2)  # lit flank
    m = np.clip(0.55 * t + 0.3 * ridge * t + 0.04 * _smooth(rng, S, _cells(S / 3, S)), 0, 1)
    base = _lit(_lerp(p["c0"] * 0.55, p["c1"] * 0.5 + p["c0"] * 0.5, m), _illumination(rng, S))
    return _texture_scene(base, _col(0.07, 0.07, 0.07))


# --------------------------------------------------------------------- parametric objects

#: layout -> (instance centres, instance scale)
_LAYOUT_SLOTS = {
    "single": (((0.0, 0.0),), 1.0),
    "pair": (((-0.48, 0.0), (0.48, 0.0)), 0.5),
    "quad": (((-0.48, -0.48), (0.48, -0.48), (-0.48, 0.48), (0.48, 0.48)), 0.44),
}


def _background(kind: str, rng: np.random.Generator, S: int, light: np.ndarray) -> np.ndarray:
    colour = _col(*_BG_COLOURS[kind])
    if kind == "pcb":
        img = colour * _traces(S) * (1 + 0.03 * _smooth(rng, S, 8))[..., None]
    elif kind == "cloth":
        X, Y = _grid(S)
        f = np.float32(np.pi * min(40.0, S / 5.0))
        weave = 0.92 + 0.05 * np.cos(X * f) * np.cos(Y * f) + 0.04 * _smooth(rng, S, 6)
        img = colour * weave[..., None]
    else:
        img = colour * _vignette(S)
    return _lit(img, light)


def _shape_sdf(p: dict, u: np.ndarray, v: np.ndarray, R: float, S: int):
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
        accent = np.clip(u * (S / 2) + 0.5, 0, 1)  # two-tone halves
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


def _material_colour_map(p: dict, u, v, d, R: float, lx: float, ly: float, rng, sl, S: int) -> np.ndarray:
    """Surface colour (h, w, 3) of one instance: the material's shading under a light from (lx, ly)."""
    mat = p["material"]
    lin = (u * lx + v * ly) * (1 / R)
    bevel = np.clip(-d * (1 / (0.12 * R)), 0, 1)  # 0 on the outline, 1 inside
    colour = p["colour"]
    if mat == "metal":
        streak = _smooth(rng, S, max(8, S // 2), 3)[sl]
        hx, hy = u - 0.35 * R * lx, v - 0.35 * R * ly
        spec = 0.22 * np.exp(-(hx * hx + hy * hy) * (1 / (0.09 * R * R)))
        t = 0.78 + 0.14 * lin + 0.05 * streak
        col = colour * t[..., None] + spec[..., None]
    elif mat == "plastic":
        t = 0.9 + 0.06 * lin + 0.02 * _smooth(rng, S, 12)[sl]
        col = colour * t[..., None]
    elif mat == "rubber":
        t = 0.95 + 0.05 * lin + 0.1 * _smooth(rng, S, _cells(S / 3, S))[sl]
        col = colour * t[..., None]
    elif mat == "glossy":
        hx, hy = u - 0.45 * R * lx, v - 0.45 * R * ly
        spec = 0.45 * np.exp(-(hx * hx + hy * hy) * (1 / (0.03 * R * R)))
        col = colour * (0.86 + 0.08 * lin)[..., None] + spec[..., None]
    else:  # wood
        g = np.sin(u * (p["grain"] / R) + 2.0 * _smooth(rng, S, 4)[sl])
        col = _lerp(colour, colour * 0.7, 0.5 + 0.5 * g) * (0.92 + 0.06 * lin)[..., None]
    return col * (0.72 + 0.28 * bevel)[..., None]


def _render_object(p: dict, rng: np.random.Generator, S: int) -> _Scene:
    X, Y = _grid(S)
    light = _illumination(rng, S)
    bg = _background(p["background"], rng, S, light)
    base = bg.copy()
    fg = np.zeros((S, S), np.float32)
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
        wob = sum(
            float(rng.uniform(0, irregular)) * np.cos(k * ang + float(rng.uniform(0, 2 * np.pi))) for k in (2, 3, 5)
        )
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
    A, B = pts[:-1], pts[1:]
    sl = _segments_window(A, B, 2 * half_w, S)
    dist = _segment_distance(A, B, sl, S)
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


def _segment_distance(A: np.ndarray, B: np.ndarray, sl, S: int) -> np.ndarray:
    """Distance (units) from every pixel centre of window ``sl`` to the nearest segment A[i]-B[i]."""
    X, Y = _grid(S)
    xs, ys = X[sl], Y[sl]
    P = np.stack([xs.ravel(), ys.ravel()], 1)[:, None, :]  # (M, 1, 2)
    A, AB = A[None].astype(np.float32), (B - A)[None].astype(np.float32)
    tt = np.clip(((P - A) * AB).sum(-1) / ((AB * AB).sum(-1) + 1e-12), 0, 1)[..., None]
    return np.sqrt(((P - (A + tt * AB)) ** 2).sum(-1)).min(1).reshape(xs.shape)


def _segments_window(A: np.ndarray, B: np.ndarray, pad: float, S: int):
    pts = np.concatenate([A, B])
    lo, hi = pts.min(0), pts.max(0)
    return _window((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, (hi[0] - lo[0]) / 2 + pad, (hi[1] - lo[1]) / 2 + pad, S)


def _crack(scene, rng, S):
    """A thin jagged dark (on dark surfaces: light) line, a random walk both ways from a point, with
    branches; on objects the walk turns away from the outline, so the crack stays on the part."""
    cx, cy = _pick_centre(scene, rng, S)
    L = float(rng.uniform(0.35, 0.6)) * (0.7 if scene.is_object else 1.0)
    n = 9
    step = L / n
    a0 = float(rng.uniform(0, np.pi))
    h = S / 2.0

    def inside(x: float, y: float) -> bool:
        if not scene.is_object:
            return True
        ix, iy = int((x + 1) * h), int((y + 1) * h)
        return 0 <= ix < S and 0 <= iy < S and scene.fg[iy, ix] > 0.9

    segs = []
    walks = [((cx, cy), a0, n), ((cx, cy), a0 + np.pi, n)]
    while walks:
        (x, y), a, k = walks.pop()
        for j in range(k):
            for attempt in range(6):
                b = a + float(rng.normal(0, 0.55)) + (float(rng.uniform(-2.5, 2.5)) if attempt else 0.0)
                nx, ny = x + step * np.cos(b), y + step * np.sin(b)
                if inside(nx, ny):
                    break
            else:
                break  # boxed in: this branch ends here
            a = b
            segs.append((x, y, nx, ny))
            if k == n and j in (2, 5) and rng.random() < 0.6:  # a branch off the main line
                walks.append(((nx, ny), a + float(rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)), n // 3))
            x, y = nx, ny
    if not segs:
        segs.append((cx, cy, cx + 1e-3, cy))
    seg = np.asarray(segs, np.float32)
    A, B = seg[:, :2], seg[:, 2:]
    half_w = max(1.3, S / 110.0) / S
    sl = _segments_window(A, B, 2 * half_w, S)
    dist = _segment_distance(A, B, sl, S)
    R = _on_object(scene, sl, dist <= half_w)
    clean = scene.base[sl]
    if not R.any():
        return sl, R, clean
    depth = np.clip(1.2 - 0.5 * (dist / half_w) ** 2, 0.7, 1.0)[..., None]
    if _away(clean[R]) < 0:
        return sl, R, clean * (1 - float(rng.uniform(0.55, 0.75)) * depth)
    return sl, R, clean + float(rng.uniform(0.3, 0.4)) * depth


def _colour_deviation(scene, rng, S):
    """A crisp-edged region re-coloured in a different hue, its texture (luminance) kept."""
    cx, cy = _pick_centre(scene, rng, S)
    r = float(rng.uniform(0.1, 0.2))
    sl, e = _blob(rng, S, cx, cy, r, r * float(rng.uniform(0.6, 1.0)), 0.15)
    R = _on_object(scene, sl, e < 1)
    clean = scene.base[sl]
    if not R.any():
        return sl, R, clean
    mean = clean[R].mean(0)
    hues = [np.asarray(colorsys.hls_to_rgb(h, 0.5, 1.0), np.float32) for h in np.arange(6) / 6.0]
    far = sorted(hues, key=lambda c: -float(np.abs(c / c.mean() * mean.mean() - mean).max()))[:3]
    tint = far[int(rng.integers(3))]
    lum = 0.22 + 0.65 * clean.mean(-1, keepdims=True)
    return sl, R, _lerp(clean, lum * (tint / tint.mean()), np.full(clean.shape[:2], 0.85, np.float32))


def _bilinear(img: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """``img`` (S, S, 3) sampled at pixel coordinates (px, py) (edge-clamped)."""
    S = img.shape[0]
    px = np.clip(px, 0, S - 1.001)
    py = np.clip(py, 0, S - 1.001)
    x0, y0 = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
    fx, fy = (px - x0)[..., None], (py - y0)[..., None]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bot = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return (top * (1 - fy) + bot * fy).astype(np.float32)


def _shape_deviation(scene, rng, S):
    """Geometry deviation. Objects: the outline bulges out or is dented in (the image is displaced
    along the outline's normal around a point of it). Textures: a local swirl of the pattern with a
    slight bump shading (a deformed, embossed spot)."""
    X, Y = _grid(S)
    h = S / 2.0
    if scene.is_object:
        edge = np.flatnonzero(((scene.fg > 0.2) & (scene.fg < 0.8)).ravel())
        k = int(edge[rng.integers(len(edge))]) if len(edge) else int(np.argmax(scene.fg))
        iy, ix = divmod(k, S)
        cx, cy = float(X.flat[k]), float(Y.flat[k])
        patch = scene.fg[max(0, iy - 3) : iy + 4, max(0, ix - 3) : ix + 4]
        gy, gx = np.gradient(patch)
        n = -np.array([gx.mean(), gy.mean()], np.float32)  # fg decreases outwards
        n /= float(np.linalg.norm(n)) + 1e-6
        r = float(rng.uniform(0.11, 0.17))
        amp = float(rng.uniform(0.5, 0.8)) * r * (1 if rng.random() < 0.5 else -1)
        sl = _window(cx, cy, 2.2 * r, 2.2 * r, S)
        dx, dy = X[sl] - cx, Y[sl] - cy
        w = np.exp(-(dx * dx + dy * dy) * (1 / (r * r)))
        sx, sy = X[sl] - amp * w * n[0], Y[sl] - amp * w * n[1]
        new = _bilinear(scene.base, (sx + 1) * h - 0.5, (sy + 1) * h - 0.5)
        return sl, w > 0.02, new
    cx, cy = _pick_centre(scene, rng, S)
    r = float(rng.uniform(0.08, 0.15))
    sl = _window(cx, cy, 1.6 * r, 1.6 * r, S)
    dx, dy = X[sl] - cx, Y[sl] - cy
    w = np.exp(-(dx * dx + dy * dy) * (1 / (r * r)))
    ang = float(rng.uniform(1.2, 2.2)) * (1 if rng.random() < 0.5 else -1) * w
    c, s = np.cos(ang), np.sin(ang)
    sx, sy = cx + c * dx - s * dy, cy + s * dx + c * dy
    new = _bilinear(scene.base, (sx + 1) * h - 0.5, (sy + 1) * h - 0.5)
    new *= (1 + float(rng.uniform(0.1, 0.18)) * (1 if rng.random() < 0.5 else -1) * w)[..., None]
    return sl, w > 0.3, new


def _restrict_for_objects(scene: _Scene) -> bool:
    return scene.is_object


# defect -> (function, restrict): restrict (bool, or a function of the scene) means the mask keeps only
# the pixels the new values really change by MIN_CHANGE; otherwise too-faint pixels are pushed until they do
_DEFECTS = {
    "scratch": (_scratch, False),
    "hole": (_hole, False),
    "stain": (_stain, False),
    "missing_part": (_missing, True),
    "foreign_object": (_foreign, False),
    "crack": (_crack, False),
    "color_deviation": (_colour_deviation, False),
    "shape_deviation": (_shape_deviation, _restrict_for_objects),
}
assert tuple(_DEFECTS) == DEFECT_TYPES


def _apply_defect(
    scene: _Scene, defect: str, rng: np.random.Generator, S: int, noise: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``defect`` on the scene: (defective noise-free image, mask). The change of a pixel is measured
    after adding ``noise`` (S, S, 1) and clipping to [0, 1], as the written image will have it."""
    fn, restrict = _DEFECTS[defect]
    restrict = restrict(scene) if callable(restrict) else restrict
    for attempt in range(100):
        sl, R, new = fn(scene, rng, S)
        clean = scene.base[sl]
        new = np.clip(np.asarray(new, np.float32), 0.0, 1.0)
        if noise is None:
            change = np.abs(new - clean).max(-1)
        else:
            nz = noise[sl]
            change = np.abs(np.clip(new + nz, 0.0, 1.0) - np.clip(clean + nz, 0.0, 1.0)).max(-1)
        if restrict and attempt < 60:
            R = R & (change >= MIN_CHANGE)
        else:  # (a restricted defect falls back to this after 60 tries: low-contrast scenes)
            weak = R & (change < MIN_CHANGE)
            if weak.any():  # push too-faint pixels away from their value, towards mid-grey
                c = clean[weak]
                direction = np.where(c.mean(-1, keepdims=True) > 0.5, -1.0, 1.0).astype(np.float32)
                new[weak] = np.clip(c + 1.5 * MIN_CHANGE * direction, 0.0, 1.0)
        frac = R.sum() / float(S * S)
        if DEFECT_MIN_AREA[defect] <= frac <= MAX_AREA:
            out = scene.base.copy()
            out[sl][R] = new[R]
            mask = np.zeros((S, S), bool)
            mask[sl] = R
            return out, mask
    raise RuntimeError(f"could not place a {defect!r} defect of {DEFECT_MIN_AREA[defect]:.1%}-{MAX_AREA:.0%} area")


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
    img, R = _apply_defect(scene, defect, rng, S, noise)
    return _quantise(img + noise), R, clean


# ----------------------------------------------------------------------------- writer

#: Bumped whenever the same arguments would give different images (a reused dataset must match).
GENERATOR_VERSION = 2


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
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
        + chunk(b"IEND", b"")
    )


def _save_png(arr: np.ndarray, path: Path, level: int = 1) -> None:
    Path(path).write_bytes(_png_bytes(arr, level))


def _settings(
    train_per_category: int, test_good_per_category: int, test_defect_per_category: int, image_size: int, seed: int
) -> dict:
    for name, val in (
        ("train_per_category", train_per_category),
        ("test_good_per_category", test_good_per_category),
        ("test_defect_per_category", test_defect_per_category),
    ):
        if val < 0:
            raise ValueError(f"{name} must be >= 0, got {val}")
    if train_per_category < 1:
        raise ValueError("train_per_category must be >= 1")
    if int(image_size) < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    return dict(
        train_per_category=int(train_per_category),
        test_good_per_category=int(test_good_per_category),
        test_defect_per_category=int(test_defect_per_category),
        image_size=int(image_size),
        seed=int(seed),
        defect_types=list(DEFECT_TYPES),
        version=GENERATOR_VERSION,
    )


def read_marker(root: str | os.PathLike) -> dict | None:
    """The settings file a generated dataset folder holds (``None`` if it has none or it is unreadable)."""
    try:
        d = json.loads((Path(root) / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _write_marker(root: Path, settings: dict, specs: list[CategorySpec], complete: list[str]) -> None:
    """Atomic replace (``dpdiff.utils.io.atomic_write_text``); rewritten after every category."""
    doc = dict(
        generator="dpdiff.data.synthetic",
        num_categories=len(specs),
        **settings,
        categories=[s.name for s in specs],
        complete=[n for n in (s.name for s in specs) if n in complete],
        factors={s.name: s.factors for s in specs},
    )
    atomic_write_text(root / _MARKER, json.dumps(doc, indent=1))


def _write_categories(
    root: Path,
    specs: list[CategorySpec],
    todo: list[CategorySpec],
    settings: dict,
    complete: list[str],
    png_compress_level: int,
    progress: bool = False,
) -> None:
    """Render and write the categories ``todo`` (replacing their folders), marking each complete in the
    marker file once all its files are written."""
    if not 0 <= png_compress_level <= 9:
        raise ValueError(f"png_compress_level must be in 0..9, got {png_compress_level}")
    S, seed = settings["image_size"], settings["seed"]
    for spec in todo:
        if (root / spec.name).exists():
            shutil.rmtree(root / spec.name)
    _write_marker(root, settings, specs, complete)
    bar = None
    if progress:
        from dpdiff.utils.progress import progress as progress_bar

        bar = progress_bar(total=len(todo), desc="synthetic categories", unit="cat", mininterval=1.0)
    # PNG compression (zlib releases the GIL) runs in writer threads while the next image renders;
    # rendering stays sequential, so the bytes do not depend on scheduling.
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        pending: list[Future] = []

        def save(arr: np.ndarray, path: Path, level: int = png_compress_level) -> None:
            pending.append(pool.submit(_save_png, arr, path, level))
            if len(pending) > 32:
                pending.pop(0).result()

        for spec in todo:
            cat_dir = root / spec.name

            def rng_for(split_code: int, k: int, index: int = spec.index) -> np.random.Generator:
                return np.random.default_rng([int(seed), index, split_code, k])

            (cat_dir / "train" / "good").mkdir(parents=True)
            for k in range(settings["train_per_category"]):
                save(render_sample(spec, S, rng_for(0, k))[0], cat_dir / "train" / "good" / f"{k:03d}.png")
            (cat_dir / "test" / "good").mkdir(parents=True)
            for k in range(settings["test_good_per_category"]):
                save(render_sample(spec, S, rng_for(1, k))[0], cat_dir / "test" / "good" / f"{k:03d}.png")
            counters = {d: 0 for d in DEFECT_TYPES}
            for k in range(settings["test_defect_per_category"]):
                defect = DEFECT_TYPES[k % len(DEFECT_TYPES)]
                img, mask, _ = render_sample(spec, S, rng_for(2, k), defect)
                n = counters[defect]
                counters[defect] += 1
                img_dir, gt_dir = cat_dir / "test" / defect, cat_dir / "ground_truth" / defect
                img_dir.mkdir(parents=True, exist_ok=True)
                gt_dir.mkdir(parents=True, exist_ok=True)
                save(img, img_dir / f"{n:03d}.png")
                save(mask.astype(np.uint8) * 255, gt_dir / f"{n:03d}_mask.png", max(1, png_compress_level))
            for f in pending:  # this category is on disk before it is marked complete
                f.result()
            pending.clear()
            complete.append(spec.name)
            _write_marker(root, settings, specs, complete)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()


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
    byte-identical for the same arguments, and a category's files do not depend on how many
    categories are generated with it. A category folder that already exists is replaced if
    ``root`` was made by this function (marker file ``.dpdiff_synthetic.json``), else it is an error.
    ``png_compress_level`` (zlib 0-9): 0 writes ~1.4x larger files about 1.5x faster.
    """
    root = Path(root)
    settings = _settings(train_per_category, test_good_per_category, test_defect_per_category, image_size, seed)
    specs = category_specs(num_categories, seed)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / _MARKER).is_file():
        for spec in specs:
            if (root / spec.name).exists():
                raise FileExistsError(
                    f"{str(root / spec.name)!r} exists and {str(root)!r} was not made by generate_synthetic_dataset"
                )
    _write_categories(root, specs, specs, settings, [], png_compress_level)
    return [s.name for s in specs]


def ensure_synthetic_dataset(
    root: Path,
    num_categories: int,
    train_per_category: int = 48,
    test_good_per_category: int = 12,
    test_defect_per_category: int = 12,
    image_size: int = 256,
    seed: int = 0,
    png_compress_level: int = 1,
    progress: bool = True,
) -> list[str]:
    """Like :func:`generate_synthetic_dataset`, but reuse what ``root`` already holds: only the
    categories not yet complete are written (a dataset made for fewer categories is extended; one
    made for more is used as is, its first ``num_categories`` being exactly the smaller dataset).
    A folder generated with other settings (image size, images per category, seed, generator version)
    raises ``FileExistsError`` naming the differences; so does a non-empty folder not made by this
    module. Returns the first ``num_categories`` names.
    """
    root = Path(root)
    settings = _settings(train_per_category, test_good_per_category, test_defect_per_category, image_size, seed)
    marker = read_marker(root)
    if marker is None:
        if root.exists() and any(root.iterdir()):
            raise FileExistsError(f"{root} is not empty and holds no synthetic dataset marker ({_MARKER})")
        complete: list[str] = []
        have = 0
    else:
        diff = {k: (marker.get(k), v) for k, v in settings.items() if marker.get(k) != v}
        if diff:
            what = ", ".join(f"{k}: {a!r} there, {b!r} asked" for k, (a, b) in diff.items())
            raise FileExistsError(f"{root} holds a synthetic dataset made with other settings ({what})")
        complete = list(marker.get("complete", []))
        have = int(marker.get("num_categories", 0))
    specs = category_specs(max(int(num_categories), have), seed)
    todo = [s for s in specs[:num_categories] if s.name not in complete]
    if todo or marker is None or have < len(specs):
        root.mkdir(parents=True, exist_ok=True)
        _write_categories(root, specs, todo, settings, complete, png_compress_level, progress=progress)
    return [s.name for s in specs[:num_categories]]
