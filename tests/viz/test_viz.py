import time

import numpy as np
from PIL import Image

from dpdiff.viz import PANEL_GAP, TITLE_HEIGHT, mask_boundary, plot_curves, save_overlay

H, W = 64, 80


def _inputs():
    image = np.full((H, W, 3), 128, np.uint8)
    amap = np.zeros((H, W), np.float32)
    amap[20:40, 30:50] = 1.0
    mask = np.zeros((H, W), bool)
    mask[20:40, 30:50] = True
    return image, amap, mask


def _panel(arr, i, top=0):
    x = i * (W + PANEL_GAP)
    return arr[top : top + H, x : x + W]


def test_overlay_three_panels(tmp_path):
    image, amap, mask = _inputs()
    out = save_overlay(image, amap, tmp_path / "sub" / "o.png", mask=mask, vmin=0.0, vmax=1.0)
    assert out.exists() and out.suffix == ".png"
    arr = np.asarray(Image.open(out).convert("RGB"))
    assert arr.shape == (H, 3 * W + 2 * PANEL_GAP, 3)
    # panel 1 is the input image
    assert np.array_equal(_panel(arr, 0), image)
    # gaps are white
    assert (arr[:, W : W + PANEL_GAP] == 255).all()
    # panel 2: red contour on the mask boundary, interior untouched
    gt = _panel(arr, 1)
    assert tuple(gt[20, 35]) == (255, 0, 0)
    assert tuple(gt[30, 40]) == (128, 128, 128)
    assert tuple(gt[5, 5]) == (128, 128, 128)
    # panel 3: inside the high-score region reddish, outside bluish
    heat = _panel(arr, 2).astype(int)
    r, g, b = heat[30, 40]
    assert r > g + 30 and r > b + 30
    r, g, b = heat[5, 5]
    assert b > r + 30
    assert tuple(heat[20, 35]) == (255, 0, 0)  # contour on the heat panel too


def test_overlay_two_panels_title_and_fixed_scale(tmp_path):
    image, amap, _ = _inputs()
    out = save_overlay(image, amap * 0.5, tmp_path / "o.png", vmin=0.0, vmax=1.0, title="bottle 001")
    arr = np.asarray(Image.open(out).convert("RGB"))
    assert arr.shape == (H + TITLE_HEIGHT, 2 * W + PANEL_GAP, 3)
    assert (arr[:TITLE_HEIGHT] < 128).any()  # some title text drawn
    # with vmax=1 a score of 0.5 is mid-scale (greenish), not the red of the maximum
    r, g, b = _panel(arr, 1, TITLE_HEIGHT)[30, 40].astype(int)
    assert g > r
    # default scale = map's own range -> 0.5 becomes the maximum (red)
    arr2 = np.asarray(Image.open(save_overlay(image, amap * 0.5, tmp_path / "p.png")).convert("RGB"))
    r, g, b = _panel(arr2, 1)[30, 40].astype(int)
    assert r > g + 30


def test_overlay_is_fast_and_resizes_map(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    amap = rng.random((64, 64)).astype(np.float32)  # lower resolution: resized to the image
    mask = np.zeros((256, 256), np.uint8)
    mask[100:150, 80:120] = 255
    t = time.perf_counter()
    for i in range(5):
        save_overlay(image, amap, tmp_path / f"{i}.png", mask=mask, vmin=0, vmax=1)
    per_image = (time.perf_counter() - t) / 5
    assert Image.open(tmp_path / "0.png").size == (3 * 256 + 2 * PANEL_GAP, 256)
    assert per_image < 0.5  # ~0.02 s normally; generous for shared CI


def test_mask_boundary():
    m = np.zeros((10, 10), bool)
    m[2:7, 2:7] = True
    edge = mask_boundary(m, thickness=1)
    assert edge.sum() == 16 and not edge[4, 4] and edge[2, 4]
    assert not mask_boundary(np.zeros((5, 5))).any()


def test_plot_curves(tmp_path):
    out = plot_curves(
        {"loss": [1.0, 0.5, 0.25, float("nan"), 0.1], "val": [0.9, 0.6]},
        tmp_path / "c.png",
        "epoch",
        "loss",
        "training",
    )
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (640, 400)
    assert not list(tmp_path.glob(".*tmp"))
