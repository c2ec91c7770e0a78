"""Shared helpers of the synthetic generator: pixel grids, the smooth-noise banks, colours and signed distances."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

# base images are kept inside this range so that noise rarely clips a defect away
_LO, _HI = 0.05, 0.95


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
