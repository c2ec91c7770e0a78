import csv
import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from dpdiff.metrics import (
    METRIC_NAMES,
    aupro,
    aupro_reference,
    compute_metrics,
    f1_max,
    format_table_markdown,
    image_metrics,
    pixel_metrics,
    write_results,
)
from dpdiff.utils.io import atomic_write_json, atomic_write_text

# ----------------------------------------------------------------------------- image level


def test_metric_names_paper_order():
    assert METRIC_NAMES == ("I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "P-AUPRO")


def test_image_metrics_hand_example():
    # sklearn's documentation example: AUROC 0.75, AP 0.8333.
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    m = image_metrics(scores, labels)
    assert m["I-AUROC"] == pytest.approx(0.75)
    assert m["I-AP"] == pytest.approx(5 / 6)
    # thresholds 0.8: P=1,R=.5 -> .667; 0.4: .5/.5; 0.35: P=2/3,R=1 -> 0.8; 0.1: .5/1 -> .667
    assert m["I-F1max"] == pytest.approx(0.8)
    assert all(isinstance(v, float) for v in m.values())


def test_image_metrics_perfect_ranking():
    m = image_metrics(np.array([0.1, 0.2, 0.9, 0.8, 0.7]), np.array([0, 0, 1, 1, 1]))
    assert m == {"I-AUROC": 1.0, "I-AP": 1.0, "I-F1max": 1.0}


def test_f1_max_hand_example_and_degenerate():
    # scores descending: 0.9(1) 0.8(0) 0.7(1) 0.6(0) ; best: top-3 -> P=2/3, R=1 -> 0.8
    assert f1_max([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.8)
    # worst ranking: P+R=0 at the top threshold must not produce NaN/warnings
    with np.errstate(all="raise"):
        v = f1_max([0.1, 0.9, 0.8], [1, 0, 0])
    assert v == pytest.approx(0.5)  # only all-positive threshold: P=1/3, R=1


def test_single_class_raises():
    with pytest.raises(ValueError, match="single class"):
        image_metrics(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="single class"):
        pixel_metrics(np.random.rand(2, 4, 4), np.zeros((2, 4, 4), bool))


# ----------------------------------------------------------------------------- pixel level


def _toy_maps(seed=0, n=6, size=16, decimals=2):
    rng = np.random.default_rng(seed)
    maps = np.round(rng.random((n, size, size)), decimals).astype(np.float32)
    masks = np.zeros((n, size, size), bool)
    masks[:3, 4:9, 3:7] = True
    masks[1, 12, 12] = True  # single-pixel region
    masks[2, 11, 13] = True
    masks[2, 12, 14] = True  # diagonal neighbour -> same region under 8-connectivity
    maps[masks] += 0.3
    maps[0, 4, 3] = -0.0  # anomalous pixel tied (as -0.0) with a normal +0.0 pixel
    maps[0, 0, 1] = 0.0
    return maps, masks


def test_pixel_metrics_match_sklearn_with_ties():
    maps, masks = _toy_maps()
    m = pixel_metrics(maps, masks)
    y, s = masks.ravel(), maps.ravel()
    p, r, _ = precision_recall_curve(y, s)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0)
    assert m["P-AUROC"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["P-AP"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["P-F1max"] == pytest.approx(f1.max(), abs=1e-12)
    assert set(m) == {"P-AUROC", "P-AP", "P-F1max", "P-AUPRO"}


def test_pixel_metrics_accept_uint8_masks_and_channel_dim():
    maps, masks = _toy_maps()
    a = pixel_metrics(maps, masks)
    b = pixel_metrics(maps[:, None].astype(np.float64), (masks * 255).astype(np.uint8)[:, None])
    assert a == b


def test_anomalous_image_with_empty_mask_is_allowed():
    maps, masks = _toy_maps()
    masks[5] = False
    m = compute_metrics(np.arange(6.0), np.array([1, 1, 1, 0, 0, 1]), maps, masks)
    assert list(m) == list(METRIC_NAMES) + ["mAD"]
    assert m["mAD"] == pytest.approx(np.mean([m[k] for k in METRIC_NAMES]))


def test_aupro_perfect_inverted():
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 32, 32), bool)
    masks[0, 5:10, 5:20] = True
    masks[1, 20:30, 1:4] = True
    masks[1, 2, 2] = True
    perfect = masks.astype(np.float32) + 0.1 * rng.random(masks.shape, dtype=np.float32)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro(-perfect, masks) == pytest.approx(0.0, abs=1e-12)


def test_aupro_random_is_about_limit_over_two():
    rng = np.random.default_rng(1)
    maps = rng.random((40, 64, 64), dtype=np.float32)
    masks = np.zeros(maps.shape, bool)
    for i in range(20):
        y, x = rng.integers(0, 50, 2)
        masks[i, y : y + rng.integers(3, 14), x : x + rng.integers(3, 14)] = True
    assert aupro(maps, masks) == pytest.approx(0.15, abs=0.02)
    assert aupro(maps, masks, fpr_limit=0.1) == pytest.approx(0.05, abs=0.02)


def _hand_example():
    # one row of 8 pixels; regions A = {0, 1} (size 2) and B = {3} (size 1); 5 normal pixels.
    m = np.array([[[0.9, 0.6, 0.7, 0.8, 0.6, 0.1, 0.2, 0.3]]])
    k = np.array([[[1, 1, 0, 1, 0, 0, 0, 0]]])
    return m, k


def test_aupro_hand_example_ties_and_interpolation():
    m, k = _hand_example()
    # PRO curve (FPR, PRO): (0,0) -> t=.9 (0,.25) -> t=.8 (0,.75) -> t=.7 (.2,.75)
    #  -> t=.6 [pixel 1 (A) and pixel 4 (normal) tie] (.4, 1.0) -> ...
    # area to 0.3: .2*.75 + .1*(.75 + .875)/2 = 0.23125 (PRO at 0.3 interpolated = .875)
    assert aupro(m, k) == pytest.approx(0.23125 / 0.3, abs=1e-12)
    # limit on a vertex: area to 0.2 = 0.15
    assert aupro(m, k, fpr_limit=0.2) == pytest.approx(0.15 / 0.2, abs=1e-12)
    # limit inside the flat part: area to 0.1 = 0.075
    assert aupro(m, k, fpr_limit=0.1) == pytest.approx(0.75, abs=1e-12)
    # full curve: .2*.75 + .2*(.75+1)/2 + .6*1 = 0.925
    assert aupro(m, k, fpr_limit=1.0) == pytest.approx(0.925, abs=1e-12)
    assert aupro_reference(m, k, thresholds=np.unique(m)) == pytest.approx(0.23125 / 0.3, abs=1e-12)


def test_aupro_fpr_limit_interpolated_exactly():
    m, k = _hand_example()
    # between FPR 0.2 (PRO .75) and 0.4 (PRO 1) the curve is linear: PRO(x) = .75 + 1.25 (x - .2)
    for lim in (0.25, 0.3, 0.35):
        area = 0.15 + (lim - 0.2) * (0.75 + 0.75 + 1.25 * (lim - 0.2)) / 2
        assert aupro(m, k, fpr_limit=lim) == pytest.approx(area / lim, abs=1e-12)
    with pytest.raises(ValueError):
        aupro(m, k, fpr_limit=0.0)
    with pytest.raises(ValueError):
        aupro(m, k, fpr_limit=1.5)


def test_aupro_uses_8_connectivity():
    k = np.zeros((1, 4, 4), int)
    k[0, 0, 0] = k[0, 1, 1] = 1  # diagonal pair: ONE region under 8-connectivity
    k[0, 3, 3] = 1  # separate single pixel
    m = np.zeros((1, 4, 4))
    m[0, 3, 3] = 1.0
    # 8-conn: PRO at FPR 0 = (0 + 1)/2 = .5, then (1, 1): PRO(.3) = .65, area .3*(.5+.65)/2 -> .575
    # (4-conn would give (0 + 0 + 1)/3 at FPR 0 -> 0.4333)
    assert aupro(m, k) == pytest.approx(0.575, abs=1e-12)
    assert aupro_reference(m, k, thresholds=np.unique(m)) == pytest.approx(0.575, abs=1e-12)


def test_aupro_matches_reference_exactly_with_all_thresholds():
    maps, masks = _toy_maps(seed=3, n=5, size=16, decimals=3)
    exact = aupro(maps, masks)
    ref = aupro_reference(maps, masks, thresholds=np.unique(maps))
    assert exact == pytest.approx(ref, abs=1e-9)
    for lim in (0.05, 0.3, 1.0):
        assert aupro(maps, masks, lim) == pytest.approx(
            aupro_reference(maps, masks, lim, thresholds=np.unique(maps)), abs=1e-9
        )


def test_aupro_close_to_200_threshold_reference_on_few_values():
    # maps with 5 distinct values: 200 evenly spaced thresholds capture every curve point
    rng = np.random.default_rng(4)
    masks = np.zeros((6, 24, 24), bool)
    masks[:3, 3:11, 5:12] = True
    masks[3, 15:20, 15:22] = True
    maps = (rng.integers(0, 5, masks.shape) + 2 * masks).astype(np.float32) / 6
    assert aupro(maps, masks) == pytest.approx(aupro_reference(maps, masks), abs=1e-3)


def test_aupro_errors():
    with pytest.raises(ValueError, match="no anomalous region"):
        aupro(np.random.rand(2, 4, 4), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        aupro(np.full((1, 2, 2), np.nan), np.ones((1, 2, 2)))
    with pytest.raises(ValueError, match="shape"):
        aupro(np.zeros((1, 2, 2)), np.zeros((1, 2, 3)))


# ----------------------------------------------------------------------------- tables / io


def _row(base):
    return {k: base + 0.01 * i for i, k in enumerate(METRIC_NAMES)}


def test_write_results(tmp_path):
    per_cat = {"bottle": _row(0.9), "cable": _row(0.5)}
    paths = write_results(per_cat, tmp_path / "out", protocol={"seed": np.int64(1), "split": "test"})
    assert set(paths) == {"json", "csv", "md"}
    data = json.loads(paths["json"].read_text())
    assert set(data["per_category"]) == {"bottle", "cable"}
    assert data["protocol"] == {"seed": 1, "split": "test"}
    for i, k in enumerate(METRIC_NAMES):
        assert data["mean"][k] == pytest.approx(0.7 + 0.01 * i)
    assert data["per_category"]["bottle"]["mAD"] == pytest.approx(0.93)
    assert data["mean"]["mAD"] == pytest.approx((0.93 + 0.53) / 2)

    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["category"] for r in rows] == ["bottle", "cable", "mean"]
    assert float(rows[2]["I-AUROC"]) == pytest.approx(0.7)
    assert list(rows[0]) == ["category", *METRIC_NAMES, "mAD"]

    md = paths["md"].read_text().splitlines()
    assert md[0] == "| Category | I-AUROC | I-AP | I-F1max | P-AUROC | P-AP | P-F1max | P-AUPRO | mAD |"
    assert md[2].startswith("| bottle | 90.0 | 91.0 | 92.0 |")
    assert "mean" in md[-1] and "| 70.0 |" in md[-1] and md[-1].endswith("| 73.0 |")
    assert not list((tmp_path / "out").glob(".*tmp"))  # no temp leftovers


def test_write_results_rejects_bad_input(tmp_path):
    with pytest.raises(KeyError):
        write_results({"a": {"I-AUROC": 1.0}}, tmp_path)
    with pytest.raises(ValueError):
        write_results({"mean": _row(0.5)}, tmp_path)


def test_format_table_markdown_missing_value():
    text = format_table_markdown({"a": {"I-AUROC": 0.9876}})
    assert "| a | 98.8 | \u2014 |" in text


def _labels_only_case(rng, n=12, size=8):
    labels = np.array([0, 1] * (n // 2))
    scores = rng.random(n) + labels  # separable: I-AUROC 1
    maps = rng.random((n, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), dtype=bool)  # no defect mask anywhere
    return scores, labels, maps, masks


def test_compute_metrics_labels_only_gives_image_metrics_and_no_pixel_metrics():
    scores, labels, maps, masks = _labels_only_case(np.random.default_rng(0))
    known = labels == 0  # the defective images have no mask
    m = compute_metrics(scores, labels, maps, masks, mask_known=known)
    assert m["I-AUROC"] == 1.0 and m["I-AP"] == 1.0
    assert all(m[k] is None for k in ("P-AUROC", "P-AP", "P-F1max", "P-AUPRO", "mAD"))


def test_compute_metrics_mixed_set_scores_pixels_of_masked_images_only():
    rng = np.random.default_rng(1)
    scores, labels, maps, masks = _labels_only_case(rng)
    masks[1, 2:4, 2:4] = True  # image 1 has a mask; 3, 5, ... have image labels only
    maps[1, 2:4, 2:4] += 10.0  # found perfectly where the mask is known
    maps[3] += 20.0  # an unmasked defective image lights up everywhere: it must not count as normal pixels
    known = (labels == 0) | (np.arange(len(labels)) == 1)
    mixed = compute_metrics(scores, labels, maps, masks, mask_known=known)
    assert mixed["P-AUROC"] == 1.0
    treated_as_normal = compute_metrics(scores, labels, maps, masks)  # the unmasked images' pixels as normal
    assert treated_as_normal["P-AUROC"] < 1.0
    assert mixed["mAD"] is not None


def test_write_results_labels_only_null_in_json_em_dash_in_tables(tmp_path):
    rows = {"a": {**_row(0.8), "P-AUROC": None, "P-AP": None, "P-F1max": None, "P-AUPRO": None, "mAD": None}}
    rows["b"] = _row(0.6)
    paths = write_results(rows, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["per_category"]["a"]["P-AUROC"] is None and data["per_category"]["a"]["mAD"] is None
    assert data["mean"]["P-AUROC"] == pytest.approx(0.63)  # over the one category that has it
    assert data["mean"]["I-AUROC"] == pytest.approx(0.7)
    md = paths["md"].read_text()
    assert "\u2014" in md and "P-AUROC is over 1 of 2 categories" in md
    csv_a = [line for line in paths["csv"].read_text().splitlines() if line.startswith("a,")][0]
    assert csv_a.split(",")[4] == "\u2014" and ",0," not in csv_a


def test_atomic_writes_replace(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_text(p, "old")
    atomic_write_json(p, {"a": np.float32(0.5), "b": (1, 2)})
    assert json.loads(p.read_text()) == {"a": 0.5, "b": [1, 2]}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["x.json"]


@pytest.mark.parametrize("fpr_limit", [1e-4, 0.05, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("levels", [None, 7])
def test_aupro_partial_sort_equals_the_full_curve(fpr_limit, levels):
    from dpdiff.metrics.anomaly import _PixelCurve

    rng = np.random.default_rng(3)
    maps = rng.standard_normal((6, 20, 20)).astype(np.float32)
    if levels:  # heavy ties, including around the FPR cut
        maps = np.round(maps * levels / 3).astype(np.float32)
    masks = np.zeros(maps.shape, bool)
    masks[1, 2:6, 3:9] = True
    masks[4, 10:12, 10:18] = True
    masks[4, 15, 15] = True
    maps[masks] += 0.7
    expected = _PixelCurve(maps, masks).aupro(fpr_limit)
    assert aupro(maps, masks, fpr_limit) == pytest.approx(expected, abs=1e-12)
