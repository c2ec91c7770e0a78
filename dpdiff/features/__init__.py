"""Backbone features: extraction (``extract``) and the memory-mapped on-disk feature cache (``cache``)."""

from dpdiff.features.extract import (
    build_backbone_from_config,
    channel_statistics,
    extract_features,
    feature_cache_key,
    resolve_device,
    tokens_from_maps,
)

__all__ = [
    "build_backbone_from_config",
    "channel_statistics",
    "extract_features",
    "feature_cache_key",
    "resolve_device",
    "tokens_from_maps",
]
