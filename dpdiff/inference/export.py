"""``dpdiff export``: the whole scoring pipeline as one ONNX graph that scores like PyTorch.

The graph maps a preprocessed image batch ``images`` (B, 3, H, W) (8-bit RGB, the region of interest cut out,
PIL-bicubic resized or letterboxed to H x W by :class:`dpdiff.data.geometry.ImageGeometry`, ``(x / 255 - mean) /
std``; the geometry and the values are in the model's metadata) to ``maps`` (B, Hm, Wm) and ``scores`` (B,):
backbone, tokens, token standardisation, prototypes (Eq. 8-13), the fixed noise draws, the DDIM reconstruction
(Eq. 20-21), the reconstruction error (Eq. 22), upsampling, Gaussian smoothing and the image score (Eq. 23-24).
The batch size is dynamic, H x W fixed.

The noise: with ``inference.common_noise`` (the default) every image gets the same draws, from a generator
seeded with ``inference.seed`` (:class:`~dpdiff.scoring.noise.CommonNoise`), so a score depends on the image
alone. Those draws, (E, 1, N, C) for the tokens and (E, 1, P, C) for the prototypes (antithetic pairs
included), are made once here by that same source and stored in the graph as constants; the scoring itself is
the detector's :class:`~dpdiff.scoring.scorer.Scorer` unchanged (the ONE pipeline), traced with those constants
as its noise source (:class:`~dpdiff.scoring.noise.FixedNoise`, broadcast over the batch). A run scored with
``inference.common_noise=false`` cannot be exported (its scores depend on the batch).

The model's metadata (``metadata_props``) holds ``dpdiff.preprocess`` (size, mean, std, resampling),
``dpdiff.config`` (the run's configuration), ``dpdiff.fingerprint`` (what thresholds are valid for),
``dpdiff.calibration`` (the run's thresholds, when calibrated) and ``dpdiff.image_threshold`` /
``dpdiff.pixel_threshold``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dpdiff.choices import QUANTIZE_CHOICES
from dpdiff.features import tokens_from_maps
from dpdiff.inference.detector import Detector
from dpdiff.scoring.noise import FixedNoise
from dpdiff.scoring.scorer import Scorer
from dpdiff.utils.errors import ConfigError, MissingDependencyError, RunFolderError
from dpdiff.utils.io import atomic_write_bytes
from dpdiff.utils.sizes import as_hw, hw_json

logger = logging.getLogger(__name__)

__all__ = [
    "ScoringGraph",
    "export_onnx",
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "METADATA_PREFIX",
    "QUANTIZE_CHOICES",
]

#: The lowest opset the post-processing needs (reflect padding, CumSum, Resize) is 11; 17 has LayerNormalization.
DEFAULT_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = ("maps", "scores")
METADATA_PREFIX = "dpdiff."


def _need_onnx():
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - pinned in requirements.txt
        raise MissingDependencyError("ONNX export needs the onnx package: pip install -r requirements.txt") from e
    return onnx


class ScoringGraph(nn.Module):
    """(B, 3, H, W) normalised images -> (maps (B, Hm, Wm), scores (B,)): the detector's pipeline with its common
    noise draws as buffers ``noise_x`` (E, 1, N, C) and ``noise_p`` (E, 1, P, C) (empty with no prototypes)."""

    noise_x: torch.Tensor
    noise_p: torch.Tensor

    def __init__(self, detector: Detector):
        super().__init__()
        cfg, inf = detector.cfg, detector.cfg.inference
        if inf.scoring == "reconstruction" and not inf.common_noise:
            raise ConfigError(
                "export needs inference.common_noise=true (the default): with per-image noise a score "
                "depends on the batch the image came in, which a fixed graph cannot reproduce"
            )
        self.cfg = cfg
        h, w = as_hw(cfg.backbone.image_size)
        self.backbone = static_same_padding(detector.backbone, torch.zeros(1, 3, h, w))
        self.model = detector.model
        self.bank = detector.bank() if inf.knn_weight else None  # beyond the paper: inference.knn_weight
        self.image_gaussian = detector.image_gaussian() if inf.image_gaussian_weight else None  # beyond it too
        noise = self._common_noise()
        self.register_buffer("noise_x", noise.noise_x)
        self.register_buffer("noise_p", noise.noise_p)
        # one DiT call over all rows (a row loop would be traced for one batch size), float32, not compiled
        self.scorer = Scorer.from_config(self.model, cfg, bank=self.bank, image_gaussian=self.image_gaussian)

    def _common_noise(self) -> FixedNoise:
        model, inf = self.model, self.cfg.inference
        if inf.scoring != "reconstruction":
            return FixedNoise(torch.zeros(0), torch.zeros(0))
        n_tokens = model.grid_size[0] * model.grid_size[1]
        ensemble = max(1, int(inf.ensemble))
        return FixedNoise.common(int(inf.seed), n_tokens, model.num_prototypes, model.in_dim, ensemble, inf.antithetic)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = tokens_from_maps(self.backbone(images).float())
        return self.scorer.score_tokens(tokens, FixedNoise(self.noise_x, self.noise_p))


class _StaticSamePadConv(nn.Module):
    """timm's ``Conv2dSame`` (TensorFlow "SAME" padding computed from the input size at every call) with the
    padding of the one input size the graph sees precomputed: the same zeros, then the same convolution."""

    def __init__(self, conv: nn.Conv2d, pad: list[int]):
        super().__init__()
        self.conv, self.pad = conv, tuple(int(p) for p in pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return F.conv2d(F.pad(x, self.pad), c.weight, c.bias, c.stride, 0, c.dilation, c.groups)


def static_same_padding(backbone: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``backbone`` whose dynamic "SAME"-padding convolutions (timm ``Conv2dSame``, in the
    ``tf_efficientnet_lite*`` backbones) pad by constants: traced, their padding arithmetic on the input size
    would become graph ops, and the spatial sizes downstream unknown (the ONNX export of the adaptive pooling
    that brings the stages to one grid needs them). ``example`` (1, 3, H, W) fixes the input size; the
    original is left as it is."""
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import pad_same_arg

    copy = deepcopy(backbone).eval()
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def hook(module, args) -> None:
            sizes.setdefault(name, tuple(args[0].shape[-2:]))

        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in copy.named_modules() if isinstance(m, Conv2dSame)]
    with torch.no_grad():
        copy(example)
    for h in hooks:
        h.remove()
    for name, size in sizes.items():
        parent_name, _, attr = name.rpartition(".")
        parent = copy.get_submodule(parent_name) if parent_name else copy
        conv = getattr(parent, attr)
        setattr(
            parent,
            attr,
            _StaticSamePadConv(conv, pad_same_arg(list(size), conv.weight.shape[-2:], conv.stride, conv.dilation)),
        )
    return copy


