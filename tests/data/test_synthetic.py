"""Procedural synthetic dataset: determinism, exact defect masks, nesting, distinct categories, MVTec layout.

Generation speed is measured by ``benchmarks/synthetic_speed.py``, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dpdiff.data.readers.mvtec import list_categories, load_dataset, load_split
from dpdiff.data.synthetic import (
    BACKGROUNDS,
    DEFECT_MIN_AREA,
    DEFECT_TYPES,
    FAMILIES,
    LAYOUTS,
    MATERIALS,
    MAX_AREA,
    MIN_CHANGE,
    PALETTES,
    VARIANTS,
    _common,
    category_specs,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    objects,
    read_marker,
    render_sample,
)

FACTORS = ("kind", "family", "variant", "material", "background", "layout", "palette", "scale")


def _per_category(train: int, test_good: int, test_defect: int) -> dict:
    """The image counts per category, as generate_synthetic_dataset / ensure_synthetic_dataset arguments."""
    return dict(train_per_category=train, test_good_per_category=test_good, test_defect_per_category=test_defect)


SMALL = dict(image_size=64, **_per_category(2, 1, len(DEFECT_TYPES)))
LEGACY = ["synth_stripes", "synth_nut", "synth_leather", "synth_chip", "synth_grid"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _covering_specs() -> list:
    """Few categories that together use every family, material, background, layout and palette."""
    specs, seen = [], set()
    for spec in category_specs(200):
        f = spec.factors
        new = {(k, f[k]) for k in ("family", "variant", "material", "background", "layout", "palette")} - seen
        if new:
            specs.append(spec)
            seen |= new
    return specs


def test_deterministic_bytes(tmp_path):
    a = generate_synthetic_dataset(tmp_path / "a", num_categories=8, seed=3, **SMALL)
    _common._bank.cache_clear()  # no hidden state: a fresh process must give the same bytes
    b = generate_synthetic_dataset(tmp_path / "b", num_categories=8, seed=3, **SMALL)
    assert a == b
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(fa) == 8 * (2 + 1 + 2 * len(DEFECT_TYPES)) + 1  # images + masks + marker
    assert fa == fb
    generate_synthetic_dataset(tmp_path / "c", num_categories=8, seed=4, **SMALL)
    fc = _files(tmp_path / "c")
    assert fc.keys() == fa.keys()
    images = [k for k in fa if k.endswith(".png") and "ground_truth" not in k]
    assert all(fa[k] != fc[k] for k in images)  # every image changes with the seed


def test_readable_by_mvtec_reader(tmp_path):
    names = generate_synthetic_dataset(tmp_path, num_categories=7, seed=0, **SMALL)
    assert names[:5] == LEGACY and len(set(names)) == 7
    assert list_categories(tmp_path) == sorted(names)
    assert len(load_dataset(tmp_path, None, "train")) == 7 * 2
    for cat in names:
        test = load_split(tmp_path, cat, "test")
        assert sorted({s.defect for s in test}) == sorted(set(DEFECT_TYPES) | {"good"})
        for s in test:
            img = np.asarray(Image.open(s.image_path))
            assert img.shape == (64, 64, 3) and img.dtype == np.uint8
            if s.label:
                m = np.asarray(Image.open(s.mask_path))
                assert m.shape == (64, 64) and set(np.unique(m)) == {0, 255}
                assert DEFECT_MIN_AREA[s.defect] <= (m > 0).mean() <= MAX_AREA


def test_categories_are_distinct_combinations_and_nested():
    specs = category_specs(200, seed=0)
    names = [s.name for s in specs]
    assert names[:5] == LEGACY and len(set(names)) == 200
    combos = [tuple(s.factors[k] for k in FACTORS) for s in specs]
    assert len(set(combos)) == 200
    # every family, material, background, layout and palette is used; all families within the first 40
    assert {s.family for s in specs[:40]} == set(FAMILIES)
    assert {s.factors["material"] for s in specs} - {None} == set(MATERIALS)
    assert {s.factors["background"] for s in specs} - {None} == set(BACKGROUNDS)
    assert {s.factors["layout"] for s in specs} - {None} == set(LAYOUTS)
    assert {s.factors["palette"] for s in specs} == set(PALETTES)
    variants = {(s.family, s.factors["variant"]) for s in specs if s.factors["kind"] == "texture"}
    assert variants <= {(f, v) for f, vs in VARIANTS.items() for v in vs} and len(variants) >= 30
    # most-different-first: any two categories differ in at least two factors
    enc = np.array([[hash(v) for v in c] for c in combos])
    ham = (enc[:, None, :] != enc[None, :, :]).sum(-1) + 99 * np.eye(200, dtype=int)
    assert ham.min() >= 2
    # prefix-stable (nested subsets) and seed-independent names; parameters follow the seed
    for n in (10, 20, 80):
        small = category_specs(n, seed=0)
        assert [s.name for s in small] == names[:n]
        assert all(
            json.dumps(a.params, default=str) == json.dumps(b.params, default=str)
            for a, b in zip(small, specs[:n], strict=True)
        )
    other = category_specs(20, seed=5)
    assert [s.name for s in other] == names[:20]
    assert json.dumps(other[12].params, default=str) != json.dumps(specs[12].params, default=str)


def test_nested_datasets_share_bytes(tmp_path):
    generate_synthetic_dataset(tmp_path / "n3", num_categories=3, seed=1, **SMALL)
    names5 = generate_synthetic_dataset(tmp_path / "n5", num_categories=5, seed=1, **SMALL)
    f3, f5 = _files(tmp_path / "n3"), _files(tmp_path / "n5")
    for k, v in f3.items():
        if not k.startswith("."):
            assert f5[k] == v, k
    assert {k.split("/")[0] for k in f5 if not k.startswith(".")} == set(names5)


@pytest.mark.parametrize("size", [64, 160])
@pytest.mark.parametrize("spec", _covering_specs(), ids=lambda s: s.name)
def test_mask_is_exactly_the_changed_pixels(spec, size):
    for j, defect in enumerate(DEFECT_TYPES):
        for k in range(2 if size == 64 else 1):
            seed = [spec.index, j, k, size]
            img, mask, clean = render_sample(spec, size, np.random.default_rng(seed), defect)
            assert img.shape == clean.shape == (size, size, 3) and mask.shape == (size, size)
            changed = (img != clean).any(-1)
            assert mask.any(), (spec.name, defect)
            assert not (changed & ~mask).any(), f"{spec.name}/{defect}: pixels changed outside the mask"
            assert changed[mask].mean() >= 0.99, f"{spec.name}/{defect}: mask pixels left unchanged"
            assert DEFECT_MIN_AREA[defect] <= mask.mean() <= MAX_AREA
            diff = np.abs(img.astype(int) - clean.astype(int)).max(-1)
            # every mask pixel changed by at least MIN_CHANGE (minus rounding): clearly visible
            assert diff[mask].min() >= round(MIN_CHANGE * 255) - 2, f"{spec.name}/{defect}: defect too faint"
            # the defect-free twin is exactly what a normal render of the same stream gives
            again, m2, _ = render_sample(spec, size, np.random.default_rng(seed), None)
            np.testing.assert_array_equal(again, clean)
            assert not m2.any()


def test_new_defect_types_look_as_named():
    from scipy.ndimage import binary_erosion, distance_transform_edt

    rng = np.random.default_rng(0)
    specs = category_specs(12)
    obj = next(s for s in specs if s.factors["kind"] == "object" and s.family not in ("nut", "chip"))
    for spec in (specs[0], specs[1], obj):
        for _ in range(3):
            img, mask, clean = render_sample(spec, 128, rng, "crack")
            assert binary_erosion(mask, iterations=2).sum() < 0.05 * mask.sum()  # thin: at most ~3 px wide
            img, mask, clean = render_sample(spec, 128, rng, "color_deviation")
            a, b = img[mask].astype(float), clean[mask].astype(float)
            chroma = lambda x: x - x.mean(-1, keepdims=True)  # noqa: E731
            assert np.abs(chroma(a) - chroma(b)).mean() > 20  # the hue changed, not only the brightness
    # shape deviation of an object moves its outline: the changed pixels hug the outline
    for k in range(4):
        img, mask, clean = render_sample(obj, 128, np.random.default_rng([3, k]), "shape_deviation")
        fg = objects._RENDERERS[obj.family](obj.params, np.random.default_rng([3, k]), 128).fg
        to_outline = distance_transform_edt(~((fg > 0.02) & (fg < 0.98)))
        assert to_outline[mask].max() <= 0.17 * 2.2 * 64 + 2


def test_categories_separate_by_backbone_features():
    """Nearest-centroid on pooled Lite0 features at 64 px: 20 categories, 3 images to fit, 2 held out each
    (benchmarks/synthetic_speed.py --distinct runs the same check on all 200)."""
    from dpdiff.backbones import build_backbone

    specs = category_specs(20, seed=0)
    size, per = 64, 5
    imgs, labels = [], []
    for c, spec in enumerate(specs):
        for k in range(per):
            imgs.append(render_sample(spec, size, np.random.default_rng([99, c, k]))[0])
            labels.append(c)
    for c in range(20):  # normal images vary within a category
        assert np.abs(imgs[c * per].astype(float) - imgs[c * per + 1].astype(float)).mean() > 1.0, specs[c].name
    backbone = build_backbone("tf_efficientnet_lite0", image_size=size).eval()
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(backbone.mean).view(1, 3, 1, 1)) / torch.tensor(backbone.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        maps = torch.cat([backbone(x[i : i + 50]) for i in range(0, len(x), 50)])
    feats = torch.cat([maps.mean((2, 3)), maps.std((2, 3))], 1)
    feats = torch.nn.functional.normalize(feats - feats.mean(0), dim=1)
    labels = torch.tensor(labels)
    fit = torch.tensor([k % per < 3 for k in range(len(labels))])
    centroids = torch.stack([feats[fit & (labels == c)].mean(0) for c in range(20)])
    pred = (feats[~fit] @ torch.nn.functional.normalize(centroids, dim=1).T).argmax(1)
    acc = (pred == labels[~fit]).float().mean().item()
    assert acc >= 0.9, f"held-out nearest-centroid accuracy {acc:.2f}"


def test_regenerate_and_refuse_foreign_folder(tmp_path):
    generate_synthetic_dataset(tmp_path / "d", num_categories=1, image_size=32, **_per_category(3, 1, 2))
    generate_synthetic_dataset(tmp_path / "d", num_categories=1, image_size=32, **_per_category(1, 1, 1))
    assert len(load_split(tmp_path / "d", "synth_stripes", "train")) == 1  # stale files removed
    assert [s.defect for s in load_split(tmp_path / "d", "synth_stripes", "test")] == ["good", "scratch"]
    (tmp_path / "e" / "synth_stripes").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(tmp_path / "e", num_categories=1, image_size=32)
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path / "f", num_categories=0)


def test_ensure_extends_reuses_and_checks_settings(tmp_path):
    kw = dict(image_size=32, seed=2, progress=False, **_per_category(1, 1, 1))
    root = tmp_path / "d"
    assert ensure_synthetic_dataset(root, 2, **kw) == [s.name for s in category_specs(2)]
    first = root / "synth_stripes" / "train" / "good" / "000.png"
    stamp = first.stat().st_mtime_ns
    names = ensure_synthetic_dataset(root, 4, **kw)  # extends: only categories 3-4 are written
    assert first.stat().st_mtime_ns == stamp
    assert read_marker(root)["complete"] == names
    assert ensure_synthetic_dataset(root, 3, **kw) == names[:3]  # a larger dataset serves a smaller one
    kw.pop("progress")
    generate_synthetic_dataset(tmp_path / "ref", num_categories=4, **kw)
    ours, ref = _files(root), _files(tmp_path / "ref")

    def visible(files: dict) -> dict:
        return {k: v for k, v in files.items() if not k.startswith(".")}

    assert visible(ours) == visible(ref)
    # an interrupted category (not marked complete) is redone
    marker = read_marker(root)
    marker["complete"] = names[:3]
    (root / ".dpdiff_synthetic.json").write_text(json.dumps(marker))
    (root / names[3] / "train" / "good" / "000.png").unlink()
    ensure_synthetic_dataset(root, 4, progress=False, **kw)
    assert (root / names[3] / "train" / "good" / "000.png").read_bytes() == ref[f"{names[3]}/train/good/000.png"]
    with pytest.raises(FileExistsError, match="image_size"):
        ensure_synthetic_dataset(root, 4, **{**kw, "image_size": 48})
    (tmp_path / "foreign" / "x").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        ensure_synthetic_dataset(tmp_path / "foreign", 1, **kw)


def test_wide_images_with_small_defects(tmp_path):
    """(height, width) images and max_defect_fraction: a 384x1024 set whose every mask covers more than 0 and at
    most 0.5 % of the image, exactly the changed pixels; the marker records both settings."""
    from dpdiff.data.synthetic import defect_area_bounds

    kw = dict(image_size=(384, 1024), max_defect_fraction=0.005, seed=1, **_per_category(1, 1, len(DEFECT_TYPES)))
    names = generate_synthetic_dataset(tmp_path / "w", num_categories=4, **kw)
    fractions = []
    for cat in names:
        for s in load_split(tmp_path / "w", cat, "test"):
            img = np.asarray(Image.open(s.image_path))
            assert img.shape == (384, 1024, 3)
            if s.label:
                m = np.asarray(Image.open(s.mask_path)) > 0
                assert m.shape == (384, 1024)
                fractions.append(m.mean())
                lo, hi = defect_area_bounds(s.defect, (384, 1024), 0.005)
                assert 0 < lo <= m.mean() <= hi <= 0.005
    assert len(fractions) == 4 * len(DEFECT_TYPES)
    assert 0 < min(fractions) and max(fractions) <= 0.005
    assert np.median(fractions) < 0.002  # small defects, not all at the bound
    marker = read_marker(tmp_path / "w")
    assert marker["image_size"] == [384, 1024] and marker["max_defect_fraction"] == 0.005
    # reused only with the same geometry
    assert ensure_synthetic_dataset(tmp_path / "w", 4, progress=False, **kw) == names
    with pytest.raises(FileExistsError, match="max_defect_fraction"):
        ensure_synthetic_dataset(tmp_path / "w", 4, progress=False, **{**kw, "max_defect_fraction": None})
    with pytest.raises(FileExistsError, match="image_size"):
        ensure_synthetic_dataset(tmp_path / "w", 4, progress=False, **{**kw, "image_size": 384})


@pytest.mark.parametrize("size", [(96, 256), (200, 80)])
def test_non_square_masks_are_exactly_the_changed_pixels(size):
    for spec in _covering_specs()[:6]:
        for j, defect in enumerate(DEFECT_TYPES):
            seed = [spec.index, j, *size]
            img, mask, clean = render_sample(spec, size, np.random.default_rng(seed), defect, max_defect_fraction=0.01)
            assert img.shape == clean.shape == (*size, 3) and mask.shape == size
            changed = (img != clean).any(-1)
            assert mask.any() and not (changed & ~mask).any(), (spec.name, defect)
            assert changed[mask].mean() >= 0.99 and 0 < mask.mean() <= 0.01
            again, m2, _ = render_sample(spec, size, np.random.default_rng(seed), None, max_defect_fraction=0.01)
            np.testing.assert_array_equal(again, clean)


def test_defect_fraction_bound_and_square_pairs():
    spec = category_specs(1)[0]
    a = render_sample(spec, 64, np.random.default_rng(0), "hole")
    b = render_sample(spec, (64, 64), np.random.default_rng(0), "hole")  # a square pair is the square path
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="max_defect_fraction"):
        render_sample(spec, 64, 0, "hole", max_defect_fraction=1e-4)  # under 16 pixels of a 64x64 image
    with pytest.raises(ValueError, match="image_size"):
        render_sample(spec, (8, 64), 0)
    with pytest.raises(ValueError, match="max_defect_fraction"):
        generate_synthetic_dataset(Path("unused"), num_categories=1, max_defect_fraction=1.5)
