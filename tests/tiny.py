"""The tiny configuration shared by the end-to-end tests (64 px, a 1-block DiT, a few steps)."""
from __future__ import annotations

from pathlib import Path

from dpdiff.config import Config


def tiny_config(root: Path | str | None = None) -> Config:
    cfg = Config()
    cfg.backbone.image_size = 64
    cfg.model.hidden_dim = 32
    cfg.model.depth = 1
    cfg.model.num_heads = 2
    cfg.model.prototype_heads = 2
    cfg.train.batch_size = 4
    cfg.train.steps = 6
    cfg.train.log_every = 2
    cfg.train.checkpoint_every = 3
    cfg.inference.pool_size = 4
    cfg.inference.smoothing_sigma = 1.0
    if root is not None:
        cfg.data.root = str(root)
    return cfg