def _dpdiff_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dpdiff")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree without installing
        return "unknown"


def _metadata(detector: Detector) -> dict[str, str]:
    cfg = detector.cfg
    t = detector.thresholds()
    mean, std = cast(Sequence[float], detector.backbone.mean), cast(Sequence[float], detector.backbone.std)
    geometry = detector.geometry
    preprocess = {
        "image_size": hw_json(geometry.size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "color": "8-bit RGB",
        "resize": "PIL bicubic, " + geometry.describe().removeprefix("images: "),
        "normalize": "(x / 255 - mean) / std per channel, NCHW float32",
        "geometry": geometry.to_dict(),  # dpdiff.data.geometry.ImageGeometry.from_dict
    }
    meta = {
        "version": _dpdiff_version(),
        "preprocess": json.dumps(preprocess),
        "config": json.dumps(cfg.to_dict()),
        "map_size": json.dumps(hw_json(detector.map_size)),
        "fingerprint": json.dumps(detector.fingerprint()),
        "calibration": json.dumps(detector.calibration.to_dict()) if detector.calibration is not None else "",
        "image_threshold": "" if t is None else repr(float(t.image)),
        "pixel_threshold": "" if t is None or t.pixel is None else repr(float(t.pixel)),
        "outputs": "maps (B, Hm, Wm) float32 anomaly maps (on the input frame: map_size); scores (B,) float32 "
        "image scores; anomalous when score > image_threshold"
        + (
            "; tiled (preprocess.geometry.tiling): the batch is a batch of tiles, the predictor cuts the image "
            "into tiles and stitches their maps (dpdiff.data.geometry); the image score is the image_score rule on "
            "the stitched map"
            if geometry.tiling is not None
            else ""
        ),
    }
    return {METADATA_PREFIX + k: v for k, v in meta.items()}


#: ``quantize`` choices of :func:`export_onnx`: onnxruntime dynamic quantisation of the matrix products.


def export_onnx(
    detector: Detector,
    output: str | Path,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    verify: bool = True,
    quantize: str | None = None,
) -> dict:
    """Write ``detector``'s pipeline as ONNX to ``output`` (atomically) and return a summary: the file, its
    size, the opset and, with ``verify``, the largest differences between onnxruntime and PyTorch on two
    random images (``max_abs_map_diff``, ``max_rel_score_diff``).

    The graph is traced with batch 2 by the TorchScript exporter (``dynamo=False``) with a dynamic batch
    axis; the thresholds and the preprocessing go into the metadata (module docstring). ``quantize="int8"``:
    onnxruntime's dynamic INT8 quantisation of the MatMul weights (the DiT's token-wise linear layers;
    activations quantised per batch at run time); the scores then differ from PyTorch's by the quantisation error
    (``verify`` reports it; ``benchmarks/export_speed.py`` measures speed and accuracy), the metadata records
    ``dpdiff.quantization``, carries no thresholds and a fingerprint of its own: calibrate the INT8 model itself.
    An option, not a default."""
    onnx = _need_onnx()
    output = Path(output)
    if output.exists() and not overwrite:
        raise RunFolderError(f"{output} exists; pass --overwrite or choose another --output")
    if int(opset) < DEFAULT_OPSET:
        raise ConfigError(f"opset must be >= {DEFAULT_OPSET}, got {opset}")
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"quantize must be one of {QUANTIZE_CHOICES} or None, got {quantize!r}")
    graph = ScoringGraph(detector).eval()
    h, w = detector.geometry.size
    example = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, h, w)).astype(np.float32))
    proto = onnx.load_from_string(_trace(graph, example, opset))
    for key, value in _metadata(detector).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "dpdiff", _dpdiff_version()
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if quantize is not None:
        data = _quantize_int8(data)
    summary = {
        "file": str(output),
        "bytes": len(data),
        "opset": int(opset),
        "input": INPUT_NAME,
        "outputs": list(OUTPUT_NAMES),
        "image_size": hw_json((h, w)),
        "map_size": hw_json(detector.map_size),
        "quantization": quantize or "none",
    }
    if verify:
        summary |= _verify(data, graph, example)
    atomic_write_bytes(output, data)
    logger.info("exported %s (%.1f MB)", output, len(data) / 1e6)
    return summary


