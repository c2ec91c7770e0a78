"""Tiles and stitching (dpdiff.data.tiling): coverage, overlap, flush edges, the single-tile identity, bounded
memory for a 20-megapixel image, and the ``data.tiling`` parser."""

from __future__ import annotations

import logging
import time
import tracemalloc

import numpy as np
import pytest
import torch

from dpdiff.data.tiling import (
    Stitcher,
    TilingSpec,
    cosine_window,
    grid_boxes,
    resize_bilinear,
    stitch,
    tile_boxes,
    to_xyxy,
)

log = logging.getLogger(__name__)


def _coverage(boxes, hw) -> np.ndarray:
    n = np.zeros(hw, np.int32)
    for y0, x0, y1, x1 in boxes:
        n[y0:y1, x0:x1] += 1
    return n


@pytest.mark.parametrize(
    ("hw", "tile", "overlap"),
    [((384, 1024), (384, 384), 0.25), ((460, 1130), (192, 192), 0.25), ((1000, 999), (256, 320), 0.0),
     ((3648, 5472), (384, 384), 0.5), ((100, 700), (100, 128), 0.1)],
)  # fmt: skip
def test_tile_boxes_cover_with_flush_edges_and_overlap(hw, tile, overlap):
    boxes = tile_boxes(hw, tile, overlap)
    H, W = hw
    assert all(b[2] - b[0] == tile[0] and b[3] - b[1] == tile[1] for b in boxes)  # no padding, no shrinking
    assert all(0 <= b[0] and 0 <= b[1] and b[2] <= H and b[3] <= W for b in boxes)
    assert _coverage(boxes, hw).min() >= 1  # every pixel
    ys, xs = sorted({b[0] for b in boxes}), sorted({b[1] for b in boxes})
    assert len(boxes) == len(ys) * len(xs)  # a full grid
    assert ys[0] == 0 and xs[0] == 0 and ys[-1] + tile[0] == H and xs[-1] + tile[1] == W  # flush with the edges
    for starts, t in ((ys, tile[0]), (xs, tile[1])):
        steps = np.diff(starts)
        if len(steps):
            stride = round(t * (1 - overlap))
            assert (steps[:-1] == stride).all() and 1 <= steps[-1] <= stride  # the last one overlaps more
            assert t - steps.max() >= round(t * overlap) - 1  # neighbours overlap by at least the fraction


def test_to_xyxy_matches_numpy_slicing_and_pil_crop():
    from PIL import Image

    a = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    box = tile_boxes((20, 30), (8, 12), 0.25)[4]
    y0, x0, y1, x1 = box
    crop = np.asarray(Image.fromarray(a).crop(to_xyxy(box)))
    np.testing.assert_array_equal(crop, a[y0:y1, x0:x1])


def test_tile_boxes_image_smaller_than_tile_is_one_box():
    assert tile_boxes((100, 200), (384, 384)) == [(0, 0, 100, 200)]
    boxes = tile_boxes((100, 1000), (384, 384), 0.25)  # smaller along y only: one row spanning the height
    assert {(b[0], b[2]) for b in boxes} == {(0, 100)} and _coverage(boxes, (100, 1000)).min() == 1
    assert tile_boxes((64, 64), 64, 0.5) == [(0, 0, 64, 64)]


