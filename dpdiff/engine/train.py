"""Training loop for DPDiff-AD on frozen-backbone tokens (paper Eq. 19, Adam, batch 32).

The backbone runs once over the training images (``extract_features``); the loop then samples
batches of tokens. Every step's batch indices and noise come from a generator seeded by
(seed, step), so a resumed run draws exactly what an uninterrupted one would.

Crash safety: every ``train.checkpoint_every`` steps and at the end, ``train_state.pt`` (step,
weights, optimiser, RNG states, history, the training images in order), ``model.safetensors`` and
``config.json`` are written, each atomically (``checkpoint.py``). ``resume=True`` continues from
``train_state.pt`` alone and gives the weights an uninterrupted run would have.

Data parallel: under ``torchrun`` (``WORLD_SIZE`` > 1) each rank extracts the features of its slice
of the training images, all ranks gather them, every rank draws the same global batch and noise and
trains on its slice with DistributedDataParallel; ``train.batch_size`` stays the global batch, so
the result matches one process. Only rank 0 writes files (``distributed.py``).
"""
from __future__ import annotations

import csv
import io
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import Subset
from tqdm.auto import tqdm

from ..config import Config
from ..data.dataset import ImageDataset
from ..data.formats import load_samples
from ..io import atomic_write_text
from ..model.dpdiff_ad import DPDiffAD
from . import distributed as D
from .checkpoint import (RUN_FILES, STATE_FILE, build_model_from_state, check_resume_config,
                         load_train_state, remove_stale_temp_files, rng_states, save_checkpoint, set_rng_states)
from .features import build_backbone_from_config, channel_statistics, extract_features, tokens_from_maps

HISTORY_FILE = "loss_history.csv"
LOSS_KEYS = ("loss", "diff", "local", "global")


class TrainingDiverged(FloatingPointError):
    """The loss (or the gradient norm) became NaN or inf; the last good checkpoint is kept."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def prepare_run_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuse to clobber an existing run unless asked to (--overwrite) or continuing it (--resume)."""
    run_dir = Path(run_dir)
    if overwrite and resume:
        raise ValueError("--overwrite and --resume contradict each other: pass one of them")
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"{run_dir} exists and is not a folder")
    present = [n for n in RUN_FILES if (run_dir / n).exists()]
    if present and not (overwrite or resume):
        raise FileExistsError(f"{run_dir} already holds a dpdiff run ({', '.join(present)}); pass --resume to "
                              f"continue it or --overwrite to start again")
    if resume and not (run_dir / STATE_FILE).exists():
        load_train_state(run_dir)  # raises the "cannot resume" error
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(run_dir)
    if overwrite:
        for name in RUN_FILES:  # resume state first: a later --resume must never pick up the old run
            (run_dir / name).unlink(missing_ok=True)


def _training_samples(cfg: Config) -> list:
    if not cfg.data.root:
        raise ValueError("no data root: set data.root in the config or pass --data PATH")
    return load_samples(cfg.data.format, Path(cfg.data.root), cfg.data.categories, "train", **cfg.data.options)


def _shared_training_samples(cfg: Config, info: D.DistInfo) -> list:
    samples, error = None, None
    try:
        samples = _training_samples(cfg)
    except (FileNotFoundError, ValueError) as e:
        error = e
    D.raise_if_any_failed(error, info)
    return samples


def train_features(cfg: Config, backbone, device, info: D.DistInfo | None = None,
                   samples: list | None = None) -> tuple[torch.Tensor, list]:
    """Backbone features (N, C, h, w) of all training images, and the samples, in order.

    With several ranks each extracts its contiguous slice and the slices are gathered on every rank.
    """
    info = info or D.DistInfo(device=torch.device(device))
    if samples is None:
        samples = _shared_training_samples(cfg, info)
    if cfg.train.feature_cache:
        return _cached_train_features(cfg, backbone, device, info, samples), samples
    dataset = ImageDataset(samples, cfg.backbone.image_size, backbone.mean, backbone.std, load_masks=False)
    lo, hi = D.shard_range(len(dataset), info.rank, info.world_size)
    local, error = None, None
    try:
        if hi > lo:
            local = extract_features(backbone, Subset(dataset, range(lo, hi)), cfg.train.feature_batch_size,
                                     device, cfg.train.num_workers, desc="train features")
    except (FileNotFoundError, ValueError) as e:
        error = e
    D.raise_if_any_failed(error, info)
    if info.enabled:
        shape = D.broadcast_object(tuple(local.shape[1:]) if local is not None else None, info)
        if local is None:
            local = torch.empty((0, *shape), dtype=torch.float16)
        feats = D.all_gather_rows(local, len(dataset), info)
    else:
        feats = local
    return feats, samples


