"""Tiles for images much larger than the model input (``data.tiling``): where to cut, how to stitch.

Pure numpy (no torch, no file I/O), so the PyTorch detector, the ONNX predictor and the training inputs share
one definition of the tiles:

* :func:`tile_boxes` (tiles of a fixed size in pixels) and :func:`grid_boxes` (a rows x cols grid) give the
  boxes ``(y0, x0, y1, x1)`` (half-open, pixels of the image the tiles are cut from: the ROI-cropped original).
  Boxes cover every pixel; the last row and column are flush with the image's edge (shifted inwards, so no
  tile needs padding and every tile has the same size).
* :class:`Stitcher` accumulates per-tile anomaly maps (any resolution) into one map at the image's size:
  each map is resized to its box (bilinear, :func:`resize_bilinear`), weighted by :func:`cosine_window` and
  added to float32 ``sum`` and ``weight`` arrays; the result is ``sum / weight``. Memory is two float32
  arrays of the image's size plus one batch of tiles, whatever the number of tiles (a 20-megapixel image:
  160 MB). :func:`stitch` is the one-call form.
* :class:`TilingSpec` parses and checks the config value ``data.tiling``.

Overlap averaging with a raised-cosine window weights a pixel by how far it lies from its tiles' borders, so
the seams between tiles (where a tile's context is cut off and its map is least reliable) fade out. The
window is strictly positive, so pixels on the image's border, covered by one tile only, keep a weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from dpdiff.config_checks import MAX_TILE_OVERLAP, check_tiling

__all__ = [
    "Box",
    "Stitcher",
    "TilingSpec",
    "cosine_window",
    "frame_score",
    "grid_boxes",
    "resize_bilinear",
    "stitch",
    "tile_boxes",
    "to_xyxy",
]

#: A tile: ``(y0, x0, y1, x1)``, half-open pixel bounds in the image the tiles are cut from.
Box = tuple[int, int, int, int]

#: Largest allowed overlap: beyond it the number of tiles explodes (0.9 already means 100x the tiles of 0).
MAX_OVERLAP = MAX_TILE_OVERLAP

#: Weight of a window's outermost pixels relative to its centre's floor: keeps every weight clearly above 0
#: (a pure Hann window at pixel centres is ~1e-5 at the edge of a 384 px tile, 1e-10 in its corners).
_WINDOW_FLOOR = 1e-3


def to_xyxy(box: Box) -> tuple[int, int, int, int]:
    """A tile box ``(y0, x0, y1, x1)`` (numpy slicing order) as ``(x0, y0, x1, y1)``, PIL's ``crop`` order and
    that of :meth:`dpdiff.data.geometry.ImageGeometry.model_input`'s ``crop``."""
    y0, x0, y1, x1 = box
    return int(x0), int(y0), int(x1), int(y1)


def _pair(value: Any, what: str) -> tuple[int, int]:
    """``value`` as two positive ints (one int means both), else ``ValueError`` naming ``what``."""
    seq = [value, value] if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    if not isinstance(seq, (Sequence, np.ndarray)) or isinstance(seq, str) or len(seq) != 2:
        raise ValueError(f"{what} must be two positive integers [h, w], got {value!r}")
    out = []
    for v in seq:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
            raise ValueError(f"{what} must be two positive integers [h, w], got {value!r}")
        out.append(int(v))
    return out[0], out[1]


def _check_overlap(overlap: Any, what: str = "overlap") -> float:
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float, np.floating, np.integer)):
        raise ValueError(f"{what} must be a number in [0, {MAX_OVERLAP}], got {overlap!r}")
    o = float(overlap)
    if not 0.0 <= o <= MAX_OVERLAP:
        raise ValueError(f"{what} must be in [0, {MAX_OVERLAP}] (a fraction of the tile), got {overlap!r}")
    return o


