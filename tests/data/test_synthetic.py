"""Procedural synthetic dataset: determinism, exact defect masks, MVTec-layout output."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpdiff.data import synthetic
from dpdiff.data.mvtec import list_categories, load_dataset, load_split
from dpdiff.data.synthetic import (
    DEFECT_TYPES,
    FAMILIES,
    MAX_AREA,
    MIN_AREA,
    MIN_CHANGE,
    category_specs,
    generate_synthetic_dataset,
    render_sample,
)

SMALL = dict(train_per_category=2, test_good_per_category=1, test_defect_per_category=5, image_size=64)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_bytes(tmp_path):
    a = generate_synthetic_dataset(tmp_path / "a", num_categories=5, seed=3, **SMALL)
    synthetic._bank.cache_clear()  # no hidden state: a fresh process must give the same bytes
    b = generate_synthetic_dataset(tmp_path / "b", num_categories=5, seed=3, **SMALL)
    assert a == b
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(fa) == 5 * (2 + 1 + 5 + 5) + 1  # images + masks + marker
    assert fa == fb
    generate_synthetic_dataset(tmp_path / "c", num_categories=5, seed=4, **SMALL)
    fc = _files(tmp_path / "c")
    assert fc.keys() == fa.keys()
    images = [k for k in fa if k.endswith(".png") and "ground_truth" not in k]
    assert all(fa[k] != fc[k] for k in images)  # every image changes with the seed


def test_readable_by_mvtec_reader(tmp_path):
    names = generate_synthetic_dataset(tmp_path, num_categories=7, seed=0, **SMALL)
    assert names == ["synth_stripes", "synth_nut", "synth_leather", "synth_chip", "synth_grid",
                     "synth_stripes_1", "synth_nut_1"]
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
                assert MIN_AREA <= (m > 0).mean() <= MAX_AREA


@pytest.mark.parametrize("size", [64, 160])
@pytest.mark.parametrize("family_index", range(len(FAMILIES)))
def test_mask_is_exactly_the_changed_pixels(family_index, size):
    spec = category_specs(len(FAMILIES) + 2, seed=0)[family_index]
    for j, defect in enumerate(DEFECT_TYPES):
        for k in range(2):
            img, mask, clean = render_sample(spec, size, np.random.default_rng([family_index, j, k, size]), defect)
            assert img.shape == clean.shape == (size, size, 3) and mask.shape == (size, size)
            changed = (img != clean).any(-1)
            assert mask.any(), (spec.name, defect)
            assert not (changed & ~mask).any(), f"{spec.name}/{defect}: pixels changed outside the mask"
            assert changed[mask].mean() >= 0.99, f"{spec.name}/{defect}: mask pixels left unchanged"
            assert MIN_AREA <= mask.mean() <= MAX_AREA
            diff = np.abs(img.astype(int) - clean.astype(int)).max(-1)
            # every mask pixel changed by at least MIN_CHANGE (minus rounding): clearly visible
            assert diff[mask].min() >= round(MIN_CHANGE * 255) - 2, f"{spec.name}/{defect}: defect too faint"
            # the defect-free twin is exactly what a normal render of the same stream gives
            again, m2, _ = render_sample(spec, size, np.random.default_rng([family_index, j, k, size]), None)
            np.testing.assert_array_equal(again, clean)
            assert not m2.any()


def test_within_class_variation_and_distinct_categories():
    specs = category_specs(7, seed=0)
    means = []
    for spec in specs:
        a = render_sample(spec, 64, 1)[0].astype(float)
        b = render_sample(spec, 64, 2)[0].astype(float)
        assert np.abs(a - b).mean() > 1.0, spec.name  # normal images vary
        means.append(np.mean([render_sample(spec, 64, k)[0].astype(float) for k in range(4)], axis=0))
    for i in range(len(specs)):
        for j in range(i + 1, len(specs)):
            assert np.abs(means[i] - means[j]).mean() > 5.0, (specs[i].name, specs[j].name)


def test_regenerate_and_refuse_foreign_folder(tmp_path):
    generate_synthetic_dataset(tmp_path / "d", num_categories=1, train_per_category=3, test_good_per_category=1,
                               test_defect_per_category=2, image_size=32)
    generate_synthetic_dataset(tmp_path / "d", num_categories=1, train_per_category=1, test_good_per_category=1,
                               test_defect_per_category=1, image_size=32)
    assert len(load_split(tmp_path / "d", "synth_stripes", "train")) == 1  # stale files removed
    assert [s.defect for s in load_split(tmp_path / "d", "synth_stripes", "test")] == ["good", "scratch"]
    (tmp_path / "e" / "synth_stripes").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(tmp_path / "e", num_categories=1, image_size=32)
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path / "f", num_categories=0)


def test_speed_sanity(tmp_path, capsys):
    """Reports the generation rate at 256 px (informative; no timing assertion)."""
    t0 = time.perf_counter()
    generate_synthetic_dataset(tmp_path, num_categories=5, train_per_category=6, test_good_per_category=0,
                               test_defect_per_category=5, image_size=256)
    dt = time.perf_counter() - t0
    n = 5 * 11
    with capsys.disabled():
        print(f"\n[synthetic] {n} images at 256 px in {dt:.2f} s = {n / dt:.0f} images/s")
    assert len(load_dataset(tmp_path, None, "test")) == 25
