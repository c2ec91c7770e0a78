"""Run a ``dpdiff export`` model with onnxruntime: :class:`OnnxDetector`, the same ``predict``/``calibrate`` as
the PyTorch :class:`~dpdiff.inference.detector.Detector` (the shared :class:`~dpdiff.inference.predictor.Predictor`
pipeline; this runtime only runs preprocessed batches in the session).

The images are preprocessed exactly as for PyTorch (:class:`~dpdiff.inference.predictor.Preprocessing`, numpy and
Pillow, with the size, mean and std from the model's metadata); the graph does the rest. Nothing here imports
torch: an edge box needs onnxruntime and the light packages that docs/guides/export-and-serve.md ("An edge box
without torch") lists.
Thresholds come from the model's metadata (the run's ``calibration.json`` at export time) or, when
present and made for the same weights and settings, from ``<model>.calibration.json`` beside the model,
where :meth:`OnnxDetector.calibrate` saves. Thresholds are interchangeable with the run folder's: both
carry the same fingerprint.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from dpdiff.config import Config
from dpdiff.data.geometry import ImageGeometry
from dpdiff.inference.calibration import Calibration, read_calibration
from dpdiff.inference.predictor import Detector, Preprocessing
from dpdiff.utils.errors import CheckpointError, ConfigError, MissingDependencyError, UsageError
from dpdiff.utils.sizes import as_hw

logger = logging.getLogger(__name__)

__all__ = ["OnnxDetector", "make_session", "read_metadata", "sidecar_calibration_path"]

_PREFIX = "dpdiff."
_REQUIRED = ("preprocess", "config", "map_size", "fingerprint")


def _ort():
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - pinned in requirements.txt
        raise MissingDependencyError("running a .onnx model needs onnxruntime: pip install -r requirements.txt") from e
    return onnxruntime


def _default_threads() -> int:
    """torch's thread count when torch is loaded (both runtimes then use the same CPU share), else 0
    (onnxruntime's own default: one thread per physical core). torch is never imported here."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else 0


def make_session(model: bytes | str | os.PathLike, device: str = "auto", threads: int | None = None):
    """An onnxruntime ``InferenceSession`` of a model file or its bytes: CUDA when asked for (or "auto") and
    available, else CPU; ``threads`` intra-op threads (default: :func:`_default_threads`)."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads if threads is not None else _default_threads())
    opts.inter_op_num_threads = 1
    available = ort.get_available_providers()
    providers = ["CPUExecutionProvider"]
    if str(device).startswith(("cuda", "auto")) and "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    elif str(device).startswith("cuda"):
        raise CheckpointError(
            f"device {device!r}: this onnxruntime has no CUDA provider ({', '.join(available)}); "
            f"install onnxruntime-gpu or use device='cpu'"
        )
    src = bytes(model) if isinstance(model, (bytes, bytearray)) else os.fspath(model)
    try:
        return ort.InferenceSession(src, sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types on a bad file
        where = "the exported model" if isinstance(model, (bytes, bytearray)) else str(model)
        raise CheckpointError(f"{where}: onnxruntime cannot load it ({e})") from e


def read_metadata(session, where: str) -> dict[str, str]:
    """The ``dpdiff.*`` metadata of a session's model (prefix removed); CheckpointError when it is not a dpdiff
    export."""
    props = session.get_modelmeta().custom_metadata_map or {}
    meta = {k[len(_PREFIX) :]: v for k, v in props.items() if k.startswith(_PREFIX)}
    return check_metadata(meta, where)


def check_metadata(meta: dict[str, str], where: str) -> dict[str, str]:
    """``meta`` when it holds what a dpdiff export carries; CheckpointError naming what is missing otherwise."""
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(
            f"{where}: not a dpdiff export (metadata {', '.join(_PREFIX + k for k in missing)} "
            f"missing); export it with `dpdiff export RUN --format onnx`"
        )
    return meta


def sidecar_calibration_path(model_path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.calibration.json`` (where :meth:`OnnxDetector.calibrate` saves)."""
    p = Path(model_path)
    return p.with_name(p.stem + ".calibration.json")


class OnnxDetector(Detector):
    """An exported pipeline in onnxruntime with the :class:`~dpdiff.inference.predictor.Predictor` interface."""

    def __init__(self, session, metadata: dict[str, str], path: Path | None = None):
        where = str(path) if path else "model"
        self.session, self.path = session, path
        self.metadata = metadata
        try:
            self.cfg = Config.from_dict(json.loads(metadata["config"]), source=f"{where} metadata")
            pre = json.loads(metadata["preprocess"])
            # the geometry (region of interest, letterbox) where the export recorded it; exports made before
            # it existed resized the whole image directly to image_size
            geometry = ImageGeometry.from_dict(pre["geometry"]) if "geometry" in pre else None
            self._map_size = as_hw(json.loads(metadata["map_size"]))
            if geometry is None:
                geometry = ImageGeometry(as_hw(pre["image_size"]), map_size=self._map_size)
            self._preprocessing = Preprocessing(geometry, tuple(pre["mean"]), tuple(pre["std"]))
            self._fingerprint = json.loads(metadata["fingerprint"])
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise CheckpointError(f"{where}: unreadable dpdiff metadata ({e}); export the run again") from e
        cal = metadata.get("calibration") or ""
        self.calibration = Calibration.from_dict(json.loads(cal), f"{where} metadata") if cal else None
        self.input_name = session.get_inputs()[0].name

    @classmethod
    def load(
        cls, path: str | os.PathLike, weights: str | None = None, device: str = "auto", threads: int | None = None
    ) -> OnnxDetector:
        """Load ``path`` (a ``dpdiff export`` file); thresholds from ``<model>.calibration.json`` when it exists
        and matches, else from the metadata. ``weights`` (a backbone checkpoint) does not apply: the backbone is
        in the graph."""
        if weights is not None:
            raise UsageError(f"{path}: an exported model holds its backbone; --weights applies to run folders only")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        session = make_session(path, device, threads)
        detector = cls(session, read_metadata(session, str(path)), path)
        detector.calibration_path = sidecar_calibration_path(path)
        side = read_calibration(detector.calibration_path, detector.fingerprint())
        if side is not None:
            detector.calibration = side
        return detector

    @property
    def map_size(self) -> tuple[int, int]:
        """(Hm, Wm) of the model's maps (from its metadata)."""
        return self._map_size

    def fingerprint(self) -> dict:
        return self._fingerprint

    @property
    def preprocessing(self) -> Preprocessing:
        """The input size, mean and std of the model's metadata."""
        return self._preprocessing

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(maps (B, Hm, Wm), scores (B,)) of a normalised batch (:meth:`preprocess`)."""
        maps, scores = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return maps, scores

    def _run_batches(self, batches: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in batches:  # the graph holds its noise: every batch alike
            maps, scores = self.run(batch)
            yield np.asarray(maps, dtype=np.float32), np.asarray(scores, dtype=np.float32)
