"""Image- and pixel-level anomaly-detection metrics (paper Sec. 5.1.2).

All functions take numpy arrays and return plain Python floats in [0, 1].

Image level (scikit-learn): AUROC, AP, F1-max.
Pixel level (all pixels of all images flattened, the standard protocol):
AUROC, AP, F1-max and AUPRO (Bergmann et al., MVTec AD).

Pixel-level implementation notes
--------------------------------
* scikit-learn needs ~70 s for AUROC + AP + PR curve on 40 M pixels (three
  separate stable argsorts).  ``pixel_metrics`` therefore computes the exact same
  quantities from ONE sort: each pixel becomes a 64-bit key
  ``(order-preserving score bits << 32) | region id`` and the keys are sorted
  with numpy's (SIMD) integer sort.  From the sorted keys we read the number of
  true/false positives after every distinct score value (ties collapsed, exactly
  like sklearn's ``_binary_clf_curve``) and derive ROC/PR/PRO curves from them.
  The results equal sklearn's ``roc_auc_score``, ``average_precision_score`` and
  the F1-max of ``precision_recall_curve`` up to float rounding (AUROC is even
  computed in exact integer arithmetic); the tests check this.
* AUPRO ground-truth regions are connected components with **8-connectivity**
  (``scipy.ndimage.label`` with a 3x3 structure of ones), as in the official
  MVTec AD evaluation script and in anomalib (``cv2.connectedComponents``
  defaults to 8-connectivity).  Components never span two images.
* The PRO curve is evaluated at every distinct score (thresholds ``score >= t``),
  starting at (0, 0).  FPR is taken over all normal pixels of all images
  (including the normal pixels of defective images); PRO is the mean over all
  regions of all images of the fraction of the region covered.  The curve is
  interpolated linearly at exactly ``fpr_limit``, integrated with the trapezoid
  rule and divided by ``fpr_limit`` (a perfect map gives 1.0, a random one about
  ``fpr_limit / 2``).
"""

from __future__ import annotations

import sys

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from dpdiff.utils.errors import DataError

__all__ = [
    "METRIC_NAMES",
    "IMAGE_METRIC_NAMES",
    "PIXEL_METRIC_NAMES",
    "image_metrics",
    "pixel_metrics",
    "f1_max",
    "aupro",
    "aupro_reference",
    "integrate_pro",
    "compute_metrics",
    "mean_ad",
]

IMAGE_METRIC_NAMES = ("I-AUROC", "I-AP", "I-F1max")
PIXEL_METRIC_NAMES = ("P-AUROC", "P-AP", "P-F1max", "P-AUPRO")
#: Paper column order (Tables 1-9); ``"mAD"`` (mean of the seven) follows.
METRIC_NAMES = IMAGE_METRIC_NAMES + PIXEL_METRIC_NAMES

# 8-connectivity inside an image, no connectivity across the image axis.
_STRUCT_2D = np.ones((3, 3), dtype=bool)
_STRUCT_3D = np.zeros((3, 3, 3), dtype=bool)
_STRUCT_3D[1] = True


# ----------------------------------------------------------------------------- helpers
def _check_binary_labels(labels: np.ndarray, what: str) -> np.ndarray:
    labels = np.asarray(labels).ravel()
    if labels.dtype != bool:
        uniq = np.unique(labels)
        if not np.all(np.isin(uniq, (0, 1))):
            raise ValueError(f"{what} must be binary (0/1 or bool), got values {uniq[:10].tolist()}")
        labels = labels.astype(bool)
    return labels


def _check_two_classes(n_pos: int, n_total: int, what: str) -> None:
    if n_pos == 0 or n_pos == n_total:
        only = "anomalous" if n_pos else "normal"
        raise DataError(
            f"{what}: only {only} samples ({n_total} in total); AUROC/AP/F1 are undefined "
            "when the test set contains a single class"
        )


def _as_scores(scores: np.ndarray, what: str) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.dtype.kind not in "fiub":
        raise TypeError(f"{what} must be numeric, got dtype {scores.dtype}")
    if scores.dtype.kind == "f" and np.isnan(scores).any():
        raise ValueError(f"{what} contain NaN")
    return scores