def _trace(graph: ScoringGraph, example: torch.Tensor, opset: int) -> bytes:
    """The ONNX bytes of ``graph`` traced on ``example`` by the TorchScript exporter, batch axis dynamic."""
    buf = io.BytesIO()
    with torch.no_grad(), _quiet_tracer(), _constant_pads(opset):
        torch.onnx.export(
            graph,
            (example,),
            buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to a file object too
            dynamo=False,
            opset_version=int(opset),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            do_constant_folding=True,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"}, OUTPUT_NAMES[1]: {0: "batch"}},
        )
    return buf.getvalue()


def _quantize_int8(data: bytes) -> bytes:
    """``data`` with its MatMul weights quantised to INT8 (onnxruntime ``quantize_dynamic``), the dpdiff
    metadata kept and ``dpdiff.quantization`` added."""
    import tempfile

    onnx = _need_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import-untyped]

    src = onnx.load_from_string(data)
    with tempfile.TemporaryDirectory(prefix="dpdiff_quant_") as tmp:
        fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        onnx.save(_gemm_as_matmul(onnx.load_from_string(data)), str(fp32))
        quantize_dynamic(
            fp32,
            int8,
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # for what shape inference leaves untyped
        )
        out = onnx.load(str(int8))
    del out.metadata_props[:]
    for prop in src.metadata_props:
        entry = out.metadata_props.add()
        entry.key, entry.value = prop.key, _int8_metadata(prop.key, prop.value)
    entry = out.metadata_props.add()
    entry.key, entry.value = METADATA_PREFIX + "quantization", "int8 dynamic (MatMul weights)"
    out.producer_name, out.producer_version = "dpdiff", _dpdiff_version()
    return out.SerializeToString()


