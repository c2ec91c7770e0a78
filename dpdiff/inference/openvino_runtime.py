"""Run a ``dpdiff export --format openvino`` model (OpenVINO IR, ``model.xml`` + ``model.bin``) with OpenVINO:
:class:`OpenVinoDetector`, the same ``predict``/``calibrate`` as the other runtimes.

The IR is the ONNX export converted by OpenVINO (weights kept in float32); its ``dpdiff.*`` metadata (thresholds,
preprocessing, fingerprint) travels in the model's ``framework`` runtime info, so everything but the engine is
:class:`~dpdiff.inference.onnx_runtime.OnnxDetector`'s. Measured on this project's CPU
(``benchmarks/openvino_speed.py``): 1.18x onnxruntime's images/s on the float32 graph at one thread. Nothing here
imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from dpdiff.inference.calibration import read_calibration
from dpdiff.inference.onnx_runtime import _PREFIX, OnnxDetector, check_metadata, sidecar_calibration_path
from dpdiff.utils.errors import CheckpointError, MissingDependencyError, UsageError

__all__ = ["OpenVinoDetector", "openvino_metadata"]


def _ov():
    try:
        import openvino
    except ImportError as e:
        raise MissingDependencyError(
            "the OpenVINO runtime needs the openvino package: pip install openvino (or use the .onnx export)"
        ) from e
    return openvino


def openvino_metadata(model, where: str) -> dict[str, str]:
    """The ``dpdiff.*`` metadata of an OpenVINO model read from a dpdiff export (prefix removed)."""
    info = model.get_rt_info()
    framework = info["framework"] if "framework" in info else {}
    if not isinstance(framework, dict):
        framework = framework.astype(dict)
    meta = {k[len(_PREFIX) :]: _text(v) for k, v in framework.items() if k.startswith(_PREFIX)}
    return check_metadata(meta, where)


def _text(value) -> str:
    """A runtime-info value as text (OpenVINO wraps them in ``OVAny``)."""
    return value.astype(str) if hasattr(value, "astype") else str(value)


class _CompiledModelSession:
    """An OpenVINO compiled model behind the two calls :class:`OnnxDetector` makes of an onnxruntime session."""

    def __init__(self, compiled):
        self.compiled = compiled

    def get_providers(self) -> list[str]:
        return ["OpenVINO CPU"]

    def get_inputs(self) -> list:
        return [SimpleNamespace(name=self.compiled.inputs[0].any_name)]

    def run(self, _output_names, feeds: dict) -> list:
        result = self.compiled(list(feeds.values()))
        return [result[output] for output in self.compiled.outputs]


class OpenVinoDetector(OnnxDetector):
    """A ``dpdiff export --format openvino`` model run by OpenVINO on the CPU."""

    @classmethod
    def load(
        cls, path: str | os.PathLike, weights: str | None = None, device: str = "auto", threads: int | None = None
    ) -> OpenVinoDetector:
        """Load ``path`` (``model.xml`` beside its ``model.bin``); thresholds as for :class:`OnnxDetector`
        (``<model>.calibration.json`` beside it when it matches, else the metadata)."""
        if weights is not None:
            raise UsageError(f"{path}: an exported model holds its backbone; --weights applies to run folders only")
        if str(device).startswith("cuda"):
            raise UsageError(f"{path}: the OpenVINO runtime runs on the CPU; use the .onnx export for CUDA")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"OpenVINO model not found: {path}")
        ov = _ov()
        core = ov.Core()
        if threads is not None:
            core.set_property("CPU", {"INFERENCE_NUM_THREADS": int(threads)})
        try:
            model = core.read_model(str(path))
            compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        except RuntimeError as e:
            raise CheckpointError(f"{path}: OpenVINO cannot load it ({e})") from e
        detector = cls(_CompiledModelSession(compiled), openvino_metadata(model, str(path)), path)
        detector.calibration_path = sidecar_calibration_path(path)
        side = read_calibration(detector.calibration_path, detector.fingerprint())
        if side is not None:
            detector.calibration = side
        return detector


def convert_to_openvino(onnx_path: Path, output: Path) -> Path:
    """Convert a dpdiff ONNX export to OpenVINO IR at ``output`` (``.xml`` + ``.bin``), float32 weights kept (the
    default FP16 compression would change the scores); the metadata goes along in the runtime info."""
    ov = _ov()
    model = ov.Core().read_model(str(onnx_path))
    ov.save_model(model, str(output), compress_to_fp16=False)
    return output


def export_openvino(
    detector, output: str | os.PathLike, overwrite: bool = False, verify: bool = True, quantize: str | None = None
) -> dict:
    """``dpdiff export --format openvino``: ``detector``'s pipeline as OpenVINO IR at ``output`` (a ``.xml``; its
    ``.bin`` beside it), through the ONNX export (:func:`~dpdiff.inference.export.export_onnx`, whose summary is
    returned with this file and size). Both files are written in a temporary folder and moved into place, the
    ``.bin`` first."""
    import tempfile

    from dpdiff.inference.export import export_onnx  # torch: only on the exporting machine

    output = Path(output)
    if output.suffix.lower() != ".xml":
        raise UsageError(f"--output {output}: an OpenVINO model is a .xml file (its weights go to the .bin beside it)")
    weights_file = output.with_suffix(".bin")
    if (output.exists() or weights_file.exists()) and not overwrite:
        raise UsageError(f"{output} (or its .bin) exists; pass --overwrite or choose another --output")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".openvino-") as tmp:
        summary = export_onnx(detector, Path(tmp) / "model.onnx", verify=verify, quantize=quantize)
        ir = convert_to_openvino(Path(tmp) / "model.onnx", Path(tmp) / "model.xml")
        os.replace(ir.with_suffix(".bin"), weights_file)
        os.replace(ir, output)
    summary.update(file=str(output), bytes=output.stat().st_size + weights_file.stat().st_size, format="openvino")
    return summary
