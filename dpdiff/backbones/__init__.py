"""Frozen feature extractors (paper Sec. 4.1, eq. 8-9; Sec. 5.1.3).

``build_backbone(name, layers=None, weights=None, image_size=256, feature_stride=None)``
returns a :class:`FeatureExtractor` mapping normalised ``(B, 3, H, W)`` images to a
float32 ``(B, C, h, w)`` patch-feature map.  See :mod:`.efficientnet` (default, offline
CNN backbone: multi-stage maps pooled to one grid and concatenated) and :mod:`.dinov2`
(the paper's DINOv2 backbone: mean of blocks 6..11, eq. 9). Each backbone module registers its names with
``@register_backbone`` (:mod:`.registry`, as timm's ``register_model``); importing this package imports them all.
"""

from dpdiff.backbones.base import CheckpointError, FeatureExtractor, read_checkpoint, unwrap_state_dict
from dpdiff.backbones.dinov2 import DinoV2Extractor, build_vit
from dpdiff.backbones.efficientnet import (
    EfficientNetLiteExtractor,
    load_efficientnet_lite_classifier,
    lukemelas_to_timm,
)
from dpdiff.backbones.registry import ALIASES, BACKBONES, build_backbone, register_backbone

__all__ = [
    "BACKBONES",
    "ALIASES",
    "build_backbone",
    "register_backbone",
    "FeatureExtractor",
    "EfficientNetLiteExtractor",
    "DinoV2Extractor",
    "build_vit",
    "load_efficientnet_lite_classifier",
    "lukemelas_to_timm",
    "read_checkpoint",
    "unwrap_state_dict",
    "CheckpointError",
]