def _axis_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Starts of the tiles along one axis: every ``stride`` pixels, the last one flush with the end."""
    if tile >= length:
        return [0]
    stride = max(1, int(round(tile * (1.0 - overlap))))
    starts = list(range(0, length - tile, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tile_boxes(image_hw: Sequence[int], tile_hw: Sequence[int] | int, overlap: float = 0.25) -> list[Box]:
    """Boxes of ``tile_hw``-pixel tiles covering an ``image_hw`` image, row-major.

    Neighbouring tiles start ``round(tile * (1 - overlap))`` pixels apart; the last row/column is moved
    inwards to end exactly at the image's edge (it overlaps its neighbour more), so every box has the size
    ``tile_hw`` and nothing is padded. Where the image is smaller than a tile along an axis, there is one tile
    along that axis and it spans the whole image there (the box is then smaller than ``tile_hw``: an image
    smaller than a tile is one box, the whole image; the model resizes it like any input).
    """
    H, W = _pair(tuple(image_hw), "image_hw")
    th, tw = _pair(tile_hw, "tile_hw")
    o = _check_overlap(overlap)
    ys, xs = _axis_starts(H, th, o), _axis_starts(W, tw, o)
    return [(y, x, y + min(th, H), x + min(tw, W)) for y in ys for x in xs]


def _grid_axis(length: int, n: int, overlap: float) -> list[tuple[int, int]]:
    if n > length:
        raise ValueError(f"a grid of {n} tiles does not fit {length} pixels")
    if n == 1:
        return [(0, length)]
    # n tiles of size t overlapping by overlap * t cover t + (n - 1) * t * (1 - overlap) = length
    t = min(length, int(np.ceil(length / (1.0 + (n - 1) * (1.0 - overlap)))))
    starts = [int(round(i * (length - t) / (n - 1))) for i in range(n)]  # first at 0, last flush with the end
    return [(s, s + t) for s in starts]


def grid_boxes(image_hw: Sequence[int], rows: int, cols: int, overlap: float = 0.25) -> list[Box]:
    """Boxes of a ``rows`` x ``cols`` grid of equal tiles covering an ``image_hw`` image, row-major.

    The tile size along an axis is the smallest that makes ``n`` tiles overlapping by ``overlap`` of a tile
    cover the image; the tiles are spread evenly, the first at 0 and the last flush with the edge.
    """
    H, W = _pair(tuple(image_hw), "image_hw")
    r, c = _pair((rows, cols), "grid [rows, cols]")
    o = _check_overlap(overlap)
    return [(y0, x0, y1, x1) for y0, y1 in _grid_axis(H, r, o) for x0, x1 in _grid_axis(W, c, o)]


@lru_cache(maxsize=16)
def _window_1d(n: int) -> np.ndarray:
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * (np.arange(n, dtype=np.float64) + 0.5) / n)  # > 0 at pixel centres
    w = (_WINDOW_FLOOR + (1.0 - _WINDOW_FLOOR) * hann).astype(np.float32)
    w.setflags(write=False)
    return w


@lru_cache(maxsize=8)
def _window_2d(h: int, w: int) -> np.ndarray:
    win = np.outer(_window_1d(h), _window_1d(w)).astype(np.float32)
    win.setflags(write=False)
    return win


def cosine_window(h: int, w: int) -> np.ndarray:
    """A separable raised-cosine (Hann at pixel centres, lifted by a small floor) weight, float32 ``(h, w)``.

    1 at the centre, falling smoothly towards the borders and strictly positive everywhere (at least about
    ``1e-6`` in the corners), so a pixel covered by a single tile still gets a usable weight. Read-only.
    """
    h, w = _pair((h, w), "window size")
    return _window_2d(h, w)


def _interp_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and weights of i1 for linear resampling with half-pixel centres."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear(m: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """A 2-D map resized to ``out_hw`` by bilinear interpolation with half-pixel centres (as
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``, no antialiasing), float32.

    Separable (rows, then columns), so the temporary memory is one map of the output's height by the input's
    width. A map already at ``out_hw`` is returned as a float32 copy.
    """
    a = np.asarray(m, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"resize_bilinear expects a 2-D map, got shape {a.shape}")
    oh, ow = _pair(tuple(out_hw), "out_hw")
    if a.shape == (oh, ow):
        return a.copy()
    y0, y1, fy = _interp_axis(a.shape[0], oh)
    rows = a[y0] * (1.0 - fy)[:, None] + a[y1] * fy[:, None]
    x0, x1, fx = _interp_axis(a.shape[1], ow)
    return (rows[:, x0] * (1.0 - fx) + rows[:, x1] * fx).astype(np.float32, copy=False)


class Stitcher:
    """Accumulates tile maps into one map of ``out_hw`` (module docstring): :meth:`add` batches of tiles,
    then :meth:`result` once.

    Memory: two float32 arrays of ``out_hw`` (``sum`` and ``weight``) plus the tiles of one :meth:`add`
    call; :meth:`result` divides in place (no third image-sized array).
    """

    def __init__(self, out_hw: Sequence[int]) -> None:
        self.out_hw = _pair(tuple(out_hw), "out_hw")
        self._sum: np.ndarray | None = np.zeros(self.out_hw, np.float32)
        self._weight = np.zeros(self.out_hw, np.float32)

    def add(self, tile_maps: np.ndarray | Sequence[np.ndarray], boxes: Sequence[Box]) -> None:
        """Add the maps of a batch of tiles: ``tile_maps`` ``(N, h, w)`` (or a list of 2-D maps, any sizes),
        one per box of ``boxes``, each resized to its box and weighted by :func:`cosine_window`."""
        if self._sum is None:
            raise RuntimeError("Stitcher.add after result(): make a new Stitcher per image")
        maps = list(tile_maps) if not isinstance(tile_maps, np.ndarray) or tile_maps.ndim == 3 else [tile_maps]
        if len(maps) != len(boxes):
            raise ValueError(f"{len(maps)} tile maps for {len(boxes)} boxes")
        H, W = self.out_hw
        for m, box in zip(maps, boxes, strict=True):
            y0, x0, y1, x1 = (int(v) for v in box)
            if not (0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W):
                raise ValueError(f"box {tuple(box)} is not inside the {H}x{W} image")
            win = cosine_window(y1 - y0, x1 - x0)
            self._sum[y0:y1, x0:x1] += resize_bilinear(m, (y1 - y0, x1 - x0)) * win
            self._weight[y0:y1, x0:x1] += win

    def result(self) -> np.ndarray:
        """The stitched map ``(H, W)`` float32 (``sum / weight``). Every pixel must have been covered by a tile."""
        if self._sum is None:
            raise RuntimeError("Stitcher.result() was already called")
        if not self._weight.min() > 0:  # (min, not a comparison: no image-sized temporary)
            raise ValueError("the tiles added do not cover every pixel of the image")
        out, self._sum = self._sum, None
        np.divide(out, self._weight, out=out)
        return out


def stitch(tile_maps: np.ndarray | Sequence[np.ndarray], boxes: Sequence[Box], out_hw: Sequence[int]) -> np.ndarray:
    """One map of ``out_hw`` from the maps of the tiles ``boxes`` (:class:`Stitcher` in one call). Where one
    box covers the whole image the result is that tile's map resized to the image (:func:`resize_bilinear`)."""
    st = Stitcher(out_hw)
    st.add(tile_maps, boxes)
    return st.result()