@pytest.mark.parametrize(("rows", "cols", "overlap"), [(1, 1, 0.25), (2, 4, 0.25), (3, 2, 0.0), (2, 3, 0.5)])
def test_grid_boxes(rows, cols, overlap):
    hw = (384, 1025)
    boxes = grid_boxes(hw, rows, cols, overlap)
    assert len(boxes) == rows * cols
    assert _coverage(boxes, hw).min() >= 1
    sizes = {(b[2] - b[0], b[3] - b[1]) for b in boxes}
    assert len(sizes) == 1  # equal tiles
    (th, tw), = sizes  # fmt: skip
    assert boxes[0][:2] == (0, 0) and boxes[-1][2:] == hw
    if cols > 1:  # neighbours overlap by about the fraction asked
        xs = sorted({b[1] for b in boxes})
        assert abs((tw - (xs[1] - xs[0])) / tw - overlap) < 0.02
    if overlap == 0.0:
        assert _coverage(boxes, hw).max() <= 2 and th * rows >= hw[0]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        tile_boxes((10, 10), 4, 0.95)
    with pytest.raises(ValueError, match="overlap"):
        tile_boxes((10, 10), 4, -0.1)
    with pytest.raises(ValueError, match="tile_hw"):
        tile_boxes((10, 10), (0, 4))
    with pytest.raises(ValueError, match="does not fit"):
        grid_boxes((3, 10), 4, 1)


def test_cosine_window_positive_peaked_separable():
    w = cosine_window(48, 80)
    assert w.shape == (48, 80) and w.dtype == np.float32
    assert w.min() > 0 and w.max() <= 1.0
    assert w[24, 40] > 0.99 and w[0, 0] < 1e-4  # centre ~1, corners small but not zero
    np.testing.assert_allclose(w, np.outer(w[:, 40], w[24, :]) / w[24, 40], rtol=1e-5)
    np.testing.assert_allclose(w, w[::-1, ::-1], rtol=1e-6)  # symmetric
    assert not w.flags.writeable
    assert cosine_window(1, 1)[0, 0] > 0


@pytest.mark.parametrize(("src", "dst"), [((24, 24), (384, 384)), ((7, 19), (100, 33)), ((50, 40), (12, 64))])
def test_resize_bilinear_matches_torch_interpolate(src, dst):
    m = np.random.default_rng(0).standard_normal(src).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(m)[None, None], size=dst, mode="bilinear")
    np.testing.assert_allclose(resize_bilinear(m, dst), ref[0, 0].numpy(), atol=1e-5)


