"""The allowed values of every enumerated setting, each list written once.

The configuration (:mod:`dpdiff.config`: validation, ``docs/configuration.md``), the command line and the
modules that implement a choice all read the tuples here. This module sits at the bottom of the package (beside
``dpdiff.config`` and ``dpdiff.utils``) and imports nothing, so every layer may use it.

A module that keeps a registry of implementations (a dict from name to class or reader) calls
:func:`check_registry` when it is imported: a name added to the registry but not here (or the reverse) fails
at import time, not in a test run much later. Where the implementation only needs the names, it imports the
tuple itself.

Order matters: it is the order error messages and the docs list the values in.
"""

from __future__ import annotations

from collections.abc import Iterable

#: ``model.denoiser``: the network of Eq. (18); registry model/denoisers.py ``DENOISERS``.
DENOISER_NAMES = ("dit", "unet", "uvit")
#: ``model.prediction``: what the network is trained to output (model/dpdiff_ad.py ``DPDiffAD.predict_noise``).
PREDICTION_TARGETS = ("eps", "v", "x0")
#: ``train.logger``: training curves beside loss_history.csv (training/loggers.py ``LOGGERS``).
LOGGERS = ("none", "tensorboard")
#: ``train.lr_schedule`` (training/trainer.py ``lr_factor``).
LR_SCHEDULES = ("constant", "cosine")
#: ``inference.ensemble_reduce`` (scoring/scorer.py ``Scorer.token_scores``).
ENSEMBLE_REDUCTIONS = ("mean_error", "error_of_mean")
#: ``inference.scoring``: Eq. (22) reconstruction error, or prototype similarity (Table 5 rows 1-2); scoring/scorer.py.
SCORING_MODES = ("reconstruction", "prototype")
#: ``inference.image_score``: the image score rule (model/postprocess.py ``postprocess``).
IMAGE_SCORE_RULES = ("pooled_max", "top_percent_mean")
#: ``evaluation.mask_resize``: resampling of a mask before thresholding (data/images.py).
MASK_RESIZE_MODES = ("nearest", "bilinear")
#: ``data.resize``: how an image becomes the model input's H x W (data/geometry.py ``ImageGeometry``).
RESIZE_MODES = ("stretch", "keep_aspect")
#: ``data.format`` value that detects the layout from the folder.
AUTO_FORMAT = "auto"
#: The dataset readers; registry ``dpdiff.data.FORMATS`` (its order differs: this is the config's message order).
DATA_FORMATS = ("mvtec", "mpdd", "visa", "realiad", "realiad_variety", "btad", "generic")
#: ``data.format`` (and the command line's ``--format`` of a dataset): a reader or :data:`AUTO_FORMAT`.
FORMAT_CHOICES = (*DATA_FORMATS, AUTO_FORMAT)
#: ``dpdiff export --format``.
EXPORT_FORMATS = ("onnx", "openvino")
#: ``dpdiff export --quantize`` (inference/export.py).
QUANTIZE_CHOICES = ("int8",)


def check_registry(what: str, names: Iterable[str], allowed: tuple[str, ...]) -> None:
    """Raise ``RuntimeError`` unless the registry ``what`` holds exactly the names ``allowed`` (a tuple of this
    module); called by a registry's module when it is imported."""
    names = tuple(names)
    if len(names) != len(allowed) or set(names) != set(allowed):
        missing = [n for n in allowed if n not in names]
        extra = [n for n in names if n not in allowed]
        raise RuntimeError(
            f"{what}: the registry's names {list(names)} differ from dpdiff/choices.py {list(allowed)} "
            f"(missing: {missing}, not listed: {extra}); add or remove the name in both places"
        )


__all__ = [
    "DENOISER_NAMES",
    "PREDICTION_TARGETS",
    "LOGGERS",
    "LR_SCHEDULES",
    "ENSEMBLE_REDUCTIONS",
    "SCORING_MODES",
    "IMAGE_SCORE_RULES",
    "MASK_RESIZE_MODES",
    "RESIZE_MODES",
    "AUTO_FORMAT",
    "DATA_FORMATS",
    "FORMAT_CHOICES",
    "EXPORT_FORMATS",
    "QUANTIZE_CHOICES",
    "check_registry",
]