def _gemm_as_matmul(model):
    """Every ``Gemm(A, W, b)`` with ``transB=1`` (and alpha = beta = 1, what ``nn.Linear`` on (B, D) exports) as
    ``MatMul(A, W^T) + b`` with ``W^T`` stored: the quantiser rewrites Gemms itself and loses ``transB``."""
    onnx = _need_onnx()
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = inits.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) == 3 else None
        if (
            weight is None
            or attrs.get("transB", 0) != 1
            or attrs.get("transA", 0) != 0
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            nodes.append(node)
            continue
        name_t = f"{weight.name}__T"
        if name_t not in inits:
            inits[name_t] = numpy_helper.from_array(numpy_helper.to_array(weight).T.copy(), name_t)
            model.graph.initializer.append(inits[name_t])
        product = f"{node.output[0]}__matmul"
        nodes.append(helper.make_node("MatMul", [node.input[0], name_t], [product], name=f"{node.name}__matmul"))
        nodes.append(helper.make_node("Add", [product, node.input[2]], list(node.output), name=f"{node.name}__add"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def _int8_metadata(key: str, value: str) -> str:
    """The INT8 model's value of a metadata entry: its scores differ from the float model's, so thresholds made
    for the float model are left out and the fingerprint names the quantisation (a float calibration.json is
    then ignored for it): calibrate the INT8 model on its own."""
    name = key[len(METADATA_PREFIX) :]
    if name in ("calibration", "image_threshold", "pixel_threshold"):
        return ""
    if name == "fingerprint":
        return json.dumps(json.loads(value) | {"quantization": "int8"})
    return value


def _verify(data: bytes, graph: ScoringGraph, example: torch.Tensor) -> dict:
    """onnxruntime vs PyTorch on ``example`` (and on its first image alone: the batch axis is dynamic)."""
    from dpdiff.inference.onnx_runtime import make_session

    session = make_session(data)
    with torch.inference_mode():
        want_maps, want_scores = (t.numpy() for t in graph(example))
    got_maps, got_scores = session.run(None, {INPUT_NAME: example.numpy()})
    one_maps, one_scores = session.run(None, {INPUT_NAME: example[:1].numpy()})
    rel = np.abs(got_scores - want_scores) / np.maximum(np.abs(want_scores), 1e-12)
    return {
        "max_abs_map_diff": float(np.abs(got_maps - want_maps).max()),
        "max_rel_score_diff": float(rel.max()),
        "batch_independent": bool(np.allclose(one_scores, got_scores[:1], rtol=1e-5, atol=0)),
    }


_ONNX_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


@contextlib.contextmanager
def _constant_pads(opset: int):
    """Export ``F.pad`` with constant pad widths as an ONNX ``Pad`` whose ``pads`` input is one constant.

    The stock TorchScript symbolic builds ``pads`` from a chain of reshape/slice/transpose ops that the
    exporter's shape inference does not evaluate, so every spatial size after the first padded convolution
    becomes unknown and the backbone's adaptive pooling (which needs them) cannot be exported. The same
    numbers, written as a constant; pads that are not constants take the stock path."""
    from torch.onnx._internal.torchscript_exporter import symbolic_helper as sh  # torch is pinned
    from torch.onnx._internal.torchscript_exporter import symbolic_opset11 as stock

    def pad(g, input, pad, mode, value):
        widths = sh._maybe_get_const(pad, "is")
        mode_name = sh._maybe_get_const(mode, "s")
        rank = sh._get_tensor_rank(input)
        if not isinstance(widths, (list, tuple)) or mode_name not in _ONNX_PAD_MODES or rank is None:
            return stock.pad(g, input, pad, mode, value)
        begin, end = [0] * rank, [0] * rank
        for i in range(len(widths) // 2):  # torch: (last dim left, right, second-to-last top, bottom, ...)
            begin[rank - 1 - i], end[rank - 1 - i] = int(widths[2 * i]), int(widths[2 * i + 1])
        pads = g.op("Constant", value_t=torch.tensor(begin + end, dtype=torch.int64))
        if mode_name != "constant":
            return g.op("Pad", input, pads, mode_s=_ONNX_PAD_MODES[mode_name])
        fill = 0.0 if sh._is_none(value) else float(sh._maybe_get_const(value, "f"))
        return g.op(
            "Pad", input, pads, g.op("Constant", value_t=torch.tensor(fill, dtype=torch.float32)), mode_s="constant"
        )

    torch.onnx.register_custom_op_symbolic("aten::pad", pad, int(opset))
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::pad", int(opset))


@contextlib.contextmanager
def _quiet_tracer():
    """The tracer warns about Python values it records as constants (shapes of the token grid, the DDIM step
    list, the kernel sizes); they are constants of the model, by design."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        yield
