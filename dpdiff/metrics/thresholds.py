"""Thresholds from scores: the split-conformal false-alarm-rate quantile and the F1-optimal cut (pure numpy).

``dpdiff.inference.calibration`` builds decisions and ``calibration.json`` on these; training uses
:func:`min_normal_images` to refuse a hold-out too small for the asked rate before it trains.
"""

from __future__ import annotations

import math

import numpy as np

from dpdiff.utils.errors import DataError, UsageError

__all__ = ["check_fpr", "min_normal_images", "fpr_threshold", "f1_threshold"]


def check_fpr(target_fpr: float) -> float:
    """``target_fpr`` as a float in (0, 1); UsageError otherwise."""
    try:
        fpr = float(target_fpr)
    except (TypeError, ValueError):
        raise UsageError(f"target_fpr must be a number in (0, 1), got {target_fpr!r}") from None
    if not 0.0 < fpr < 1.0:
        raise UsageError(f"target_fpr must be in (0, 1) (e.g. 0.01 for 1 % false alarms), got {target_fpr!r}")
    return fpr


def _rank(n: int, fpr: float) -> int:
    """k = ceil((n + 1)(1 - fpr)), guarded against float error (0.9 * 100 = 90.00000000000001)."""
    return int(math.ceil((n + 1) * (1.0 - fpr) - 1e-9))


def min_normal_images(target_fpr: float) -> int:
    """The fewest normal images that can set a threshold at ``target_fpr`` (:func:`fpr_threshold` needs
    ``ceil((n + 1)(1 - fpr)) <= n``): 99 for 0.01, 19 for 0.05, 9 for 0.1."""
    fpr = check_fpr(target_fpr)
    n = max(1, int(math.floor(1.0 / fpr - 1.0)) - 1)
    while _rank(n, fpr) > n:
        n += 1
    return n


def fpr_threshold(values: np.ndarray, target_fpr: float, what: str = "normal images") -> tuple[float, float]:
    """(threshold, expected false-alarm rate) from scores of normal samples: the ``k``-th smallest value,
    ``k = ceil((n + 1)(1 - fpr))`` (split-conformal quantile, see the module docstring). A new normal
    sample exceeds it with probability ``(n + 1 - k) / (n + 1)`` <= ``target_fpr`` (exchangeable scores).

    DataError when ``values`` hold fewer than :func:`min_normal_images` entries or a non-finite value."""
    fpr = check_fpr(target_fpr)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    n = v.size
    need = min_normal_images(fpr)
    if n < need:
        lowest = 1.0 / (n + 1) if n else 1.0
        raise DataError(
            f"calibrating at target_fpr={fpr:g} needs at least {need} {what}, got {n}: with n normal "
            f"images the smallest false-alarm rate that can be set is 1/(n+1) = {lowest:.3g}; add "
            f"normal images or raise the target (--fpr)"
        )
    if not np.isfinite(v).all():
        raise DataError(f"{what}: {int((~np.isfinite(v)).sum())} non-finite score(s); cannot calibrate")
    k = _rank(n, fpr)
    threshold = float(np.partition(v, k - 1)[k - 1])
    return threshold, (n + 1 - k) / (n + 1)


def f1_threshold(scores: np.ndarray, labels: np.ndarray, what: str = "labelled images") -> tuple[float, float]:
    """(threshold, F1) maximising F1 of the decision ``score > threshold`` on labelled samples (1 = anomalous).

    The threshold lies midway between the lowest score flagged and the highest one below it, so the decision
    on these samples is the optimal one and new scores are split at the gap's middle."""
    from sklearn.metrics import precision_recall_curve

    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.size != y.size:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not y.any() or y.all():
        raise DataError(
            f"{what}: F1 calibration needs both normal and anomalous samples ({int(y.sum())} anomalous of {y.size})"
        )
    if not np.isfinite(s).all():
        raise DataError(f"{what}: {int((~np.isfinite(s)).sum())} non-finite score(s); cannot calibrate")
    precision, recall, cuts = precision_recall_curve(y, s)  # positive when score >= cut
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)[:-1]
    best = int(np.argmax(f1))
    cut = float(cuts[best])
    below = s[s < cut]
    threshold = 0.5 * (cut + float(below.max())) if below.size else np.nextafter(cut, -np.inf)
    return float(threshold), float(f1[best])
