"""Run the frozen backbone once over a dataset and keep its tokens (the backbone is a pure function
of the image, so training never needs to run it again)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Subset

from dpdiff.backbones import build_backbone
from dpdiff.backbones.base import FeatureExtractor
from dpdiff.config import Config
from dpdiff.utils.progress import progress

if TYPE_CHECKING:
    from dpdiff.data.dataset import ImageDataset


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_backbone_from_config(cfg: Config) -> FeatureExtractor:
    """The frozen feature extractor ``cfg.backbone`` describes (weights from ``backbone.weights`` or the package)."""
    b = cfg.backbone
    backbone = build_backbone(
        b.name, layers=b.layers, weights=b.weights, image_size=b.image_size, feature_stride=b.feature_stride
    )
    return backbone.set_intensity_normalization(b.normalize_intensity)


def feature_cache_key(cfg: Config) -> dict:
    """What identifies a backbone's features in the feature cache (the image size is checked apart)."""
    b = cfg.backbone
    key = {"name": b.name, "layers": b.layers, "feature_stride": b.feature_stride}
    if b.normalize_intensity:  # only when on: the keys of every cache made before the option stay valid
        key["normalize_intensity"] = True
    return key


@torch.inference_mode()
def extract_features(
    backbone: torch.nn.Module,
    dataset: ImageDataset | Subset,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    desc: str = "features",
    dtype: torch.dtype = torch.float16,
    out=None,
):
    """Backbone feature maps for every item, in dataset order: (len(dataset), C, h, w) in ``dtype``.

    fp16 storage halves memory; tokens are standardised later in float32, so the rounding error
    (~1e-3 relative) is far below the token noise the diffusion adds.

    ``out``: optional destination written batch by batch in order with ``out[a:b] = maps`` (a
    preallocated tensor, or a writer such as the feature cache's shard writer, so the maps never all sit
    in RAM); it is returned instead of a new tensor.
    """
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    pos = 0
    for batch in progress(loader, desc=desc, unit="batch", leave=False):
        images = batch["image"].to(device, non_blocking=True)
        feats = backbone(images).to("cpu", dtype)
        if out is None:
            out = torch.empty((len(dataset), *feats.shape[1:]), dtype=dtype)
        out[pos : pos + feats.shape[0]] = feats
        pos += feats.shape[0]
    if pos == 0:
        raise ValueError("cannot extract features from an empty dataset")
    return out


def tokens_from_maps(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, N=h*w, C) tokens, row-major as in Eq. (23)."""
    return maps.flatten(2).transpose(1, 2)


def channel_statistics(maps, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over all tokens of (B, C, h, w) maps, accumulated in float64.

    ``maps`` is a tensor or anything with ``shape`` and slice indexing returning tensors (e.g. the
    memory-mapped :class:`~dpdiff.features.cache.FeatureStore`); it is read ``chunk`` maps at a time.
    """
    c = maps.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    n = 0
    for i in range(0, maps.shape[0], chunk):
        x = torch.as_tensor(maps[i : i + chunk]).double().transpose(0, 1).reshape(c, -1)
        s += x.sum(1)
        s2 += (x * x).sum(1)
        n += x.shape[1]
    if n == 0:
        raise ValueError("channel_statistics needs at least one feature map")
    mean = s / n
    var = (s2 / n - mean * mean).clamp_min(0)
    return mean.float(), var.sqrt().float()
