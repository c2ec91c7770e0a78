"""Shared helpers of the synthetic generator: pixel grids, the smooth-noise banks, colours and signed distances."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

# base images are kept inside this range so that noise rarely clips a defect away
_LO, _HI = 0.05, 0.95


#: An image size: ``S`` (a square, the original generator) or ``(height, width)``.
Size = int | tuple[int, int]


def _hw(S: Size) -> tuple[int, int]:
    """(height, width) in pixels."""
    return (S, S) if isinstance(S, int) else (int(S[0]), int(S[1]))


def _px(S: Size) -> int:
    """Pixels along the short side: the length of 2 units (coordinates are in units of half the short side,
    so shapes, defects and noise keep their size in pixels whatever the aspect ratio)."""
    return S if isinstance(S, int) else min(int(S[0]), int(S[1]))


def _ext(S: Size) -> tuple[float, float]:
    """Half extents (x, y) of the image in units: (1, 1) for a square, (W/H, 1) for a wide image."""
    if isinstance(S, int):
        return 1.0, 1.0
    h, w = _hw(S)
    n = _px(S)
    return w / n, h / n


@lru_cache(maxsize=8)
def _grid(S: Size) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, x to the right, y down, float32 (H, W): in [-1, 1] for a square; in units of
    half the short side, centred, for ``(height, width)`` (e.g. x in [-W/H, W/H] and y in [-1, 1] if W > H)."""
    if isinstance(S, int):
        c = ((np.arange(S, dtype=np.float32) + 0.5) / S) * 2.0 - 1.0
        X, Y = np.meshgrid(c, c)
    else:
        (h, w), n = _hw(S), _px(S)
        cx = ((np.arange(w, dtype=np.float32) + 0.5) / n) * 2.0 - np.float32(w / n)
        cy = ((np.arange(h, dtype=np.float32) + 0.5) / n) * 2.0 - np.float32(h / n)
        X, Y = np.meshgrid(cx, cy)
    X.setflags(write=False)
    Y.setflags(write=False)
    return X, Y


@lru_cache(maxsize=128)
def _bank(S: Size, cells: int, cells_x: int) -> np.ndarray:
    """A (2H, 2W) smooth-noise field of unit std (fixed seed) from which images take crops.

    ``cells == 0`` means white Gaussian noise; otherwise ``cells`` (``cells_x``) correlation cells span the
    short side of the image vertically (horizontally), so a non-square image has proportionally more along its
    long side. Cropping a shared bank instead of drawing and upsampling fresh noise for every image is what
    makes generation fast; the per-image random offset and flips keep images distinct.
    """
    if isinstance(S, int):
        rng = np.random.default_rng([7919, S, cells, cells_x])
        shape, grid = (2 * S, 2 * S), (2 * max(2, cells), 2 * max(2, cells_x))
    else:
        (h, w), n = _hw(S), _px(S)
        rng = np.random.default_rng([7919, h, w, cells, cells_x])
        shape = (2 * h, 2 * w)
        grid = (max(4, round(2 * max(2, cells) * h / n)), max(4, round(2 * max(2, cells_x) * w / n)))
    if cells == 0:
        a = rng.standard_normal(shape, dtype=np.float32)
    else:
        g = rng.standard_normal(grid, dtype=np.float32)
        a = np.asarray(Image.fromarray(g).resize(shape[::-1], Image.Resampling.BICUBIC), dtype=np.float32)
        a = (a - a.mean()) / (a.std() + 1e-6)
    a.setflags(write=False)
    return a


def _smooth(rng: np.random.Generator, S: Size, cells: int, cells_x: int | None = None) -> np.ndarray:
    """Smooth noise (H, W), about unit std, with ``cells`` correlation cells across the (short side of the)
    image (``cells_x`` horizontally if given; ``cells=0``: white noise). A read-only view."""
    bank = _bank(S, int(cells), int(cells if cells_x is None else cells_x))
    h, w = _hw(S)
    if isinstance(S, int):
        oy, ox, fy, fx = rng.integers(0, S + 1), rng.integers(0, S + 1), rng.integers(2), rng.integers(2)
    else:
        oy, ox, fy, fx = rng.integers(0, h + 1), rng.integers(0, w + 1), rng.integers(2), rng.integers(2)
    a = bank[oy : oy + h, ox : ox + w]
    return a[:: -1 if fy else 1, :: -1 if fx else 1]


def _col(*rgb: float) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a + (b - a) * t[..., None]


def _coverage(sdf: np.ndarray, S: Size) -> np.ndarray:
    """Antialiased coverage from a signed distance in units (one pixel = 2 / the short side)."""
    return np.clip(0.5 - sdf * (_px(S) / 2.0), 0.0, 1.0)


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
