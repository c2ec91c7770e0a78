"""What a training run trains on: the training samples (minus the calibration hold-out), their backbone features
(extracted, or read from the feature cache; sharded over the ranks under ``torchrun``), the check that the features
are finite, and the check that a resumed run still sees the same images. :class:`~dpdiff.training.trainer.Trainer`
calls these in ``setup``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Subset

from dpdiff.config import Config
from dpdiff.data.dataset import ImageDataset
from dpdiff.data.geometry import ImageGeometry, tile_samples
from dpdiff.data.readers import load_samples
from dpdiff.data.splits import hold_out_for_calibration
from dpdiff.features import extract_features, feature_cache_key
from dpdiff.metrics.thresholds import min_normal_images
from dpdiff.model.checkpoint import STATE_FILE
from dpdiff.training import distributed as D
from dpdiff.training.init_from import InitSource, init_source, replay_subset
from dpdiff.utils.errors import ConfigError, DataError

if TYPE_CHECKING:
    from dpdiff.features.cache import FeatureStore

__all__ = [
    "training_samples",
    "split_samples",
    "shared_training_samples",
    "train_features",
    "check_finite_features",
    "image_ids",
    "check_same_data",
]


def training_samples(cfg: Config) -> list:
    return split_samples(cfg)[0]


def split_samples(cfg: Config) -> tuple[list, list]:
    """(samples trained on, samples held out for calibration: ``train.calibration_fraction``, seeded by
    ``train.seed``); too few held-out images for ``train.calibration_fpr`` is an error before training.

    With ``train.init_from`` (adding categories to RUN): the new categories' split plus RUN's own split, the
    replay (``train.replay`` per old category) of RUN's training images trained on and exactly RUN's held-out
    images held out (:func:`_union_split`)."""
    source = init_source(cfg)
    kept, held = _own_split(cfg) if source is None else _union_split(cfg, source)
    fraction, fpr = cfg.train.calibration_fraction, cfg.train.calibration_fpr
    if fraction > 0 and len(held) < min_normal_images(fpr):
        raise ConfigError(
            f"train.calibration_fraction={fraction:g} holds out {len(held)} of {len(kept) + len(held)} normal "
            f"images; calibrating at train.calibration_fpr={fpr:g} needs at least "
            f"{min_normal_images(fpr)}: raise the fraction or the rate, or calibrate later with "
            f"`dpdiff calibrate`"
        )
    return kept, held


def _own_split(cfg: Config) -> tuple[list, list]:
    """The split of ``data.root``/``data.categories`` alone (``train.calibration_fraction``, ``train.seed``)."""
    if not cfg.data.root:
        raise ConfigError("no data root: set data.root in the config or pass --data PATH")
    samples = load_samples(cfg.data.format, Path(cfg.data.root), cfg.data.categories, "train", **cfg.data.options)
    return hold_out_for_calibration(samples, cfg.train.calibration_fraction, cfg.train.seed)


def _union_split(cfg: Config, source: InitSource) -> tuple[list, list]:
    """(new categories' training images + the replay of RUN's, new held-out images + RUN's held-out ones)."""
    new_kept, new_held = _own_split(cfg)
    clash = sorted({str(s.category) for s in new_kept + new_held} & set(source.categories))
    if clash:
        raise ConfigError(
            f"data.categories: {', '.join(map(repr, clash))} already in {source.run_dir} (train.init_from, "
            f"categories {source.categories}); an add run trains new categories only: pass --categories with "
            f"the new ones (data.categories), or, to retrain a category RUN knows, train from scratch on the union"
        )
    old_kept, old_held = _recorded_split(source)
    return new_kept + replay_subset(old_kept, cfg.train.replay, cfg.train.seed), new_held + old_held


def _recorded_split(source: InitSource) -> tuple[list, list]:
    """RUN's own (training, held-out) images, as RUN drew them: its data root, format and the categories it
    recorded (not whatever the root holds now), its seed and hold-out fraction; for a RUN that itself added
    categories, recursively the union it trained on."""
    old = copy.deepcopy(source.cfg)
    parent = init_source(old)
    inherited = set(parent.categories) if parent is not None else set()
    old.data.categories = [c for c in source.categories if c not in inherited]
    try:
        return split_samples(old)
    except (FileNotFoundError, DataError) as e:
        raise DataError(
            f"train.init_from: the replay reads the training images of {source.run_dir} where it recorded them "
            f"(data.root={old.data.root!r} in {source.run_dir / 'config.json'}), and they are not all there "
            f"({e}); make them available at that path"
        ) from e


def shared_training_samples(cfg: Config, info: D.DistInfo) -> list:
    samples: list = []
    error = None
    try:
        samples = training_samples(cfg)
    except (FileNotFoundError, ValueError) as e:
        error = e
    D.raise_if_any_failed(error, info)
    return samples


def train_features(
    cfg: Config, backbone, device, info: D.DistInfo | None = None, samples: list | None = None
) -> tuple[torch.Tensor, list]:
    """Backbone features (N, C, h, w) of all training items, and the items, in order: the images, or with
    ``data.tiling`` their tiles (one :class:`~dpdiff.data.types.Sample` with its ``crop`` per tile, one token grid
    each; the held-out calibration images stay whole: they are scored tiled and stitched like test images).

    With several ranks each extracts its contiguous slice and the slices are gathered on every rank.
    """
    info = info or D.DistInfo(device=torch.device(device))
    if samples is None:
        samples = shared_training_samples(cfg, info)
    samples = tile_samples(samples, ImageGeometry.from_config(cfg))
    if cfg.train.feature_cache:
        return _cached_train_features(cfg, backbone, device, info, samples), samples
    geometry = ImageGeometry.from_config(cfg)
    dataset = ImageDataset(samples, geometry, backbone.mean, backbone.std, load_masks=False)
    lo, hi = D.shard_range(len(dataset), info.rank, info.world_size)
    local, error = None, None
    try:
        if hi > lo:
            local = extract_features(
                backbone,
                Subset(dataset, range(lo, hi)),
                cfg.train.feature_batch_size,
                device,
                cfg.train.num_workers,
                desc="train features",
            )
    except (FileNotFoundError, ValueError) as e:
        error = e
    D.raise_if_any_failed(error, info)
    if info.enabled:
        shape = D.broadcast_object(tuple(local.shape[1:]) if local is not None else None, info)
        if local is None:
            local = torch.empty((0, *shape), dtype=torch.float16)
        feats = D.all_gather_rows(local, len(dataset), info)
    elif local is None:  # pragma: no cover - the samples are never empty (training_samples raises)
        raise DataError("no training images to extract features from")
    else:
        feats = local
    return feats, samples


def _cached_train_features(cfg: Config, backbone, device, info: D.DistInfo, samples: list):
    """Training tokens from the on-disk feature cache (features/cache.py); each rank fills its own slice."""
    from dpdiff.features.cache import FeatureCache

    cache = FeatureCache(cfg.train.cache_dir)
    key = feature_cache_key(cfg)
    geometry = ImageGeometry.from_config(cfg)  # part of the cache key: another geometry, other maps
    lo, hi = D.shard_range(len(samples), info.rank, info.world_size)
    error = None
    try:
        if hi > lo:
            cache.get(
                backbone,
                key,
                samples[lo:hi],
                geometry,
                cfg.train.feature_batch_size,
                device,
                cfg.train.num_workers,
            )
    except (FileNotFoundError, ValueError) as e:
        error = e
    D.raise_if_any_failed(error, info)  # collective: also the barrier before every rank reads all slices
    return cache.get(backbone, key, samples, geometry, cfg.train.feature_batch_size, device)


def check_finite_features(features: torch.Tensor | FeatureStore, samples: list | None, chunk: int = 256) -> None:
    """ValueError naming the first image whose backbone features hold NaN or inf (read ``chunk`` maps at a time)."""
    bad: list[int] = []
    for i in range(0, features.shape[0], chunk):
        block = torch.as_tensor(features[i : i + chunk])  # a tensor or a FeatureStore-like object
        ok = torch.isfinite(block.reshape(block.shape[0], -1)).all(dim=1)
        bad.extend((i + torch.nonzero(~ok).flatten()).tolist())
    if not bad:
        return
    first = bad[0]
    what = (
        f"training image {str(samples[first].image_path)!r}"
        if samples and first < len(samples)
        else f"training item {first}"
    )
    more = f" (and {len(bad) - 1} more image(s))" if len(bad) > 1 else ""
    raise DataError(
        f"non-finite backbone features (NaN or inf) for {what}{more}: check the image file, the "
        f"backbone weights (backbone.weights) and that values fit float16"
    )


def image_ids(samples: list | None, root: str | None) -> list[str] | None:
    if not samples:
        return None
    out = []
    for s in samples:
        p = Path(s.image_path)
        try:
            p = p.relative_to(root) if root else p
        except ValueError:
            pass
        tile = "" if s.crop is None else "#tile=" + ",".join(str(int(v)) for v in s.crop)  # one id per tile
        out.append(p.as_posix() + tile)
    return out


def check_same_data(state: dict, n: int, ids: list[str] | None, run_dir: Path) -> None:
    saved = state.get("data") or {}
    path = Path(run_dir) / STATE_FILE
    if "num_images" in saved and int(saved["num_images"]) != n:
        raise DataError(
            f"{path}: the checkpoint was trained on {saved['num_images']} images, the data now has {n}; "
            f"resuming would draw different batches (start a new run instead)"
        )
    old = saved.get("images")
    if old and ids and list(old) != list(ids):
        # the first differing position (on the common prefix: the lists may differ in length)
        i = next(k for k, (a, b) in enumerate(zip(old, ids, strict=False)) if a != b)
        raise DataError(
            f"{path}: the training images changed since the checkpoint: image {i} was {old[i]!r}, "
            f"now {ids[i]!r}; resuming would draw different batches (start a new run instead)"
        )
