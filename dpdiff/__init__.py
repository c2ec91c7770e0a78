"""DPDiff-AD: dual prototype-conditioned diffusion for multi-class unsupervised anomaly detection.

The Python API (docs/guides/python-api.md)::

    import dpdiff
    detector = dpdiff.fit("path/to/mvtec", config="lite0_cpu", output="runs/mvtec")   # or:
    detector = dpdiff.Detector.load("runs/mvtec")            # a run folder, or a model.onnx from `dpdiff export`
    detector.calibrate("path/to/held_out_normal_images", target_fpr=0.01)           # -> RUN/calibration.json
    for p in detector.predict(["part1.png", "part2.png"]):
        print(p.image, p.score, p.normalized_score, p.is_anomalous, p.mask.sum())

* :func:`load_config`: a packaged preset by name (``"lite0_cpu"``) or a YAML path, with overrides;
* :func:`fit`: train one unified model on a dataset folder and return its :class:`Detector`;
* :class:`Detector`: ``load``, ``predict`` -> list of :class:`Prediction`, ``calibrate`` -> :class:`Thresholds`
  (the contract is in :mod:`dpdiff.inference.predictor`);
* :class:`OnnxDetector`: the same interface on an exported ``.onnx`` with onnxruntime (``Detector.load``
  returns one for a ``.onnx`` path).

Names are imported on first use, so ``import dpdiff`` stays light.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.3.0"

__all__ = [
    "__version__",
    "load_config",
    "fit",
    "Detector",
    "OnnxDetector",
    "Prediction",
    "Thresholds",
    "Config",
    "DpdiffError",
]

#: public name -> the module that defines it
_EXPORTS = {
    "load_config": "dpdiff.config",
    "Config": "dpdiff.config",
    "Detector": "dpdiff.inference.predictor",
    "OnnxDetector": "dpdiff.inference.onnx_runtime",
    "Prediction": "dpdiff.inference.predictor",
    "Thresholds": "dpdiff.inference.calibration",
    "DpdiffError": "dpdiff.utils.errors",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from dpdiff.config import Config, load_config
    from dpdiff.inference.calibration import Thresholds
    from dpdiff.inference.onnx_runtime import OnnxDetector
    from dpdiff.inference.predictor import Detector, Prediction
    from dpdiff.utils.errors import DpdiffError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dpdiff' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def fit(
    data: str | os.PathLike,
    config: Any = "lite0_cpu",
    *,
    output: str | os.PathLike,
    format: str = "auto",
    categories: list[str] | None = None,
    device: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    **overrides: Any,
) -> Detector:
    """Train one unified model on the normal training images of every category under ``data`` and return its
    :class:`Detector` (as ``dpdiff train`` + ``Detector.load``).

    ``config``: a preset name, a YAML path or a :class:`~dpdiff.config.Config`; ``output``: the run folder
    (an existing run is refused unless ``overwrite`` or ``resume``); ``format``: the dataset layout
    (``"auto"`` detects it; see docs/datasets.md); ``categories``: a subset (default all); ``device``:
    ``"auto"``/``"cpu"``/``"cuda"``; ``overrides``: config values as ``train__steps=500`` (``__`` for the
    dot). With ``train__calibration_fraction=0.2`` a fifth of the normal images is held out and the returned
    detector is already calibrated (``calibration.json`` in ``output``)."""
    from dpdiff.config import Config, load_config
    from dpdiff.inference.detector import Detector
    from dpdiff.workflows.train import train

    dotted = {k.replace("__", "."): v for k, v in overrides.items()}
    dotted |= {"data.root": os.fspath(data), "data.format": format}
    if categories is not None:
        dotted["data.categories"] = list(categories)
    if device is not None:
        dotted["train.device"] = device
    cfg = config.override(dotted) if isinstance(config, Config) else load_config(config, dotted)
    run = train(cfg, Path(output), overwrite=overwrite, resume=resume)
    return Detector.load(run, device=device or "auto")