def _cached_train_features(cfg: Config, backbone, device, info: D.DistInfo, samples: list):
    """Training tokens from the on-disk feature cache (engine/features/cache.py); each rank fills its own slice."""
    from .features.cache import FeatureCache
    cache = FeatureCache(cfg.train.cache_dir)
    key = {"name": cfg.backbone.name, "layers": cfg.backbone.layers, "feature_stride": cfg.backbone.feature_stride}
    lo, hi = D.shard_range(len(samples), info.rank, info.world_size)
    error = None
    try:
        if hi > lo:
            cache.get(backbone, key, samples[lo:hi], cfg.backbone.image_size, cfg.train.feature_batch_size,
                      device, cfg.train.num_workers)
    except (FileNotFoundError, ValueError) as e:
        error = e
    D.raise_if_any_failed(error, info)  # collective: also the barrier before every rank reads all slices
    return cache.get(backbone, key, samples, cfg.backbone.image_size, cfg.train.feature_batch_size, device)


def check_finite_features(features: torch.Tensor, samples: list | None, chunk: int = 256) -> None:
    """ValueError naming the first image whose backbone features hold NaN or inf (read ``chunk`` maps at a time)."""
    bad: list[int] = []
    for i in range(0, features.shape[0], chunk):
        block = torch.as_tensor(features[i:i + chunk])  # a tensor or a FeatureStore-like object
        ok = torch.isfinite(block.reshape(block.shape[0], -1)).all(dim=1)
        bad.extend((i + torch.nonzero(~ok).flatten()).tolist())
    if not bad:
        return
    first = bad[0]
    what = (f"training image {str(samples[first].image_path)!r}" if samples and first < len(samples)
            else f"training item {first}")
    more = f" (and {len(bad) - 1} more image(s))" if len(bad) > 1 else ""
    raise ValueError(f"non-finite backbone features (NaN or inf) for {what}{more}: check the image file, the "
                     f"backbone weights (backbone.weights) and that values fit float16")


def _image_ids(samples: list | None, root: str | None) -> list[str] | None:
    if not samples:
        return None
    out = []
    for s in samples:
        p = Path(s.image_path)
        try:
            p = p.relative_to(root) if root else p
        except ValueError:
            pass
        out.append(p.as_posix())
    return out


def _check_same_data(state: dict, n: int, ids: list[str] | None, run_dir: Path) -> None:
    saved = state.get("data") or {}
    path = Path(run_dir) / STATE_FILE
    if "num_images" in saved and int(saved["num_images"]) != n:
        raise ValueError(f"{path}: the checkpoint was trained on {saved['num_images']} images, the data now has {n}; "
                         f"resuming would draw different batches (start a new run instead)")
    old = saved.get("images")
    if old and ids and list(old) != list(ids):
        i = next(k for k, (a, b) in enumerate(zip(old, ids)) if a != b)
        raise ValueError(f"{path}: the training images changed since the checkpoint: image {i} was {old[i]!r}, "
                         f"now {ids[i]!r}; resuming would draw different batches (start a new run instead)")


