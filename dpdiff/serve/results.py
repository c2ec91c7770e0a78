"""One prediction as the JSON the service answers: scores, decision, thresholds and, on request, PNGs.

* ``overlay_png`` (``overlay=1``): :func:`dpdiff.viz.overlay.compose_overlay` of the image (scaled to at most
  :data:`OVERLAY_MAX_SIDE` pixels on its long side), its anomaly map and the predicted mask's contour in red:
  the image, the image with the contour, the heat map with the contour. With thresholds the colour scale is
  fixed (0 to twice the pixel threshold, so the threshold sits in the middle and overlays of different images
  compare); without, each map is scaled to its own range.
* ``mask_png`` (``mask=1``): the predicted defect mask at the image's own size, 8-bit grey (255 = anomalous);
  null when the model is not calibrated (no pixel threshold).

Both are base64-encoded PNG bytes.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from dpdiff.viz.overlay import compose_overlay

__all__ = ["OVERLAY_MAX_SIDE", "decision", "overlay_png", "mask_png", "prediction_json"]

#: Long side (pixels) of each panel of the overlay image.
OVERLAY_MAX_SIDE = 384


def _png_b64(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=3)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _opt_float(value) -> float | None:
    return None if value is None else float(value)


def decision(is_anomalous) -> str:
    """ "anomalous", "normal", or "uncalibrated" (no image threshold, so no decision)."""
    if is_anomalous is None:
        return "uncalibrated"
    return "anomalous" if bool(is_anomalous) else "normal"


def _display_image(image: Image.Image) -> np.ndarray:
    """The image as one overlay panel: long side at most OVERLAY_MAX_SIDE, small images enlarged by a whole
    factor (nearest neighbour, pixels stay sharp) to at least half of it."""
    im = image.convert("RGB")
    long_side = max(im.size)
    if long_side > OVERLAY_MAX_SIDE:
        scale = OVERLAY_MAX_SIDE / long_side
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BILINEAR)
    elif long_side < OVERLAY_MAX_SIDE // 2:
        factor = (OVERLAY_MAX_SIDE // 2 + long_side - 1) // long_side
        im = im.resize((im.width * factor, im.height * factor), Image.Resampling.NEAREST)
    return np.asarray(im)


def overlay_png(
    image: Image.Image, anomaly_map: np.ndarray, mask: np.ndarray | None, pixel_threshold: float | None
) -> str:
    """Base64 PNG of the overlay panels (module docstring)."""
    vmin = vmax = None
    if pixel_threshold is not None and float(pixel_threshold) > 0:
        vmin, vmax = 0.0, 2.0 * float(pixel_threshold)
    return _png_b64(compose_overlay(_display_image(image), anomaly_map, mask=mask, vmin=vmin, vmax=vmax))


def mask_png(mask: np.ndarray | None) -> str | None:
    """Base64 PNG of a boolean mask (255 = anomalous), or None."""
    if mask is None:
        return None
    return _png_b64(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8))


def prediction_json(
    prediction, image: Image.Image, name: str, *, with_overlay: bool = False, with_mask: bool = False
) -> dict[str, Any]:
    """The JSON of one :class:`~dpdiff.Prediction` of ``image`` (``name``: its file name, or "")."""
    out = {
        "name": name,
        "width": int(image.width),
        "height": int(image.height),
        "category": prediction.category,
        "score": float(prediction.score),
        "normalized_score": _opt_float(prediction.normalized_score),
        "is_anomalous": None if prediction.is_anomalous is None else bool(prediction.is_anomalous),
        "decision": decision(prediction.is_anomalous),
        "thresholds": {
            "image": _opt_float(prediction.image_threshold),
            "pixel": _opt_float(prediction.pixel_threshold),
        },
    }
    roi = getattr(prediction, "roi", None)
    if roi is not None:  # data.roi: the map is 0 outside this box
        out["roi"] = [int(v) for v in roi]
    if with_overlay:
        out["overlay_png"] = overlay_png(image, prediction.anomaly_map, prediction.mask, prediction.pixel_threshold)
    if with_mask:
        out["mask_png"] = mask_png(prediction.mask)
    return out
