"""Defect-free scenes: the scene record, illumination and the texture, nut and chip renderers."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from dpdiff.data.synthetic._common import (
    _HI,
    _LO,
    Size,
    _box_sdf,
    _col,
    _coverage,
    _ext,
    _grid,
    _hw,
    _lerp,
    _px,
    _rotate,
    _smooth,
)


@dataclass
class _Scene:
    base: np.ndarray  # (H, W, 3) noise-free normal image in [_LO, _HI]
    fg: np.ndarray  # (H, W) object coverage (ones for textures)
    bg: np.ndarray  # (H, W, 3) what a missing part reveals (may be a broadcast view)
    is_object: bool
    defect_scale: float = 1.0  # defects' sizes (in units) are multiplied by this (render_sample's max_defect_fraction)


def _illumination(rng: np.random.Generator, S: Size) -> np.ndarray:
    """Brightness gain times low-frequency illumination (part of the normal variation), (H, W, 1)."""
    gain = float(rng.uniform(0.93, 1.07))
    light = _smooth(rng, S, 3) * (0.04 * gain)
    light += gain
    return light[..., None]


def _lit(img: np.ndarray, light: np.ndarray) -> np.ndarray:
    out = img * light
    np.clip(out, _LO, _HI, out=out)
    return out.astype(np.float32, copy=False)


def _window(cx: float, cy: float, rx: float, ry: float, S: Size) -> tuple[slice, slice]:
    """Pixel slices covering [cx - rx, cx + rx] x [cy - ry, cy + ry] (units), clipped to the image."""
    h = _px(S) / 2.0
    (H, W), (ex, ey) = _hw(S), _ext(S)
    x0, x1 = int(np.floor((cx - rx + ex) * h)), int(np.ceil((cx + rx + ex) * h)) + 1
    y0, y1 = int(np.floor((cy - ry + ey) * h)), int(np.ceil((cy + ry + ey) * h)) + 1
    return slice(max(0, y0), min(H, max(0, y1))), slice(max(0, x0), min(W, max(0, x1)))


def _texture_scene(base: np.ndarray, substrate: np.ndarray) -> _Scene:
    return _Scene(base, np.ones(base.shape[:2], np.float32), np.broadcast_to(substrate, base.shape), False)


def _render_stripes(p: dict, rng: np.random.Generator, S: Size) -> _Scene:
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
    t += 0.08 * _smooth(rng, S, _px(S) // 4)
    np.clip(t, 0, 1, out=t)
    base = _lit(_lerp(p["c0"], p["c1"], t), _illumination(rng, S))
    dark = float((p["c0"] + p["c1"]).mean()) / 2 > 0.45
    return _texture_scene(base, _col(0.08, 0.08, 0.08) if dark else _col(0.9, 0.9, 0.88))


def _render_leather(p: dict, rng: np.random.Generator, S: Size) -> _Scene:
    n = (
        0.55 * _smooth(rng, S, 6)
        + 0.3 * _smooth(rng, S, 20)
        + 0.35 * _smooth(rng, S, int(p["grain"] * _px(S) / 256) + 8)
    )
    c = _smooth(rng, S, 10) * (1 / 0.12)
    variant = p.get("variant", "pebbled")
    if variant == "smooth":  # fine-grained, almost no pebbles, soft creases
        n = 0.35 * _smooth(rng, S, 6) + 0.12 * _smooth(rng, S, _cells(_px(S) / 3, S))
    crease = (0.9 / 0.78 * p["crease"]) * np.exp(-(c * c))
    if variant == "creased":  # a second, denser crease network
        c2 = _smooth(rng, S, 18) * (1 / 0.1)
        crease = crease * 1.3 + 0.25 * np.exp(-(c2 * c2))
    t = 0.9 + (0.9 * 0.14 / 0.78) * n - crease
    base = _lit(p["base"] * t[..., None], _illumination(rng, S))
    return _texture_scene(base, _col(0.9, 0.88, 0.82))


@lru_cache(maxsize=16)
def _vignette(S: Size) -> np.ndarray:
    X, Y = _grid(S)
    if not isinstance(S, int):  # the same fall-off from the centre to the edges whatever the aspect ratio
        ex, ey = _ext(S)
        X, Y = X * np.float32(1 / ex), Y * np.float32(1 / ey)
    a = (1.0 - 0.12 * (X * X + Y * Y))[..., None]
    a.setflags(write=False)
    return a


def _placement(
    rng: np.random.Generator, S: Size, max_degrees: float
) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """The pixel grid (X, Y) and a random placement of a single object: centre (cx, cy) within +-0.05 of the
    image centre, then rotation th within +-``max_degrees`` (drawn from ``rng`` in this order)."""
    X, Y = _grid(S)
    cx, cy = (float(x) for x in rng.uniform(-0.05, 0.05, size=2))
    th = float(rng.uniform(-np.deg2rad(max_degrees), np.deg2rad(max_degrees)))
    return X, Y, cx, cy, th


def _render_nut(p: dict, rng: np.random.Generator, S: Size) -> _Scene:
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
    fg = np.zeros(_hw(S), np.float32)
    fg[sl] = fg_w
    return _Scene(base, fg, bg, True)


@lru_cache(maxsize=16)
def _traces(S: Size) -> np.ndarray:
    _, Y = _grid(S)
    a = (0.9 + 0.1 * (np.abs(((Y + 1) * 6) % 1 - 0.5) < 0.06)).astype(np.float32)[..., None]
    a.setflags(write=False)
    return a


def _render_chip(p: dict, rng: np.random.Generator, S: Size) -> _Scene:
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
    fg = np.zeros(_hw(S), np.float32)
    fg[sl] = fg_body + fg_pin
    return _Scene(base, fg, bg, True)


def _render_grid(p: dict, rng: np.random.Generator, S: Size) -> _Scene:
    X, Y = _grid(S)
    u, v = _rotate(X, Y, 0.0, 0.0, p["angle"])
    brushed = _smooth(rng, S, max(8, _px(S) // 2), 4)  # streaks along x
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
        brushed_v = _smooth(rng, S, 4, max(8, _px(S) // 2))
        t = 0.78 + 0.05 * np.where(checker, brushed, brushed_v) + 0.05 * checker - 0.35 * np.exp(-(g * g))
    base = _lit(p["metal"] * t[..., None], _illumination(rng, S))
    return _texture_scene(base, _col(0.1, 0.09, 0.08))


def _hash2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random values in [0, 1) per integer cell (a, b)."""
    x = np.sin(a.astype(np.float64) * 127.1 + b.astype(np.float64) * 311.7) * 43758.5453
    return (x - np.floor(x)).astype(np.float32)