def _as_maps_masks(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (maps float32 (N,H,W), masks bool (N,H,W)); no copy when already in that form."""
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if maps.ndim == 2:
        maps = maps[None]
    if masks.ndim == 2:
        masks = masks[None]
    if maps.ndim != 3:
        raise ValueError(f"anomaly maps must be (N,H,W), (N,1,H,W) or (H,W); got shape {maps.shape}")
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} differ in shape")
    if maps.dtype.kind not in "fiu":
        raise TypeError(f"anomaly maps must be numeric, got dtype {maps.dtype}")
    maps = np.ascontiguousarray(maps, dtype=np.float32)
    if np.isnan(maps).any():
        raise ValueError("anomaly maps contain NaN")
    if masks.dtype != bool:
        if masks.dtype.kind == "f":
            masks = masks > 0.5
        else:
            masks = masks != 0  # 0/1 or 0/255
    return maps, np.ascontiguousarray(masks)


def _f1_from_pr(precision: np.ndarray, recall: np.ndarray) -> float:
    denom = precision + recall
    f1 = np.zeros_like(denom, dtype=np.float64)
    np.divide(2.0 * precision * recall, denom, out=f1, where=denom > 0)
    return float(np.max(f1)) if f1.size else 0.0


# ----------------------------------------------------------------------------- image level
def f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Maximum F1 over all thresholds of sklearn's ``precision_recall_curve``.

    Points with precision + recall = 0 count as F1 = 0 (no NaN warnings).
    """
    scores = _as_scores(scores, "scores").ravel()
    labels = _check_binary_labels(labels, "labels")
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in size")
    if not labels.any():
        raise DataError("f1_max: no positive samples; F1 is undefined")
    precision, recall, _ = precision_recall_curve(labels, scores)
    return _f1_from_pr(precision, recall)


def image_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    """Image-level {"I-AUROC", "I-AP", "I-F1max"} from per-image scores and 0/1 labels."""
    scores = _as_scores(scores, "image scores").ravel()
    labels = _check_binary_labels(labels, "image labels")
    if scores.shape != labels.shape:
        raise ValueError(f"image scores {scores.shape} and labels {labels.shape} differ in size")
    _check_two_classes(int(labels.sum()), labels.size, "image metrics")
    return {
        "I-AUROC": float(roc_auc_score(labels, scores)),
        "I-AP": float(average_precision_score(labels, scores)),
        "I-F1max": f1_max(scores, labels),
    }


# ----------------------------------------------------------------------------- pixel level
def _label_regions_into(masks: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Label 8-connected GT regions of each image with globally unique ids 1..R written into ``out``
    (a (N,H,W) uint32 view, pre-filled with 0).  Returns the region sizes (index 0 unused)."""
    has_defect = masks.reshape(len(masks), -1).any(axis=1)
    idx = np.flatnonzero(has_defect)
    if idx.size == 0:
        return np.zeros(1, dtype=np.int64)
    if idx.size == len(masks):
        labels, num = ndimage.label(masks, structure=_STRUCT_3D)
        out[...] = labels
    else:
        labels, num = ndimage.label(masks[idx], structure=_STRUCT_3D)
        out[idx] = labels
    return np.bincount(labels.ravel(), minlength=num + 1).astype(np.int64)


class _PixelCurve:
    """Cumulative counts after each distinct score value (scores in descending order).

    tps[k], fps[k]: anomalous / normal pixels with score >= the k-th distinct value.
    pro[k]: mean over GT regions of the covered fraction at that threshold.
    """

    def __init__(self, maps: np.ndarray, masks: np.ndarray, score_floor: float | None = None):
        """``score_floor``: keep only pixels scoring >= it (the curve is then exact for every
        threshold >= score_floor, and undefined below); class totals stay those of all pixels."""
        maps, masks = _as_maps_masks(maps, masks)
        self.n_total = maps.size
        if score_floor is None:
            n = maps.size
            key = np.empty(n, dtype=np.uint64)
            words = key.view(np.uint32)
            hi_i, lo_i = (1, 0) if sys.byteorder == "little" else (0, 1)
            hi = words[hi_i::2]  # score part (most significant)
            lo = words[lo_i::2]  # region id part (0 = normal pixel)
            np.copyto(hi, maps.reshape(-1).view(np.uint32))
            lo[...] = 0
            sizes = _label_regions_into(masks, lo.reshape(masks.shape))
            n_pos_total = None
        else:
            region_ids = np.zeros(masks.shape, dtype=np.uint32)
            sizes = _label_regions_into(masks, region_ids)
            n_pos_total = int(np.count_nonzero(masks))
            keep = maps >= np.float32(score_floor)
            n = int(np.count_nonzero(keep))
            key = np.empty(n, dtype=np.uint64)
            words = key.view(np.uint32)
            hi_i, lo_i = (1, 0) if sys.byteorder == "little" else (0, 1)
            hi = words[hi_i::2]
            lo = words[lo_i::2]
            np.copyto(hi, maps[keep].view(np.uint32))
            np.copyto(lo, region_ids[keep])
            del region_ids, keep

        # Order-preserving float32 -> uint32 map, inverted so that an ascending sort of the
        # keys gives DESCENDING scores.  -0.0 is folded onto +0.0 so that they tie.
        hi[hi == np.uint32(0x80000000)] = 0
        nonneg = hi < np.uint32(0x80000000)
        np.subtract(np.uint32(0x7FFFFFFF), hi, out=hi, where=nonneg)
        del nonneg
        key.sort()

        # End index of every group of tied scores.
        change = np.flatnonzero(hi[1:] != hi[:-1])
        ends = np.append(change, n - 1) if n else np.zeros(0, dtype=np.int64)
        del change
        pos_idx = np.flatnonzero(lo != 0)
        self.n_pos = int(pos_idx.size) if n_pos_total is None else n_pos_total
        self.n_neg = int(self.n_total - self.n_pos)
        self.tps = np.searchsorted(pos_idx, ends, side="right").astype(np.int64)
        self.fps = ends + 1 - self.tps
        self.pro = None
        self.num_regions = 0
        if self.n_pos:
            num_regions = len(sizes) - 1
            weights = np.zeros(len(sizes), dtype=np.float64)
            weights[1:] = 1.0 / (sizes[1:] * float(num_regions))
            cum = np.cumsum(weights[lo[pos_idx]])
            pro = np.zeros(len(ends), dtype=np.float64)
            has = self.tps > 0
            pro[has] = cum[self.tps[has] - 1]
            self.pro = np.minimum(pro, 1.0)
            self.num_regions = num_regions

    # -- metrics --------------------------------------------------------------------------
    def check_two_classes(self, what: str = "pixel metrics") -> None:
        _check_two_classes(self.n_pos, self.n_pos + self.n_neg, what)

    def auroc(self) -> float:
        # Exact integer trapezoid: 2 * area * P * N = sum dFP * (TP_i + TP_{i-1}).
        tps = np.concatenate(([0], self.tps))
        fps = np.concatenate(([0], self.fps))
        twice_area = int(np.sum(np.diff(fps) * (tps[1:] + tps[:-1])))
        return twice_area / (2.0 * self.n_pos * self.n_neg)

    def average_precision(self) -> float:
        # sklearn: AP = sum_k (R_k - R_{k-1}) P_k
        precision = self.tps / (self.tps + self.fps)
        d_tp = np.diff(np.concatenate(([0], self.tps)))
        return float(np.sum(d_tp * precision) / self.n_pos)

    def f1_max(self) -> float:
        # F1 = 2TP / (TP + FP + P); the denominator is >= P > 0.
        return float(np.max(2.0 * self.tps / (self.tps + self.fps + self.n_pos)))

    def aupro(self, fpr_limit: float = 0.3) -> float:
        _check_fpr_limit(fpr_limit)
        if self.pro is None or self.num_regions == 0:
            raise DataError("AUPRO: the ground-truth masks contain no anomalous region")
        if self.n_neg == 0:
            raise DataError("AUPRO: there are no normal pixels; the false-positive rate is undefined")
        fpr = np.concatenate(([0.0], self.fps / float(self.n_neg)))
        pro = np.concatenate(([0.0], self.pro))
        return integrate_pro(fpr, pro, fpr_limit)


def _check_fpr_limit(fpr_limit: float) -> None:
    if not (0.0 < float(fpr_limit) <= 1.0):
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


def integrate_pro(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Area under a PRO curve (fpr ascending, starting at 0) up to ``fpr_limit``, normalised: the curve is cut
    (linearly interpolated) at ``fpr_limit``, integrated with the trapezoid rule and divided by ``fpr_limit``. The
    integration rule of :func:`aupro` and :func:`aupro_reference` (and of ``benchmarks/aupro_speed.py``)."""
    j = int(np.searchsorted(fpr, fpr_limit, side="left"))  # first point with fpr >= limit
    if j >= len(fpr):
        raise ValueError("PRO curve does not reach fpr_limit")  # cannot happen: last FPR is 1
    # Segment (fpr[j-1], pro[j-1]) -> (fpr[j], pro[j]) crosses the limit; fpr[j-1] < limit.
    x0, x1, y0, y1 = fpr[j - 1], fpr[j], pro[j - 1], pro[j]
    y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
    xs = np.concatenate((fpr[:j], [fpr_limit]))
    ys = np.concatenate((pro[:j], [y_lim]))
    area = float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1])) / 2.0)
    return min(max(area / fpr_limit, 0.0), 1.0)


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Exact normalised area under the PRO curve up to ``fpr_limit`` (see module docstring).

    Only the part of the curve up to the first point with FPR >= ``fpr_limit`` matters, and that
    point is the score ``v`` of the k-th highest normal pixel, ``k = ceil(fpr_limit * n_normal)``
    (every higher score flags fewer than k normal pixels). ``v`` is found with a linear-time
    ``np.partition`` and only pixels scoring >= ``v`` are sorted: same result, a fraction of the sort.
    """
    _check_fpr_limit(fpr_limit)
    maps, masks = _as_maps_masks(maps, masks)
    normal_scores = maps[~masks]
    n_neg = normal_scores.size
    floor = None
    if n_neg:
        # one extra pixel guards against the rounding of fpr_limit * n_neg
        k = min(n_neg, int(np.ceil(fpr_limit * n_neg)) + 1)
        floor = float(np.partition(normal_scores, n_neg - k)[n_neg - k])
        if floor == 0.0:
            floor = -0.0  # -0.0 and +0.0 tie in the curve; keep both
    del normal_scores
    return _PixelCurve(maps, masks, score_floor=floor).aupro(fpr_limit)


def pixel_metrics(maps: np.ndarray, masks: np.ndarray, aupro_fpr_limit: float = 0.3) -> dict:
    """Pixel-level {"P-AUROC", "P-AP", "P-F1max", "P-AUPRO"} over all pixels of all images.

    ``maps``: float (N,H,W); ``masks``: bool / 0-1 (N,H,W).  Images whose mask is empty are
    fine (also when labelled anomalous).  Raises ValueError when all pixels are of one class.
    """
    _check_fpr_limit(aupro_fpr_limit)
    curve = _PixelCurve(maps, masks)
    curve.check_two_classes("pixel metrics")
    return {
        "P-AUROC": curve.auroc(),
        "P-AP": curve.average_precision(),
        "P-F1max": curve.f1_max(),
        "P-AUPRO": curve.aupro(aupro_fpr_limit),
    }


def mean_ad(metrics: dict) -> float:
    """mAD: mean of the seven paper metrics."""
    missing = [k for k in METRIC_NAMES if metrics.get(k) is None]
    if missing:
        raise KeyError(f"mAD needs all seven metrics; missing {missing}")
    return float(sum(float(metrics[k]) for k in METRIC_NAMES) / len(METRIC_NAMES))


def compute_metrics(
    image_scores: np.ndarray,
    image_labels: np.ndarray,
    maps: np.ndarray,
    masks: np.ndarray,
    aupro_fpr_limit: float = 0.3,
    mask_known: np.ndarray | None = None,
) -> dict:
    """All seven metrics (paper order) plus ``"mAD"``.

    ``mask_known`` (N,) bool, default all True: the images whose ground truth is known pixel by pixel (normal
    images, and defective images with a mask). The pixel metrics are computed over those images only; when
    none of them has a defect pixel (a data set with image labels only) the four pixel metrics and mAD are
    ``None`` ("not available"): mAD is the mean of all seven or nothing, never a mean of fewer."""
    out: dict = image_metrics(image_scores, image_labels)
    maps, masks = np.asarray(maps), np.asarray(masks)
    if mask_known is not None:
        known = np.asarray(mask_known, dtype=bool).ravel()
        if known.shape[0] != maps.shape[0]:
            raise ValueError(f"mask_known has {known.shape[0]} entries for {maps.shape[0]} maps")
        if not known.all():
            maps, masks = maps[known], masks[known]
    if masks.size and masks.any():
        out.update(pixel_metrics(maps, masks, aupro_fpr_limit=aupro_fpr_limit))
        out = {k: out[k] for k in METRIC_NAMES}
        out["mAD"] = mean_ad(out)
    else:
        out = {k: out.get(k) for k in METRIC_NAMES}
        out["mAD"] = None
    return out


# ----------------------------------------------------------------------------- reference
def aupro_reference(
    maps: np.ndarray,
    masks: np.ndarray,
    fpr_limit: float = 0.3,
    num_thresholds: int = 200,
    thresholds: np.ndarray | None = None,
) -> float:
    """Classic threshold-loop AUPRO, used as a test oracle / benchmark baseline.

    For each of ``num_thresholds`` evenly spaced thresholds between the min and max score
    (or the given ``thresholds``) the maps are binarised (``score >= t``), the mean per-region
    overlap and the FPR over all normal pixels are computed; the points plus (0, 0) are sorted
    by FPR, the curve is cut (linearly interpolated) at ``fpr_limit``, integrated with the
    trapezoid rule and divided by ``fpr_limit``.  With ``thresholds=np.unique(maps)`` it is
    exact and must equal :func:`aupro`.
    """
    _check_fpr_limit(fpr_limit)
    maps, masks = _as_maps_masks(maps, masks)
    labels = np.zeros(masks.shape, dtype=np.int32)
    num_regions = 0
    for i in range(len(masks)):  # per image, 8-connectivity
        lab, num = ndimage.label(masks[i], structure=_STRUCT_2D)
        labels[i] = np.where(lab > 0, lab + num_regions, 0)
        num_regions += num
    if num_regions == 0:
        raise ValueError("AUPRO: the ground-truth masks contain no anomalous region")
    sizes = np.bincount(labels.ravel(), minlength=num_regions + 1)[1:]
    normal = ~masks
    n_neg = int(normal.sum())
    if n_neg == 0:
        raise ValueError("AUPRO: there are no normal pixels; the false-positive rate is undefined")
    if thresholds is None:
        thresholds = np.linspace(float(maps.min()), float(maps.max()), int(num_thresholds))
    fprs, pros = [0.0], [0.0]
    for t in np.asarray(thresholds, dtype=np.float32):  # same precision as the maps
        pred = maps >= t
        hits = np.bincount(labels[pred], minlength=num_regions + 1)[1:]
        pros.append(float(np.mean(hits / sizes)))
        fprs.append(float(np.count_nonzero(pred & normal)) / n_neg)
    fprs.append(1.0)  # threshold -inf: everything flagged
    pros.append(1.0)
    fpr = np.asarray(fprs)
    pro = np.asarray(pros)
    order = np.lexsort((pro, fpr))
    return integrate_pro(fpr[order], pro[order], fpr_limit)