@dataclass(frozen=True)
class TilingSpec:
    """The value of ``data.tiling``: tiles of ``tile`` = ``(h, w)`` pixels, or a ``grid`` = ``(rows, cols)``,
    neighbours overlapping by ``overlap`` (a fraction of a tile). Exactly one of ``tile``/``grid`` is set.

    Config forms (:meth:`parse`): ``null`` (no tiling), ``{tile: [h, w], overlap: 0.25}`` (``tile: 384``
    means a square tile) or ``{grid: [rows, cols], overlap: 0.25}``; ``overlap`` defaults to 0.25. Tile sizes
    are pixels of the (ROI-cropped) original image.
    """

    tile: tuple[int, int] | None = None
    grid: tuple[int, int] | None = None
    overlap: float = 0.25

    def __post_init__(self) -> None:
        if (self.tile is None) == (self.grid is None):
            raise ValueError("TilingSpec needs exactly one of tile or grid")

    @classmethod
    def parse(cls, value: Any) -> TilingSpec | None:
        """``value`` (a config value) as a spec, ``None`` for ``null``; a ConfigError (a ValueError) naming
        ``data.tiling`` and the fault, by the config's own rule (:func:`dpdiff.config_checks.check_tiling`)."""
        if value is None or isinstance(value, TilingSpec):
            return value
        check_tiling(value)
        overlap = float(value.get("overlap", 0.25))
        if value.get("tile") is not None:
            return cls(tile=_pair(value["tile"], "data.tiling.tile"), overlap=overlap)
        return cls(grid=_pair(value["grid"], "data.tiling.grid"), overlap=overlap)

    def boxes(self, image_hw: Sequence[int]) -> list[Box]:
        """The tiles of an ``image_hw`` image (:func:`tile_boxes` or :func:`grid_boxes`)."""
        if self.tile is not None:
            return tile_boxes(image_hw, self.tile, self.overlap)
        assert self.grid is not None
        return grid_boxes(image_hw, self.grid[0], self.grid[1], self.overlap)

    def to_config(self) -> dict[str, Any]:
        """The config value (``parse(spec.to_config()) == spec``)."""
        key = "tile" if self.tile is not None else "grid"
        return {key: list(self.tile if self.tile is not None else self.grid or ()), "overlap": self.overlap}