def _cells(n: float, S: Size) -> int:
    """Noise cells across the image, at most a third of the pixels (finer noise would alias)."""
    return int(max(2, min(round(n), _px(S) // 3)))


def _texture_frame(p: dict, rng: np.random.Generator, S: Size, angle: float, jitter_deg: float = 2.0):
    """Rotated coordinates with a random translation (the normal variation of a surface)."""
    X, Y = _grid(S)
    th = angle + float(rng.normal(0, np.deg2rad(jitter_deg)))
    u, v = _rotate(X, Y, 0.0, 0.0, th)
    return u + np.float32(rng.uniform(-1, 1)), v + np.float32(rng.uniform(-1, 1))


def _render_wood(p: dict, rng: np.random.Generator, S: Size) -> _Scene:
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
    rows, cols = (3, max(4, _px(S) // 2)) if p["vertical"] else (max(4, _px(S) // 2), 3)
    fibres = _smooth(rng, S, rows, cols)  # streaks along the grain
    m = np.clip(0.15 + 0.6 * late + 0.08 * fibres, 0, 1)
    base = _lit(_lerp(p["c0"], p["c1"] * 0.8 + p["c0"] * 0.2, m), _illumination(rng, S))
    return _texture_scene(base, _col(0.08, 0.07, 0.06))


def _render_marble(p: dict, rng: np.random.Generator, S: Size) -> _Scene:
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


def _render_tiles(p: dict, rng: np.random.Generator, S: Size) -> _Scene:
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
    grout = np.clip((hd - (0.5 - p["grout"])) * (p["cell"] * _px(S) / 2), 0, 1)  # antialiased over ~1 px
    bevel = np.clip((hd - 0.3) * 4, 0, 1)
    col = p["c0"] * (0.88 + 0.22 * tile - 0.12 * bevel)[..., None]
    base = _lit(_lerp(col, p["c1"], grout), _illumination(rng, S))
    return _texture_scene(base, _col(0.07, 0.07, 0.07))


def _render_dots(p: dict, rng: np.random.Generator, S: Size) -> _Scene:
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
    fabric = 0.94 + 0.05 * _smooth(rng, S, _cells(_px(S) / 4, S))
    base = _lit(_lerp(p["c0"] * fabric[..., None], p["c1"], dot), _illumination(rng, S))
    return _texture_scene(base, _col(0.9, 0.9, 0.88) if float(p["c0"].mean()) < 0.45 else _col(0.08, 0.08, 0.08))


def _render_terrazzo(p: dict, rng: np.random.Generator, S: Size) -> _Scene:
    c = _cells(p["cells"], S)
    grain = 0.05 * _smooth(rng, S, _cells(_px(S) / 4, S))
    k = _px(S) / 16.0  # edge sharpness of the chips
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


def _render_bricks(p: dict, rng: np.random.Generator, S: Size) -> _Scene:
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
    mortar = np.clip((0.11 * h - dist) * (_px(S) / 2) + 0.5, 0, 1)
    shade = 0.82 + 0.3 * _hash2(row, col_i) + 0.06 * _smooth(rng, S, _cells(_px(S) / 5, S))
    base = _lit(_lerp(p["c0"] * shade[..., None], p["c1"], mortar), _illumination(rng, S))
    return _texture_scene(base, _col(0.07, 0.07, 0.07))


def _render_knurled(p: dict, rng: np.random.Generator, S: Size) -> _Scene:
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
    m = np.clip(0.55 * t + 0.3 * ridge * t + 0.04 * _smooth(rng, S, _cells(_px(S) / 3, S)), 0, 1)
    base = _lit(_lerp(p["c0"] * 0.55, p["c1"] * 0.5 + p["c0"] * 0.5, m), _illumination(rng, S))
    return _texture_scene(base, _col(0.07, 0.07, 0.07))
