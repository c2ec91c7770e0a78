"""The one inference pipeline: ``Detector`` (backbone + DPDiffAD + map post-processing, Eq. 20-24).

Evaluation, prediction, the FPS benchmark and the report all score images through ``Detector``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import Config, InferenceConfig
from ..data.dataset import ImageDataset
from ..model.dpdiff_ad import DPDiffAD
from ..model.postprocess import postprocess
from .checkpoint import load_model
from .features import build_backbone_from_config, resolve_device, tokens_from_maps


#: Rows (image x noise draw) per DiT call on a CPU. Measured (benchmarks/speed.py, Lite0 @256, DiT
#: 128x4, batch 16, 4 draws): one call over all 64 rows 159 ms/img, 16-row calls 118 ms/img - the
#: attention matrices of 64 rows no longer fit the caches. GPUs take everything in one call.
CPU_MAX_ROWS = 16


def inference_row_cap(device: torch.device) -> int | None:
    """Rows per DiT call for ``DPDiffAD.token_scores(max_batch=...)``: results are identical either way."""
    return CPU_MAX_ROWS if torch.device(device).type == "cpu" else None


class Detector:
    """Backbone + DPDiffAD + post-processing: images (B,3,S,S) -> (pixel maps (B,S,S), image scores)."""

    def __init__(self, backbone: torch.nn.Module, model: DPDiffAD, cfg: Config, device: torch.device):
        self.backbone = backbone.to(device).eval()
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.device = device

    @property
    def map_size(self) -> int:
        """Side of the output pixel maps: the evaluation resolution (default: the input image size)."""
        return int(self.cfg.evaluation.resolution or self.cfg.backbone.image_size)

    @torch.inference_mode()
    def score_features(self, feats: torch.Tensor, inference: InferenceConfig | None = None,
                       generator: torch.Generator | None = None):
        inf = inference or self.cfg.inference
        tokens = tokens_from_maps(feats.float().to(self.device))
        token_maps = self.model.token_scores(tokens, inf.noise_step, inf.ddim_steps, inf.ensemble, generator,
                                             scoring=inf.scoring,  # reconstruction (Eq. 22) | prototype
                                             ensemble_reduce=inf.ensemble_reduce, antithetic=inf.antithetic,
                                             common_noise_seed=inf.seed if inf.common_noise else None,
                                             max_batch=inference_row_cap(self.device))
        return postprocess(token_maps, self.map_size, inf.smoothing_sigma, inf.pool_size,
                           image_score=inf.image_score, top_percent=inf.top_percent)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None):
        return self.score_features(self.backbone(images.to(self.device)), generator=generator)


def load_detector(run_dir: Path, device: str = "auto", weights: str | None = None) -> Detector:
    dev = resolve_device(device)
    model, cfg, _ = load_model(run_dir, dev)
    if weights is not None:
        cfg.backbone.weights = weights
    backbone = build_backbone_from_config(cfg)
    if backbone.out_channels != model.in_dim or tuple(backbone.grid_size(cfg.backbone.image_size)) != model.grid_size:
        raise ValueError(f"{run_dir}: backbone {cfg.backbone.name} gives {backbone.out_channels} channels on a "
                         f"{backbone.grid_size(cfg.backbone.image_size)} grid, the checkpoint expects "
                         f"{model.in_dim} on {model.grid_size}")
    return Detector(backbone, model, cfg, dev)


def score_dataset(detector: Detector, dataset: ImageDataset, batch_size: int, desc: str,
                  features: torch.Tensor | None = None, seed: int = 0):
    """Returns (maps float32 (N,S,S), scores (N,), labels (N,), masks bool (N,S,S), seconds)."""
    generator = torch.Generator(detector.device).manual_seed(seed)
    maps, scores, labels, masks = [], [], [], []
    t0 = time.perf_counter()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    pos = 0
    for batch in tqdm(loader, desc=desc, leave=False):
        if features is None:
            m, s = detector(batch["image"], generator)
        else:
            m, s = detector.score_features(features[pos:pos + len(batch["label"])], generator=generator)
        pos += len(batch["label"])
        maps.append(m.float().cpu().numpy())
        scores.append(s.float().cpu().numpy())
        labels.append(np.asarray(batch["label"]))
        masks.append(batch["mask"][:, 0].numpy() > 0.5)
    seconds = time.perf_counter() - t0
    return (np.concatenate(maps), np.concatenate(scores), np.concatenate(labels), np.concatenate(masks), seconds)


__all__ = ["CPU_MAX_ROWS", "Detector", "inference_row_cap", "load_detector", "score_dataset"]