def _box_sums(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Sums of every ``k`` consecutive elements along ``axis`` (length n -> n - k + 1), float64 prefix sums."""
    c = np.cumsum(a, axis=axis, dtype=np.float64)
    n = a.shape[axis]
    first = np.take(c, [k - 1], axis=axis)
    if k >= n:
        return first
    rest = np.take(c, np.arange(k, n), axis=axis) - np.take(c, np.arange(0, n - k), axis=axis)
    return np.concatenate([first, rest], axis=axis)


def frame_score(frame: np.ndarray, rule: str = "pooled_max", pool_size: int = 16, top_percent: float = 1.0) -> float:
    """The image score of a stitched map (``inference.image_score``), in numpy for every runtime: ``pooled_max``
    = the largest mean over a ``pool_size`` x ``pool_size`` window, stride 1, no padding (paper Eq. 24; the
    kernel clamped to the map's side, as :func:`dpdiff.model.postprocess.image_scores`), ``top_percent_mean`` =
    the mean of the highest ``top_percent`` % pixels (at least one). Float64 sums, so it agrees with the torch
    rule on the same map to float32 rounding."""
    m = np.asarray(frame, dtype=np.float32)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"frame_score expects a non-empty 2-D map, got shape {m.shape}")
    if rule == "top_percent_mean":
        if not 0.0 < float(top_percent) <= 100.0:
            raise ValueError(f"top_percent must be in (0, 100], got {top_percent}")
        flat = m.reshape(-1)
        k = max(1, int(round(flat.size * float(top_percent) / 100.0)))
        return float(np.partition(flat, flat.size - k)[flat.size - k :].astype(np.float64).mean())
    if rule != "pooled_max":
        raise ValueError(f"image score rule must be pooled_max or top_percent_mean, got {rule!r}")
    kh, kw = min(int(pool_size), m.shape[0]), min(int(pool_size), m.shape[1])
    if kh <= 1 and kw <= 1:
        return float(m.max())
    if not np.isfinite(m).all():
        return float("nan") if np.isnan(m).any() else float(m.max())
    sums = _box_sums(_box_sums(m, kw, 1), kh, 0)
    return float(sums.max() / (kh * kw))
