"""Planted defects: the eight defect types, their exact masks, and :func:`render_sample`.

Each defect function returns (window slices, region R (bool, window), new values (window, 3)).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np

from dpdiff.data.synthetic._common import Size, _col, _ext, _grid, _hw, _lerp, _px, _rotate, _smooth
from dpdiff.data.synthetic.categories import CategorySpec
from dpdiff.data.synthetic.objects import _RENDERERS
from dpdiff.data.synthetic.scenes import _Scene, _window

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


def _pick_centre(scene: _Scene, rng: np.random.Generator, S: Size, margin: float = 0.7) -> tuple[float, float]:
    """A centre in units: anywhere but the outer ``1 - margin`` units (textures) or on the object interior
    (objects)."""
    if not scene.is_object:
        if isinstance(S, int):
            return float(rng.uniform(-margin, margin)), float(rng.uniform(-margin, margin))
        ex, ey = _ext(S)
        mx, my = ex - 1.0 + margin, ey - 1.0 + margin
        return float(rng.uniform(-mx, mx)), float(rng.uniform(-my, my))
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


def _stroke_region(scene, A: np.ndarray, B: np.ndarray, half_w: float, S: Size):
    """(window slices, distance to the polyline, the stroke's pixels on the object, the clean pixels) of a stroke
    of half-width ``half_w`` along the segments ``A -> B`` (scratches and cracks)."""
    sl = _segments_window(A, B, 2 * half_w, S)
    dist = _segment_distance(A, B, sl, S)
    R = _on_object(scene, sl, dist <= half_w)
    return sl, dist, R, scene.base[sl]


def _scratch(scene: _Scene, rng: np.random.Generator, S: Size):
    cx, cy = _pick_centre(scene, rng, S)
    L = float(rng.uniform(0.5, 1.0)) * (0.8 if scene.is_object else 1.0) * scene.defect_scale
    a = float(rng.uniform(0, np.pi))
    d = np.array([np.cos(a), np.sin(a)]) * L / 2
    bend = np.array([-d[1], d[0]]) * float(rng.uniform(-0.5, 0.5))
    t = np.linspace(0, 1, 17)[:, None]
    c = np.array([cx, cy])
    p0, p1, p2 = c - d, c + bend, c + d
    pts = ((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2).astype(np.float32)
    half_w = max(1.5, _px(S) / 64.0) / _px(S)  # half of (width in px) in units (1 px = 2 / short side)
    A, B = pts[:-1], pts[1:]
    sl, dist, R, clean = _stroke_region(scene, A, B, half_w, S)
    if not R.any():
        return sl, R, clean
    prof = np.clip(1 - 0.5 * (dist / half_w) ** 2, 0.5, 1)
    delta = _away(clean[R]) * float(rng.uniform(0.3, 0.45))
    return sl, R, clean + (delta * prof)[..., None]


def _hole(scene: _Scene, rng: np.random.Generator, S: Size):
    cx, cy = _pick_centre(scene, rng, S)
    k = scene.defect_scale
    sl, e = _blob(rng, S, cx, cy, float(rng.uniform(0.05, 0.13)) * k, float(rng.uniform(0.05, 0.13)) * k, 0.12)
    R = _on_object(scene, sl, e < 1)
    clean = scene.base[sl]
    if not R.any():
        return sl, R, clean
    target = _col(0.06, 0.05, 0.05) if _away(clean[R]) < 0 else _col(0.95, 0.94, 0.9)
    depth = np.clip(1.15 - 0.5 * e, 0.6, 1.0)  # shaded towards the centre
    return sl, R, _lerp(clean, target, 0.85 * depth)


def _stain(scene: _Scene, rng: np.random.Generator, S: Size):
    cx, cy = _pick_centre(scene, rng, S)
    r = float(rng.uniform(0.09, 0.2)) * scene.defect_scale
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


def _missing(scene: _Scene, rng: np.random.Generator, S: Size):
    if scene.is_object:  # a chunk of the object's outline
        edge = np.flatnonzero(((scene.fg > 0.5) & (scene.fg < 1.0)).ravel())
        if len(edge) == 0:
            edge = np.flatnonzero((scene.fg > 0.5).ravel())
        k = int(edge[rng.integers(len(edge))])
        X, Y = _grid(S)
        cx, cy = float(X.flat[k]), float(Y.flat[k])
        r = float(rng.uniform(0.1, 0.2)) * scene.defect_scale
        sl, e = _blob(rng, S, cx, cy, r, r * float(rng.uniform(0.6, 1.0)), 0.1)
        R = (e < 1) & (scene.fg[sl] > 0.02)
    else:
        cx, cy = _pick_centre(scene, rng, S)
        r = float(rng.uniform(0.07, 0.15)) * scene.defect_scale
        sl, e = _blob(rng, S, cx, cy, r, r * float(rng.uniform(0.5, 1.0)), 0.2)
        R = e < 1
    return sl, R, np.array(scene.bg[sl], dtype=np.float32)


def _foreign(scene: _Scene, rng: np.random.Generator, S: Size):
    cx, cy = _pick_centre(scene, rng, S)
    r = float(rng.uniform(0.06, 0.12)) * scene.defect_scale
    sl, e = _blob(rng, S, cx, cy, r, r * float(rng.uniform(0.5, 1.0)), 0.25)
    R = _on_object(scene, sl, e < 1)
    if not R.any():
        return sl, R, scene.base[sl]
    X, Y = _grid(S)
    u, v = _rotate(X[sl], Y[sl], cx, cy, float(rng.uniform(0, np.pi)))
    f = float(rng.uniform(25, 45)) / scene.defect_scale  # the pattern shrinks with the patch
    kind = int(rng.integers(3))
    if kind == 0:  # fine checker
        t = ((np.floor(u * f / 2) + np.floor(v * f / 2)) % 2).astype(np.float32)
    elif kind == 1:  # fibres
        t = (0.5 + 0.5 * np.sin(u * f * np.pi + 3 * _smooth(rng, S, 12)[sl])).astype(np.float32)
    else:  # speckle
        t = (_smooth(rng, S, _px(S) // 3)[sl] > 0).astype(np.float32)
    c0 = np.asarray(colorsys.hls_to_rgb(float(rng.uniform(0, 1)), float(rng.uniform(0.2, 0.35)), 0.9), np.float32)
    c1 = np.asarray(colorsys.hls_to_rgb(float(rng.uniform(0, 1)), float(rng.uniform(0.65, 0.8)), 0.9), np.float32)
    return sl, R, _lerp(c0, c1, t)


def _segment_distance(A: np.ndarray, B: np.ndarray, sl, S: Size) -> np.ndarray:
    """Distance (units) from every pixel centre of window ``sl`` to the nearest segment A[i]-B[i]."""
    X, Y = _grid(S)
    xs, ys = X[sl], Y[sl]
    P = np.stack([xs.ravel(), ys.ravel()], 1)[:, None, :]  # (M, 1, 2)
    A, AB = A[None].astype(np.float32), (B - A)[None].astype(np.float32)
    tt = np.clip(((P - A) * AB).sum(-1) / ((AB * AB).sum(-1) + 1e-12), 0, 1)[..., None]
    return np.sqrt(((P - (A + tt * AB)) ** 2).sum(-1)).min(1).reshape(xs.shape)


def _segments_window(A: np.ndarray, B: np.ndarray, pad: float, S: Size):
    pts = np.concatenate([A, B])
    lo, hi = pts.min(0), pts.max(0)
    return _window((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, (hi[0] - lo[0]) / 2 + pad, (hi[1] - lo[1]) / 2 + pad, S)


def _crack(scene: _Scene, rng: np.random.Generator, S: Size):
    """A thin jagged dark (on dark surfaces: light) line, a random walk both ways from a point, with
    branches; on objects the walk turns away from the outline, so the crack stays on the part."""
    cx, cy = _pick_centre(scene, rng, S)
    L = float(rng.uniform(0.35, 0.6)) * (0.7 if scene.is_object else 1.0) * scene.defect_scale
    n = 9
    step = L / n
    a0 = float(rng.uniform(0, np.pi))
    h = _px(S) / 2.0
    (H, W), (ex, ey) = _hw(S), _ext(S)

    def inside(x: float, y: float) -> bool:
        if not scene.is_object:
            return True
        ix, iy = int((x + ex) * h), int((y + ey) * h)
        return 0 <= ix < W and 0 <= iy < H and scene.fg[iy, ix] > 0.9

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
    half_w = max(1.3, _px(S) / 110.0) / _px(S)
    sl, dist, R, clean = _stroke_region(scene, A, B, half_w, S)
    if not R.any():
        return sl, R, clean
    depth = np.clip(1.2 - 0.5 * (dist / half_w) ** 2, 0.7, 1.0)[..., None]
    if _away(clean[R]) < 0:
        return sl, R, clean * (1 - float(rng.uniform(0.55, 0.75)) * depth)
    return sl, R, clean + float(rng.uniform(0.3, 0.4)) * depth


def _colour_deviation(scene: _Scene, rng: np.random.Generator, S: Size):
    """A crisp-edged region re-coloured in a different hue, its texture (luminance) kept."""
    cx, cy = _pick_centre(scene, rng, S)
    r = float(rng.uniform(0.1, 0.2)) * scene.defect_scale
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
    """``img`` (H, W, 3) sampled at pixel coordinates (px, py) (edge-clamped)."""
    H, W = img.shape[:2]
    px = np.clip(px, 0, W - 1.001)
    py = np.clip(py, 0, H - 1.001)
    x0, y0 = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
    fx, fy = (px - x0)[..., None], (py - y0)[..., None]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bot = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return (top * (1 - fy) + bot * fy).astype(np.float32)


def _shape_deviation(scene: _Scene, rng: np.random.Generator, S: Size):
    """Geometry deviation. Objects: the outline bulges out or is dented in (the image is displaced
    along the outline's normal around a point of it). Textures: a local swirl of the pattern with a
    slight bump shading (a deformed, embossed spot)."""
    X, Y = _grid(S)
    h = _px(S) / 2.0
    ex, ey = _ext(S)
    if scene.is_object:
        edge = np.flatnonzero(((scene.fg > 0.2) & (scene.fg < 0.8)).ravel())
        k = int(edge[rng.integers(len(edge))]) if len(edge) else int(np.argmax(scene.fg))
        iy, ix = divmod(k, _hw(S)[1])
        cx, cy = float(X.flat[k]), float(Y.flat[k])
        patch = scene.fg[max(0, iy - 3) : iy + 4, max(0, ix - 3) : ix + 4]
        gy, gx = np.gradient(patch)
        n = -np.array([gx.mean(), gy.mean()], np.float32)  # fg decreases outwards
        n /= float(np.linalg.norm(n)) + 1e-6
        r = float(rng.uniform(0.11, 0.17)) * scene.defect_scale
        amp = float(rng.uniform(0.5, 0.8)) * r * (1 if rng.random() < 0.5 else -1)
        sl = _window(cx, cy, 2.2 * r, 2.2 * r, S)
        dx, dy = X[sl] - cx, Y[sl] - cy
        w = np.exp(-(dx * dx + dy * dy) * (1 / (r * r)))
        sx, sy = X[sl] - amp * w * n[0], Y[sl] - amp * w * n[1]
        new = _bilinear(scene.base, (sx + ex) * h - 0.5, (sy + ey) * h - 0.5)
        return sl, w > 0.02, new
    cx, cy = _pick_centre(scene, rng, S)
    r = float(rng.uniform(0.08, 0.15)) * scene.defect_scale
    sl = _window(cx, cy, 1.6 * r, 1.6 * r, S)
    dx, dy = X[sl] - cx, Y[sl] - cy
    w = np.exp(-(dx * dx + dy * dy) * (1 / (r * r)))
    ang = float(rng.uniform(1.2, 2.2)) * (1 if rng.random() < 0.5 else -1) * w
    c, s = np.cos(ang), np.sin(ang)
    sx, sy = cx + c * dx - s * dy, cy + s * dx + c * dy
    new = _bilinear(scene.base, (sx + ex) * h - 0.5, (sy + ey) * h - 0.5)
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


def _image_size(image_size: int | Sequence[int]) -> Size:
    """``S`` (square) or ``(height, width)``, each at least 16 pixels; a square given as a pair becomes ``S``
    (the original generator's path, same bytes)."""
    if isinstance(image_size, bool):
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    if isinstance(image_size, (int, np.integer)):
        S = int(image_size)
        if S < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        return S
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}") from None
    if min(h, w) < 16:
        raise ValueError(f"image_size must be >= 16 on both sides, got {image_size!r}")
    return h if h == w else (h, w)


def _defect_scale(S: Size, max_defect_fraction: float | None) -> tuple[float, float]:
    """(size factor of the defects in units, area ratio of the image to its short side's square).

    Coordinates are in units of half the short side, so a defect has the same size in pixels in a wide image
    as in the square of its short side, and covers ``ratio = short**2 / (H * W)`` times the fraction of the
    image. ``max_defect_fraction`` shrinks every defect's size by ``k`` (area by ``k**2``) so that the largest
    allowed defect (:data:`MAX_AREA` of the square) covers at most that fraction of the image."""
    h, w = _hw(S)
    ratio = _px(S) ** 2 / float(h * w)
    if max_defect_fraction is None:
        return 1.0, ratio
    return min(1.0, float(np.sqrt(max_defect_fraction / (MAX_AREA * ratio)))), ratio


def defect_area_bounds(
    defect: str, image_size: int | Sequence[int], max_defect_fraction: float | None = None
) -> tuple[float, float]:
    """The (min, max) fraction of the image a ``defect`` mask of :func:`render_sample` covers: by default
    ``DEFECT_MIN_AREA[defect]``-:data:`MAX_AREA` of a square image (of the short side's square for
    ``(height, width)``); with ``max_defect_fraction`` both bounds shrink by the same factor, the upper one to
    ``max_defect_fraction`` (or less)."""
    S = _image_size(image_size)
    k, ratio = _defect_scale(S, max_defect_fraction)
    lo, hi = DEFECT_MIN_AREA[defect] * (k * k * ratio), MAX_AREA * (k * k * ratio)
    return lo, hi if max_defect_fraction is None else min(hi, float(max_defect_fraction))


def _apply_defect(
    scene: _Scene,
    defect: str,
    rng: np.random.Generator,
    S: Size,
    noise: np.ndarray | None = None,
    max_defect_fraction: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``defect`` on the scene: (defective noise-free image, mask). The change of a pixel is measured
    after adding ``noise`` (H, W, 1) and clipping to [0, 1], as the written image will have it. The mask's
    area lies within :func:`defect_area_bounds`."""
    fn, restrict = _DEFECTS[defect]
    restrict = restrict(scene) if callable(restrict) else restrict
    lo, hi = defect_area_bounds(defect, S, max_defect_fraction)
    H, W = _hw(S)
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
        frac = R.sum() / float(H * W)
        if lo <= frac <= hi:
            out = scene.base.copy()
            out[sl][R] = new[R]
            mask = np.zeros((H, W), bool)
            mask[sl] = R
            return out, mask
    raise RuntimeError(f"could not place a {defect!r} defect of {lo:.2%}-{hi:.2%} area")


def _quantise(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_sample(
    spec: CategorySpec,
    image_size: int | Sequence[int],
    rng: np.random.Generator | int,
    defect: str | None = None,
    max_defect_fraction: float | None = None,
):
    """Render one image of ``spec``.

    ``image_size``: ``S`` (a square) or ``(height, width)``: a non-square image shows more of a texture along
    its long side, objects keep their size in pixels (that of the short side's square) on a wider background.
    ``max_defect_fraction`` (e.g. 0.005): defects are shrunk so that none covers more than this fraction of the
    image (:func:`defect_area_bounds`); ``None`` keeps their default sizes.

    Returns ``(image uint8 (H,W,3), mask bool (H,W), clean uint8 (H,W,3))``: ``clean`` is the same
    image without the defect (identical to ``image`` when ``defect`` is None, mask all False).
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    S = _image_size(image_size)
    H, W = _hw(S)
    if max_defect_fraction is not None and not (0.0 < max_defect_fraction < 1.0 and max_defect_fraction * H * W >= 16):
        raise ValueError(
            f"max_defect_fraction must be in (0, 1) and leave a defect at least 16 pixels of the {H}x{W} image, "
            f"got {max_defect_fraction!r}"
        )
    scene = _RENDERERS[spec.family](spec.params, rng, S)
    scene.defect_scale = _defect_scale(S, max_defect_fraction)[0]
    noise = (_smooth(rng, S, 0) * np.float32(spec.params["sigma"]))[..., None]
    clean = _quantise(scene.base + noise)
    if defect is None:
        return clean, np.zeros((H, W), bool), clean
    if defect not in _DEFECTS:
        raise ValueError(f"unknown defect type {defect!r}; expected one of {DEFECT_TYPES}")
    img, R = _apply_defect(scene, defect, rng, S, noise, max_defect_fraction)
    return _quantise(img + noise), R, clean
