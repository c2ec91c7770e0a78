"""Synthetic categories: the factors (patterns, shapes, materials, backgrounds, layouts, palettes), their fixed
most-different-first order and the per-category renderer parameters (:func:`category_specs`).

A category is a combination of factors. Textures: pattern x colour palette x scale. Objects:
shape x material x background x layout x colour palette. The order in which combinations are
used is fixed (it does not depend on the seed) and prefix-stable: the first N categories of a
dataset with M > N categories are the N categories of a dataset with N categories, so subsets are
nested (S1 in S2 in S3). Categories 0-4 are the original hand-tuned five (the demo uses 0-3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from dpdiff.data.synthetic._common import _col

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
