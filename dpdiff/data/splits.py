"""Splits of a data set's samples: the normal images held out of training for calibration."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dpdiff.utils.errors import UsageError

__all__ = ["hold_out_for_calibration"]


def hold_out_for_calibration(samples: Sequence, fraction: float, seed: int) -> tuple[list, list]:
    """(training samples, held-out samples): ``round(fraction * n)`` of each category's ``n`` normal training
    images (at least one, and at least one left for training when ``fraction`` > 0), drawn with ``seed``; the
    training samples keep their order. ``fraction`` 0 holds out nothing.

    The trade-off (``train.calibration_fraction``): the held-out images are not trained on, but thresholds set
    on images the model was trained on would be too low (their scores are optimistically small), giving more
    false alarms than asked for; held-out images give the rate asked for."""
    if not 0.0 <= float(fraction) < 1.0:
        raise UsageError(f"train.calibration_fraction must be in [0, 1), got {fraction!r}")
    if fraction == 0 or not samples:
        return list(samples), []
    by_category: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_category.setdefault(str(s.category), []).append(i)
    rng = np.random.default_rng(int(seed))
    held: set[int] = set()
    for category in sorted(by_category):
        idx = by_category[category]
        k = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
        held.update(int(i) for i in rng.permutation(idx)[:k])
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]