def test_single_tile_covering_the_image_is_that_tile_resized():
    m = np.random.default_rng(1).random((24, 64), dtype=np.float32)
    boxes = tile_boxes((384, 1024), (512, 2048))  # one tile: the whole image
    assert boxes == [(0, 0, 384, 1024)]
    out = stitch(m[None], boxes, (384, 1024))
    np.testing.assert_allclose(out, resize_bilinear(m, (384, 1024)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("spec", [{"tile": [96, 160], "overlap": 0.25}, {"grid": [2, 4], "overlap": 0.5}])
def test_constant_and_smooth_maps_stitch_without_seams(spec):
    hw = (300, 700)
    boxes = TilingSpec.parse(spec).boxes(hw)
    out = stitch(np.full((len(boxes), 8, 8), 3.25, np.float32), boxes, hw)
    np.testing.assert_allclose(out, 3.25, rtol=1e-6)  # constants stay the constant, borders included
    # a map that is a function of the image's own coordinates, tiled at full resolution, is given back exactly
    yy, xx = np.mgrid[0 : hw[0], 0 : hw[1]].astype(np.float32)
    field = np.sin(yy / 40) + np.cos(xx / 70)
    tiles = [field[y0:y1, x0:x1] for y0, x0, y1, x1 in boxes]
    np.testing.assert_allclose(stitch(tiles, boxes, hw), field, atol=1e-5)


def test_overlap_is_weighted_towards_the_tile_centres():
    hw, boxes = (64, 112), tile_boxes((64, 112), (64, 64), 0.25)
    assert [b[1] for b in boxes] == [0, 48]
    out = stitch(np.stack([np.zeros((64, 64)), np.ones((64, 64))]).astype(np.float32), boxes, hw)
    assert (out[:, :48] == 0).all() and (out[:, 64:] == 1).all()  # covered by one tile only
    mid = out[32, 48:64]
    assert (np.diff(mid) > 0).all() and mid[0] < 0.1 and mid[-1] > 0.9  # a smooth cross-fade, not a seam


def test_stitcher_batches_equal_one_call_and_checks_use():
    hw = (200, 333)
    boxes = tile_boxes(hw, (64, 96), 0.3)
    rng = np.random.default_rng(2)
    maps = rng.random((len(boxes), 16, 24), dtype=np.float32)
    st = Stitcher(hw)
    for i in range(0, len(boxes), 5):
        st.add(maps[i : i + 5], boxes[i : i + 5])
    np.testing.assert_array_equal(st.result(), stitch(maps, boxes, hw))
    with pytest.raises(RuntimeError):
        st.add(maps[:1], boxes[:1])
    partial = Stitcher(hw)
    partial.add(maps[:2], boxes[:2])
    with pytest.raises(ValueError, match="cover"):
        partial.result()
    with pytest.raises(ValueError, match="inside"):
        Stitcher((10, 10)).add(maps[:1], [(0, 0, 11, 10)])
    with pytest.raises(ValueError, match="boxes"):
        Stitcher(hw).add(maps[:2], boxes[:1])


def test_20_megapixel_stitch_memory_is_bounded():
    """5472 x 3648 (20 MP) with 384 px tiles: the stitcher's peak is its two float32 image arrays plus a batch."""
    hw = (3648, 5472)
    boxes = tile_boxes(hw, (384, 384), 0.25)
    rng = np.random.default_rng(3)
    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        st = Stitcher(hw)
        for i in range(0, len(boxes), 32):  # the detector's batches of tiles
            batch = boxes[i : i + 32]
            st.add(rng.random((len(batch), 24, 24), dtype=np.float32) + 1.0, batch)
        out = st.result()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    seconds = time.perf_counter() - t0
    image_f32 = hw[0] * hw[1] * 4
    log.warning("20 MP stitch: %d tiles, peak %.0f MB (%.2f x one float32 image), %.1f s",
                len(boxes), peak / 1e6, peak / image_f32, seconds)  # fmt: skip
    print(f"20 MP stitch: {len(boxes)} tiles, peak {peak / 1e6:.0f} MB = {peak / image_f32:.2f} float32 images")
    assert out.shape == hw and out.dtype == np.float32
    assert 1.0 <= out.min() and out.max() <= 2.0  # a weighted average of the tiles' values
    assert peak < 2.2 * image_f32  # sum + weight (2.0) plus one batch of tiles; no third image-sized array


def test_tiling_spec_parse():
    assert TilingSpec.parse(None) is None
    s = TilingSpec.parse({"tile": [384, 512], "overlap": 0.25})
    assert s == TilingSpec(tile=(384, 512), overlap=0.25) and TilingSpec.parse(s.to_config()) == s
    assert TilingSpec.parse({"tile": 384}).tile == (384, 384) and TilingSpec.parse({"tile": 384}).overlap == 0.25
    g = TilingSpec.parse({"grid": [2, 4], "overlap": 0})
    assert g.grid == (2, 4) and len(g.boxes((384, 1024))) == 8
    for bad, what in [
        ("tiles", "must be null"),
        ({"tile": [384, 384], "grid": [2, 2]}, "exactly one"),
        ({"overlap": 0.25}, "exactly one"),
        ({"tile": [384, 0]}, "data.tiling.tile"),
        ({"tile": [384, 384, 3]}, "data.tiling.tile"),
        ({"tile": [384.5, 384]}, "data.tiling.tile"),
        ({"grid": [2, True]}, "data.tiling.grid"),
        ({"tile": 384, "overlap": 1.0}, "data.tiling.overlap"),
        ({"tile": 384, "overlap": "0.25"}, "data.tiling.overlap"),
        ({"tile": 384, "stride": 100}, "unknown keys"),
    ]:
        with pytest.raises(ValueError, match="data.tiling") as e:
            TilingSpec.parse(bad)
        assert what in str(e.value), (bad, str(e.value))
    with pytest.raises(ValueError, match="exactly one"):
        TilingSpec()
