"""DPDiff-AD and the PatchCore-style kNN baseline scored on the SAME backbone tokens.

Shared by ``benchmarks/mtd_knn_vs_dpdiff.py`` and ``dpdiff scale`` (experiments/scale.py): one feature
extraction feeds both methods, and both go through the same map post-processing (bilinear upsampling
to the evaluation resolution, Gaussian smoothing, the configured image-score rule), so two rows differ
only in how a token is scored.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from dpdiff.baselines.knn import KNNMemoryBank
from dpdiff.config import Config
from dpdiff.data.dataset import ImageDataset
from dpdiff.features import tokens_from_maps
from dpdiff.inference.detector import Detector
from dpdiff.scoring.scorer import map_size, postprocess_maps

# ``map_size`` is dpdiff.inference.detector.map_size (the one rule), importable from here for experiments/scale.py
__all__ = [
    "masks_and_labels",
    "map_size",
    "eval_frame_maps",
    "build_knn",
    "knn_score_features",
    "dpdiff_score_features",
]


def masks_and_labels(dataset: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
    """(masks bool (N, Hm, Wm) at the dataset's mask size, on its evaluation frame, labels (N,)) of a test dataset,
    in order."""
    masks = np.stack([dataset[i]["mask"][0].numpy() > 0.5 for i in range(len(dataset))])
    labels = np.array([s.label for s in dataset.samples])
    return masks, labels


def eval_frame_maps(maps, dataset: ImageDataset) -> np.ndarray:
    """Maps (N, Hm, Wm) of ``dataset``'s images on the model's input frame (:func:`knn_score_features`,
    :func:`dpdiff_score_features`) -> on the evaluation frame its masks are on
    (:meth:`~dpdiff.data.geometry.ImageGeometry.eval_map`): the maps themselves unless letterboxed
    (``data.resize: keep_aspect``), then cut to each image's content and resized back."""
    maps = np.asarray(maps, dtype=np.float32)
    geometry = dataset.geometry
    if geometry.resize == "stretch":
        return maps
    out = np.empty_like(maps)
    for i, s in enumerate(dataset.samples):
        with Image.open(s.image_path) as im:  # the header only: the image's own size
            out[i] = geometry.eval_map(maps[i], (im.height, im.width))
    return out


def build_knn(
    train_feats, coreset: float = 1.0, seed: int = 0, chunk: int = 256, standardize: bool = False
) -> KNNMemoryBank:
    """Memory bank of every training token of ``train_feats`` ((N, C, h, w) tensor or FeatureStore);
    ``standardize``: nearest neighbours in z-scored token space (as DPDiff-AD), else raw space."""
    c = train_feats.shape[1]
    parts = [
        tokens_from_maps(torch.as_tensor(train_feats[i : i + chunk]).float()).reshape(-1, c)
        for i in range(0, train_feats.shape[0], chunk)
    ]
    return KNNMemoryBank(torch.cat(parts), coreset, seed=seed, standardize=standardize)


@torch.no_grad()
def knn_score_features(bank: KNNMemoryBank, feats, cfg: Config, batch_size: int = 64):
    """(pixel maps (N, Hm, Wm) on the input frame (:func:`eval_frame_maps`), image scores (N,)) of the kNN
    baseline, post-processed like DPDiff-AD."""
    maps, scores = [], []
    for i in range(0, feats.shape[0], batch_size):
        m, s = postprocess_maps(bank.score_maps(torch.as_tensor(feats[i : i + batch_size])), cfg)
        maps.append(m)
        scores.append(s)
    return torch.cat(maps), torch.cat(scores)


def dpdiff_score_features(
    detector: Detector, feats, batch_size: int | None = None, seed: int | None = None, inference=None
):
    """(pixel maps (N, Hm, Wm) on the input frame, image scores (N,)) float32 CPU tensors of DPDiff-AD on
    precomputed backbone maps,
    through the detector's own scorer (:meth:`Detector.scorer`, as it runs it): one generator seeded with
    ``seed`` (default ``inference.seed``) consumed in batch order."""
    inf = inference or detector.cfg.inference
    bs = int(batch_size or inf.batch_size)
    generator = torch.Generator(detector.device).manual_seed(int(inf.seed if seed is None else seed))
    scorer = detector.scorer(inf)
    noise = scorer.noise_source(generator)
    maps, scores = [], []
    for i in range(0, feats.shape[0], bs):
        with torch.inference_mode():
            m, s = scorer.score_features(torch.as_tensor(feats[i : i + bs]), noise)
            maps.append(m.float().cpu())
            scores.append(s.float().cpu())
    if not maps:
        raise ValueError("no images to score")
    return torch.cat(maps), torch.cat(scores)