LR_SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, total_steps: int, schedule: str = "constant", warmup_steps: int = 0) -> float:
    """Multiplier of ``train.lr`` at 0-based ``step``: linear warm-up over ``warmup_steps``, then constant or
    cosine decay to 0 at ``total_steps``. A pure function of the step, so a resumed run uses the same lr."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"train.lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """Exponential moving average of ``model``'s weights (``torch.optim.swa_utils.AveragedModel``), or None
    when ``decay`` <= 0. The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so the random
    initial weights do not linger in a short run."""
    if decay <= 0:
        return None
    if decay >= 1:
        raise ValueError(f"train.ema_decay must be in [0, 1), got {decay}")

    def ema_update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    return AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)


class _LossModule(nn.Module):
    """forward = DPDiffAD.training_losses, so DistributedDataParallel can wrap the loss."""

    def __init__(self, model: DPDiffAD):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, noise: dict) -> dict[str, torch.Tensor]:
        return self.model.training_losses(tokens, noise=noise)


def _resume_state(run_dir: Path, overwrite: bool, resume: bool, cfg: Config) -> dict | None:
    prepare_run_dir(run_dir, overwrite, resume)
    if not resume:
        return None
    state = load_train_state(run_dir)
    check_resume_config(run_dir, state, cfg)
    return state


def train(cfg: Config, run_dir: Path, overwrite: bool = False, resume: bool = False,
          features: torch.Tensor | None = None, samples: list | None = None) -> Path:
    """Train one unified model on all configured categories; returns the run folder.

    ``features`` (N, C, h, w) may be passed in to skip the backbone (benchmarks reuse them).
    Under ``torchrun`` this trains data-parallel (see the module docstring).
    """
    with D.distributed_context(cfg.train.device) as info:
        return _train(cfg, Path(run_dir), overwrite, resume, features, samples, info)


def _train(cfg: Config, run_dir: Path, overwrite: bool, resume: bool, features: torch.Tensor | None,
           samples: list | None, info: D.DistInfo) -> Path:
    state = D.on_main(lambda: _resume_state(run_dir, overwrite, resume, cfg), info)
    seed_everything(cfg.train.seed)
    device = info.device
    if features is None:
        t0 = time.perf_counter()
        samples = _shared_training_samples(cfg, info)  # data errors before the (slow) backbone load
        backbone = build_backbone_from_config(cfg)
        features, samples = train_features(cfg, backbone, device, info, samples)
        extract_s = time.perf_counter() - t0
        del backbone
    else:
        extract_s = 0.0
    check_finite_features(features, samples)
    n, c, h, w = features.shape
    categories = sorted({s.category for s in samples}) if samples else (cfg.data.categories or [])
    ids = _image_ids(samples, cfg.data.root)

    if state is not None:
        _check_same_data(state, n, ids, run_dir)
        if "model" in state:
            if (int(state["in_dim"]), tuple(state["grid_size"])) != (c, (h, w)):
                raise ValueError(f"{run_dir / STATE_FILE}: checkpoint expects {state['in_dim']} channels on a "
                                 f"{tuple(state['grid_size'])} grid, the backbone gives {c} on {(h, w)}")
            model = build_model_from_state(state["model"], c, (h, w), cfg, run_dir / STATE_FILE)
        else:  # resume state written before the weights were stored in it
            from .checkpoint import load_model
            model, _, payload = D.on_main(lambda: load_model(run_dir), info)
            if int(payload.get("step", -1)) != int(state["step"]):
                raise ValueError(f"{run_dir}: {STATE_FILE} is at step {state['step']} but the weights are at "
                                 f"step {payload.get('step')}; cannot resume exactly")
        model.to(device)
        start_step = int(state["step"])
        history = list(state.get("history", []))
        running = dict(state.get("running", {}))
        prev_train_s = float(state.get("train_s", 0.0))
        set_rng_states(state.get("rng", {}))
    else:
        # re-seed: feature extraction (DataLoader base seeds) may or may not have drawn from the global RNG,
        # and the initial weights must depend on the seed alone (cached vs fresh features, CLI vs API)
        torch.manual_seed(cfg.train.seed)
        model = DPDiffAD(c, (h, w), cfg.model, cfg.loss)
        mean, std = channel_statistics(features)
        model.set_token_statistics(mean, std)
        model.to(device)
        start_step, history, running, prev_train_s = 0, [], {}, 0.0
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    ema = build_ema(model, cfg.train.ema_decay)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # lr/weight decay are checked equal; take the config's anyway
            group["lr"], group["weight_decay"] = cfg.train.lr, cfg.train.weight_decay
        if ema is not None:
            if "ema" not in state:
                raise ValueError(f"{run_dir / STATE_FILE}: no EMA weights in the resume state (train.ema_decay was "
                                 f"off when it was written); resume with --set train.ema_decay=0 or start again")
            ema.load_state_dict(state["ema"])
    del state

    loss_module: nn.Module = _LossModule(model)
    if info.enabled:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None)

    bs = min(cfg.train.batch_size, n)
    if bs < info.world_size:
        raise ValueError(f"train.batch_size={bs} is smaller than the number of processes ({info.world_size})")
    lo, hi = D.shard_range(bs, info.rank, info.world_size)
    share = (hi - lo) / bs  # this rank's part of the global mean
    meta = {"categories": categories, "num_train_images": n, "feature_extraction_s": round(extract_s, 2),
            "world_size": info.world_size}
    data_state = {"num_images": n, "images": ids}
    t_start = time.perf_counter()
    last_saved = start_step
    pbar = tqdm(range(start_step, cfg.train.steps), desc="train", initial=start_step, total=cfg.train.steps,
                mininterval=2.0, disable=not info.is_main)
    for step in pbar:
        seed = cfg.train.seed * 1_000_003 + step
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, n, (bs,), generator=g)
        g_dev = g if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
        noise = model.draw_training_noise(bs, g_dev, device)  # the global batch's draws ...
        noise = {k: (v[lo:hi] if v is not None else None) for k, v in noise.items()}  # ... this rank's rows
        tokens = tokens_from_maps(features[idx[lo:hi]].float()).to(device)
        losses = loss_module(tokens, noise)
        local = torch.stack([losses[k].detach().float() for k in LOSS_KEYS])
        global_losses = D.all_reduce_sum(local * share, info) if info.enabled else local
        if not bool(torch.isfinite(global_losses).all()):
            vals = ", ".join(f"{k}={float(v):.4g}" for k, v in zip(LOSS_KEYS, global_losses))
            raise TrainingDiverged(
                f"training diverged: non-finite loss at step {step + 1} ({vals}); stopped without updating, "
                f"{_last_checkpoint_note(run_dir, last_saved, cfg)}. Lower train.lr or set train.grad_clip")
        optimizer.zero_grad(set_to_none=True)
        (losses["loss"] * (share * info.world_size) if info.enabled else losses["loss"]).backward()
        if cfg.train.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            if not bool(torch.isfinite(norm)):
                raise TrainingDiverged(
                    f"training diverged: non-finite gradient norm at step {step + 1}; stopped without updating, "
                    f"{_last_checkpoint_note(run_dir, last_saved, cfg)}. Lower train.lr")
        lr = cfg.train.lr * lr_factor(step, cfg.train.steps, cfg.train.lr_schedule, cfg.train.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        for k, v in zip(LOSS_KEYS, global_losses.tolist()):
            running[k] = running.get(k, 0.0) + v
        done = step + 1
        log_now = done % cfg.train.log_every == 0 or done == cfg.train.steps
        save_now = done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps
        if log_now:
            k_steps = done % cfg.train.log_every or cfg.train.log_every
            row = {"step": done, **{k: v / k_steps for k, v in running.items()}}
            history.append(row)
            running = {}
            if info.is_main:
                pbar.set_postfix(loss=f"{row['loss']:.4f}", diff=f"{row['diff']:.4f}")
        if not (log_now or save_now):
            continue
        error = None
        if info.is_main:  # rank 0 writes; a failed write (disk full ...) stops every rank, not just this one
            try:
                if log_now:
                    _write_history(run_dir / HISTORY_FILE, history)
                if save_now:
                    train_s = prev_train_s + time.perf_counter() - t_start
                    meta["train_s"] = round(train_s, 2)
                    meta["step"] = done
                    resume_state = {"step": done, "optimizer": optimizer.state_dict(), "history": history,
                                    "running": dict(running), "rng": rng_states(), "data": data_state,
                                    "train_s": train_s, "seed": cfg.train.seed, "world_size": info.world_size}
                    if ema is not None:
                        resume_state["ema"] = ema.state_dict()
                    save_checkpoint(run_dir, model, cfg, meta, resume_state,
                                    inference_model=ema.module if ema is not None else None)
            except OSError as e:
                error = e
        D.raise_if_any_failed(error, info)
        if save_now:
            last_saved = done
    if start_step >= cfg.train.steps:  # nothing left to do, keep files as they are
        return run_dir
    if info.is_main:
        _plot_history(run_dir, history)
    D.barrier(info)
    return run_dir


def _last_checkpoint_note(run_dir: Path, last_saved: int, cfg: Config) -> str:
    if last_saved > 0:
        return f"the last good checkpoint (step {last_saved}) is kept in {run_dir}"
    return f"no checkpoint was written yet (train.checkpoint_every={cfg.train.checkpoint_every})"


def _write_history(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0].keys()))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


def _plot_history(run_dir: Path, history: list[dict]) -> None:
    if not history:
        return
    try:
        from ..viz import plot_curves
    except ImportError:  # pragma: no cover - viz is optional for training
        return
    keys = [k for k in history[0] if k != "step"]
    plot_curves({k: [r[k] for r in history] for k in keys}, run_dir / "loss_curves.png",
                xlabel=f"log interval (x{history[0]['step']} steps)", ylabel="loss", title="training losses")


def load_history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / HISTORY_FILE
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


__all__ = ["train", "prepare_run_dir", "build_backbone_from_config", "train_features", "load_history",
           "check_finite_features", "TrainingDiverged"]
