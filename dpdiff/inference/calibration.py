"""Score thresholds for decisions ("is this part defective, and where"), and ``calibration.json``.

Two ways to set them (``Detector.calibrate``, ``dpdiff calibrate``):

* **at a false-alarm rate** (``target_fpr``, default 0.01), from held-out *normal* images only: the image threshold is
  the (1 - fpr) quantile of their image scores, the pixel threshold the (1 - pixel_fpr) quantile of all their map
  pixels, at its own, small rate (``pixel_fpr``, default :data:`DEFAULT_PIXEL_FPR` = 0.001: the share of a normal
  image's pixels above it). The quantile is the split-conformal order statistic: with ``n`` scores the threshold is
  the ``k``-th smallest, ``k = ceil((n + 1) (1 - fpr))`` (:func:`fpr_threshold`). For a new normal image from the same
  distribution, P(score > threshold) = (n + 1 - k) / (n + 1), which is at most ``fpr`` and at least ``fpr - 1 / (n +
  1)``: the rate holds for any score distribution and any ``n``, not only asymptotically. It needs ``k <= n``, i.e.
  ``n >= 1/fpr - 1`` normal images (:func:`min_normal_images`; 99 for 1 %); fewer is an error, never a silently looser
  threshold.
* **F1-optimal**, from a labelled validation set (normal and defective images, masks for the pixel
  threshold): the threshold that maximises F1 of ``score > threshold`` (:func:`f1_threshold`).

A decision is ``score > threshold``; the **normalised score** is ``score / threshold``, so 1.0 is the
decision boundary whatever the run, and 2.0 reads "twice the score that triggers an alarm". Anomaly scores
are squared reconstruction errors, so thresholds are positive (a non-positive one is refused).

Multi-class models do not know the category of an image at inference: thresholds are *global* by default;
thresholds calibrated for a named category are kept beside them and used when the caller names it.

``calibration.json`` (:data:`~dpdiff.utils.run_files.CALIBRATION_FILE`, in the run folder, written atomically)
records the thresholds with a *fingerprint* of what produced the scores (a hash of the model weights and
the scoring settings, :func:`scoring_fingerprint`); a file whose fingerprint does not match the model it is
loaded with (retrained weights, other inference settings) is ignored with a warning.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dpdiff.data.splits import hold_out_for_calibration
from dpdiff.metrics.thresholds import check_fpr, f1_threshold, fpr_threshold, min_normal_images
from dpdiff.utils.errors import DataError
from dpdiff.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

__all__ = [
    "Thresholds",
    "Calibration",
    "CALIBRATION_VERSION",
    "METHODS",
    "min_normal_images",
    "fpr_threshold",
    "f1_threshold",
    "fpr_thresholds",
    "f1_thresholds",
    "DEFAULT_PIXEL_FPR",
    "scoring_fingerprint",
    "read_calibration",
    "write_calibration",
    "check_fpr",
    "hold_out_for_calibration",
]

CALIBRATION_VERSION = 1
#: Default false-alarm rate of the pixel threshold: the share of a normal image's map pixels above it (0.1 %,
#: about 65 pixels of a 256 x 256 map), far below the image rate so that a normal image is not painted.
DEFAULT_PIXEL_FPR = 0.001
#: ``fpr``: quantile of normal scores at a target false-alarm rate; ``f1``: F1-optimal on labelled images.
METHODS = ("fpr", "f1")


@dataclass(frozen=True)
class Thresholds:
    """The thresholds of one scope (global, or one category).

    ``image``: an image is anomalous when its score is above it; ``pixel``: a pixel of the anomaly map is in
    the defect mask when above it (None: no pixel threshold, e.g. F1 without masks); ``method``: one of
    :data:`METHODS`; ``target_fpr``: the false-alarm rate asked for (``fpr``); ``num_images``: images it was
    set on; ``details``: what else the method reports (expected rate, F1, ...)."""

    image: float
    pixel: float | None
    method: str
    num_images: int
    target_fpr: float | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "image_threshold": self.image,
            "pixel_threshold": self.pixel,
            "method": self.method,
            "num_images": self.num_images,
            "target_fpr": self.target_fpr,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> Thresholds:
        try:
            pixel = d.get("pixel_threshold")
            out = cls(
                image=float(d["image_threshold"]),
                pixel=None if pixel is None else float(pixel),
                method=str(d.get("method", "fpr")),
                num_images=int(d.get("num_images", 0)),
                target_fpr=None if d.get("target_fpr") is None else float(d["target_fpr"]),
                details=dict(d.get("details") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where}: not a valid threshold entry ({e}); recalibrate with `dpdiff calibrate`") from e
        _check_positive(out.image, f"{where}: image_threshold")
        if out.pixel is not None:
            _check_positive(out.pixel, f"{where}: pixel_threshold")
        return out


@dataclass
class Calibration:
    """Global thresholds (``overall``, None until calibrated) and per-category ones, with the fingerprint of
    the model and scoring settings they were set for (:func:`scoring_fingerprint`)."""

    fingerprint: dict
    overall: Thresholds | None = None
    per_category: dict[str, Thresholds] = field(default_factory=dict)
    created: str = ""

    def thresholds(self, category: str | None = None) -> Thresholds | None:
        """The thresholds for ``category`` when calibrated for it, else the global ones (None: uncalibrated)."""
        if category is not None and category in self.per_category:
            return self.per_category[category]
        return self.overall

    def with_thresholds(self, thresholds: Thresholds, category: str | None = None) -> Calibration:
        """A copy with ``thresholds`` as the global ones (``category=None``) or those of ``category``."""
        per = dict(self.per_category)
        overall = self.overall
        if category is None:
            overall = thresholds
        else:
            per[str(category)] = thresholds
        return Calibration(dict(self.fingerprint), overall, per, _now())

    def to_dict(self) -> dict:
        return {
            "version": CALIBRATION_VERSION,
            "created": self.created or _now(),
            "decision": "anomalous when score > threshold; normalized_score = score / threshold",
            "fingerprint": self.fingerprint,
            "global": None if self.overall is None else self.overall.to_dict(),
            "per_category": {k: v.to_dict() for k, v in sorted(self.per_category.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "calibration") -> Calibration:
        if not isinstance(d, Mapping) or "fingerprint" not in d:
            raise DataError(f"{where}: not a dpdiff calibration (no fingerprint); recalibrate with `dpdiff calibrate`")
        if int(d.get("version", 0)) > CALIBRATION_VERSION:
            raise DataError(f"{where}: written by a newer dpdiff (version {d.get('version')}); upgrade dpdiff")
        overall = d.get("global")
        per = d.get("per_category") or {}
        return cls(
            dict(d["fingerprint"]),
            None if overall is None else Thresholds.from_dict(overall, f"{where} [global]"),
            {str(k): Thresholds.from_dict(v, f"{where} [{k}]") for k, v in per.items()},
            str(d.get("created", "")),
        )

    def matches(self, fingerprint: Mapping[str, Any]) -> bool:
        return _canonical(self.fingerprint) == _canonical(fingerprint)


# ---------------------------------------------------------------------------------------------- thresholds
def _check_positive(value: float, what: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise DataError(
            f"{what} is {value!r}: thresholds must be finite and positive (anomaly scores are squared "
            f"errors); recalibrate on other images"
        )


def fpr_thresholds(
    image_scores: np.ndarray, maps: np.ndarray, target_fpr: float, pixel_fpr: float = DEFAULT_PIXEL_FPR
) -> Thresholds:
    """:class:`Thresholds` from the image scores (N,) and anomaly maps (N, R, R) of normal images: image
    threshold at ``target_fpr`` over the N scores, pixel threshold at ``pixel_fpr`` over all N*R*R map pixels
    (its own rate: at the image rate, e.g. 5 %, a normal image would show 5 % of its pixels as defect)."""
    n = int(np.asarray(image_scores).size)
    image, image_rate = fpr_threshold(image_scores, target_fpr, "normal images")
    pixels = np.asarray(maps, dtype=np.float32).reshape(-1)
    pixel, pixel_rate = fpr_threshold(pixels, check_fpr(pixel_fpr), "normal map pixels")
    _check_positive(image, "the image threshold")
    _check_positive(pixel, "the pixel threshold")
    return Thresholds(
        image,
        pixel,
        "fpr",
        n,
        float(target_fpr),
        {
            "expected_image_fpr": image_rate,
            "target_pixel_fpr": float(pixel_fpr),
            "expected_pixel_fpr": pixel_rate,
            "num_pixels": int(pixels.size),
        },
    )


def f1_thresholds(
    image_scores: np.ndarray, labels: np.ndarray, maps: np.ndarray | None = None, masks: np.ndarray | None = None
) -> Thresholds:
    """F1-optimal :class:`Thresholds` from labelled images: scores (N,), labels (N,) 1 = defective, and
    optionally maps and ground-truth masks (N, R, R) for the pixel threshold (None without masks)."""
    image, image_f1 = f1_threshold(image_scores, labels, "labelled images")
    _check_positive(image, "the F1 image threshold")
    details: dict[str, Any] = {"image_f1": image_f1, "num_anomalous": int(np.asarray(labels).astype(bool).sum())}
    pixel = None
    if maps is not None and masks is not None and np.asarray(masks).any():
        pixel, pixel_f1 = f1_threshold(np.asarray(maps, np.float32), np.asarray(masks, bool), "labelled map pixels")
        _check_positive(pixel, "the F1 pixel threshold")
        details["pixel_f1"] = pixel_f1
    return Thresholds(image, pixel, "f1", int(np.asarray(image_scores).size), None, details)


# ---------------------------------------------------------------------------------------------- fingerprint and files
def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def scoring_fingerprint(state: Mapping[str, Any], settings: Mapping[str, Any]) -> dict:
    """What the scores depend on: a SHA-256 over the model's weights (``state``: a ``state_dict``, names in
    sorted order with dtype, shape and bytes) and the scoring ``settings`` (inference options, map size,
    backbone), so thresholds are never applied to scores of another model or other settings."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        a = np.ascontiguousarray(t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t))
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return {"weights_sha256": h.hexdigest(), "settings": json.loads(_canonical(dict(settings)))}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def read_calibration(path: str | Path, fingerprint: Mapping[str, Any] | None = None) -> Calibration | None:
    """The calibration in ``path``; None when there is no such file, or (with a warning) when its fingerprint
    differs from ``fingerprint`` (the model or the scoring settings changed since). A corrupt file is a
    DataError naming it."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(
            f"{path}: unreadable calibration ({e}); delete it or recalibrate with `dpdiff calibrate`"
        ) from e
    cal = Calibration.from_dict(d, str(path))
    if fingerprint is not None and not cal.matches(fingerprint):
        logger.warning(
            "%s was made for other model weights or scoring settings; ignoring it (recalibrate with "
            "`dpdiff calibrate`)",
            path,
        )
        return None
    return cal


def write_calibration(path: str | Path, calibration: Calibration) -> Path:
    """Write ``calibration`` to ``path`` atomically (a crash leaves the old file or the new one)."""
    return atomic_write_json(path, calibration.to_dict())
