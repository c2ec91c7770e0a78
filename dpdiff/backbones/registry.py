"""Backbone registry, as timm's ``register_model``: every backbone module registers its builders with
``@register_backbone("name", **info)``; :func:`build_backbone` builds one by name or alias.

The backbone modules (:mod:`.efficientnet`, :mod:`.dinov2`) are imported by ``dpdiff/backbones/__init__.py``, so
the registry is complete as soon as any ``dpdiff.backbones`` module has been imported. This module imports none of
them (they import it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from dpdiff.backbones.base import FeatureExtractor
from dpdiff.utils.errors import ConfigError

__all__ = ["BACKBONES", "ALIASES", "BackboneBuilder", "register_backbone", "canonical_name", "build_backbone"]


class BackboneBuilder(Protocol):
    """What ``@register_backbone`` decorates: builds the named backbone from :func:`build_backbone`'s options."""

    def __call__(
        self,
        *,
        layers: list[int] | None,
        weights: str | None,
        image_size: int | Sequence[int],
        feature_stride: int | None,
        local_aggregation: bool,
    ) -> FeatureExtractor: ...


B = TypeVar("B", bound=BackboneBuilder)

#: name -> description of the backbone (family, timm name, default layers, layer range, default feature stride,
#: channels, normalisation mean/std, whether weights are required, a one-line description), as registered
BACKBONES: dict[str, dict] = {}
_BUILDERS: dict[str, BackboneBuilder] = {}

#: other spellings accepted by :func:`build_backbone` -> the registered name
ALIASES: dict[str, str] = {
    "dinov2_vits14_reg4": "dinov2_vits14_reg",
    "dinov2_vitb14_reg4": "dinov2_vitb14_reg",
    "dinov2_vitl14_reg4": "dinov2_vitl14_reg",
    "efficientnet_lite0": "tf_efficientnet_lite0",
    "efficientnet_lite1": "tf_efficientnet_lite1",
    "efficientnet_lite2": "tf_efficientnet_lite2",
}


def register_backbone(name: str, **info) -> Callable[[B], B]:
    """Decorator: register ``builder`` under ``name`` with its description ``info`` (see :data:`BACKBONES`)."""

    def decorate(builder: B) -> B:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        if name in ALIASES:
            raise ValueError(f"backbone {name!r} is an alias of {ALIASES[name]!r}")
        BACKBONES[name] = dict(info)
        _BUILDERS[name] = builder
        return builder

    return decorate


def register_variants(names, info: Callable[[str], dict], build: Callable[..., FeatureExtractor]) -> None:
    """Register one entry per name of a model family (timm's ``@register_model`` pattern, applied per name):
    ``info(name)`` is the entry's description, ``build(name, **options)`` builds the extractor."""
    for variant in names:
        register_backbone(variant, **info(variant))(functools.partial(build, variant))


def canonical_name(name: str) -> str:
    """The registered name ``name`` stands for (``name`` itself unless it is an alias); not checked."""
    return ALIASES.get(name, name)


def build_backbone(
    name: str,
    layers: list[int] | None = None,
    weights: str | None = None,
    image_size: int | Sequence[int] = 256,
    feature_stride: int | None = None,
    local_aggregation: bool = True,
) -> FeatureExtractor:
    """Build a frozen :class:`FeatureExtractor` by name (see :data:`BACKBONES`).

    ``layers``: stage indices (EfficientNet-Lite, 0..4) or 0-based block indices (DINOv2);
    ``None`` -> the backbone's defaults.  ``weights``: path to a checkpoint (required for
    DINOv2; EfficientNet-Lite defaults to the packaged ImageNet weights).
    ``feature_stride``: output grid = ``image_size // feature_stride`` per side (default 16 for
    EfficientNet-Lite, the patch size 14 for DINOv2).  ``local_aggregation`` (CNN only):
    PatchCore 3x3 neighbourhood averaging of each stage.
    """
    key = canonical_name(name)
    if key not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    return _BUILDERS[key](
        layers=layers,
        weights=weights,
        image_size=image_size,
        feature_stride=feature_stride,
        local_aggregation=local_aggregation,
    )
