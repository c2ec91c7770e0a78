"""The Trainer: DPDiff-AD trained on frozen-backbone tokens (paper Eq. 19, Adam, batch 32).

The backbone runs once over the training images (``extract_features``, in :mod:`.inputs`); the loop then samples
batches of tokens. Every step's batch indices and noise come from a generator seeded by
(seed, step), so a resumed run draws exactly what an uninterrupted one would. ``dpdiff.workflows.train.train``
is the entry point; a ``Trainer`` holds one run's state (model, optimiser, EMA, lr schedule, loss history).

Crash safety: every ``train.checkpoint_every`` steps and at the end, ``train_state.pt`` (step,
weights, optimiser, RNG states, history, the training images in order), ``model.safetensors`` and
``config.json`` are written, each atomically (``checkpoint.py``). ``resume=True`` continues from
``train_state.pt`` alone and gives the weights an uninterrupted run would have.

Data parallel: under ``torchrun`` (``WORLD_SIZE`` > 1) each rank extracts the features of its slice
of the training images, all ranks gather them, every rank draws the same global batch and noise and
trains on its slice with DistributedDataParallel; ``train.batch_size`` stays the global batch, so
the result matches one process. Only rank 0 writes files (``distributed.py``).

Validation (``train.validate_every``, :mod:`.validation`): rank 0 scores a fixed sample of test images with the
inference weights every so many steps and at the last step, into ``validation.csv`` and the training logger; for
watching a run only (test images: never a way to pick a checkpoint). Its backbone pass runs once, in ``setup``.

Adding categories (``train.init_from``, :mod:`.init_from`): the model starts from RUN's weights instead of a fresh
initialisation and every batch draws ``train.replay_fraction`` of its rows from the old categories' (replayed)
images, the rest from the new ones; everything else (EMA, lr schedule, checkpoints, resume, DDP) is the same.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from dpdiff.choices import LR_SCHEDULES  # train.lr_schedule; re-exported here
from dpdiff.config import Config
from dpdiff.features import (
    build_backbone_from_config,
    channel_statistics,
    tokens_from_maps,
)
from dpdiff.model.checkpoint import (
    RUN_FILES,
    STATE_FILE,
    build_model_from_state,
    check_resume_config,
    load_model,
    load_train_state,
    remove_stale_temp_files,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from dpdiff.model.dpdiff_ad import DPDiffAD
from dpdiff.training import distributed as D
from dpdiff.training.init_from import (
    InitSource,
    check_output_is_not_source,
    init_source,
    load_init_weights,
    replay_batch_rows,
    replay_rows,
)
from dpdiff.training.inputs import (
    check_finite_features,
    check_same_data,
    image_ids,
    shared_training_samples,
    split_samples,
    train_features,
    training_samples,
)
from dpdiff.training.loggers import TrainingLogger, build_logger
from dpdiff.training.validation import (
    VALIDATION_METRICS,
    ValidationSet,
    read_validation_rows,
    write_validation_rows,
)
from dpdiff.utils.errors import CheckpointError, ConfigError, RunFolderError, TrainingDiverged, UsageError
from dpdiff.utils.io import atomic_write_text
from dpdiff.utils.progress import progress
from dpdiff.utils.run_files import HISTORY_FILE, TENSORBOARD_DIR, VALIDATION_FILE

if TYPE_CHECKING:
    from dpdiff.features.cache import FeatureStore

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "diff", "local", "global")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def prepare_run_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuse to clobber an existing run unless asked to (--overwrite) or continuing it (--resume)."""
    run_dir = Path(run_dir)
    if overwrite and resume:
        raise UsageError("--overwrite and --resume contradict each other: pass one of them")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} exists and is not a folder")
    present = [n for n in RUN_FILES if (run_dir / n).exists()]
    if present and not (overwrite or resume):
        raise RunFolderError(
            f"{run_dir} already holds a dpdiff run ({', '.join(present)}); pass --resume to "
            f"continue it or --overwrite to start again"
        )
    if resume and not (run_dir / STATE_FILE).exists():
        load_train_state(run_dir)  # raises the "cannot resume" error
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(run_dir)
    if overwrite:
        for name in RUN_FILES:  # resume state first: a later --resume must never pick up the old run
            (run_dir / name).unlink(missing_ok=True)
        # the old run's event files would show as the same run's curves in TensorBoard
        shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)


def lr_factor(step: int, total_steps: int, schedule: str = "constant", warmup_steps: int = 0) -> float:
    """Multiplier of ``train.lr`` at 0-based ``step``: linear warm-up over ``warmup_steps``, then constant or
    cosine decay to 0 at ``total_steps``. A pure function of the step, so a resumed run uses the same lr."""
    if schedule not in LR_SCHEDULES:
        raise ConfigError(f"train.lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
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
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {decay}")

    def ema_update(
        averaged: list[torch.Tensor] | tuple[torch.Tensor, ...],
        current: list[torch.Tensor] | tuple[torch.Tensor, ...],
        num_averaged: torch.Tensor | int,
    ) -> None:
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


class Trainer:
    """One training run: ``setup`` (run folder, features, model, optimiser, EMA, or their resume state), then
    ``fit`` (``step`` after step, the loss history logged and checkpoints saved on schedule).

    Step ``s`` draws its batch indices and noise from a generator seeded by (train.seed, s) and its lr is
    ``lr_factor(s)``, so a run resumed at any checkpoint continues exactly as an uninterrupted one.
    """

    # set by setup()
    features: torch.Tensor | FeatureStore  # (N, C, h, w) backbone maps, or the feature cache's view of them
    model: DPDiffAD
    loss_module: nn.Module  # the model's loss, DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer

    def __init__(self, cfg: Config, run_dir: Path, info: D.DistInfo):
        self.cfg, self.run_dir, self.info = cfg, Path(run_dir), info
        self.device: torch.device = info.device
        self.samples: list | None = None
        self.ema: AveragedModel | None = None
        self.batch_size = 0  # the global batch (train.batch_size, at most N)
        self.lo, self.hi, self.share = 0, 0, 1.0  # this rank's rows of it and their part of the mean
        self.start_step = 0
        self.last_saved = 0
        self.history: list[dict] = []  # one row per log interval (HISTORY_FILE)
        self.running: dict[str, float] = {}  # loss sums since the last logged row
        self.prev_train_s = 0.0  # training seconds before a resume
        self.extract_s = 0.0
        self.meta: dict = {}
        self.data_state: dict = {}
        # train.init_from: (rows of the old categories, rows of the new ones) and how many old rows per batch
        self.replay: tuple[torch.Tensor, torch.Tensor] | None = None
        self.replay_batch = 0
        # train.validate_every: the interval in effect (0 when off or skipped; the same on every rank), and on
        # rank 0 the validation sample and the rows of validation.csv
        self.validate_every = 0
        self.validate_at_start = False  # a resumed run whose checkpoint step was due but has no row yet
        self.validation: ValidationSet | None = None
        self.validation_rows: list[dict] = []

    # ------------------------------------------------------------------ setup

    def setup(
        self,
        overwrite: bool = False,
        resume: bool = False,
        features: torch.Tensor | FeatureStore | None = None,
        samples: list | None = None,
    ) -> Trainer:
        """Prepare the run folder (``prepare_run_dir``), the training features and everything ``fit`` needs.

        With ``train.init_from`` the model starts from RUN's weights, on every rank before DDP wraps it (a resumed
        add run takes its own resume state instead; RUN must still be readable for its replay images)."""
        cfg, info = self.cfg, self.info
        source = init_source(cfg)  # the refusals (not a run, another backbone/model) before anything is written
        if source is not None:
            check_output_is_not_source(self.run_dir, source)  # before prepare_run_dir: --overwrite deletes files
            if features is not None:
                raise ConfigError(
                    "train.init_from reads the new and the replayed images itself: pass no precomputed features "
                    "(train.feature_cache reuses their tokens)"
                )
            shared_training_samples(cfg, info)  # a category RUN knows is refused before the run folder is made
        state = D.on_main(lambda: _resume_state(self.run_dir, overwrite, resume, cfg), info)
        seed_everything(cfg.train.seed)
        backbone = self._load_features(features, samples)
        ids = image_ids(self.samples, cfg.data.root)
        if state is not None:
            check_same_data(state, self.num_images, ids, self.run_dir)
            self._restore(state)
        elif source is not None:
            _, c, h, w = self.features.shape
            self.model = load_init_weights(source, c, (h, w)).to(self.device)
        else:
            self._init_model()
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.ema = build_ema(self.model, cfg.train.ema_decay)
        if state is not None:
            self._restore_optimizer(state)
        del state
        self._distribute()
        categories = sorted({s.category for s in self.samples}) if self.samples else (cfg.data.categories or [])
        self.meta = {
            "categories": categories,
            "num_train_images": self.num_images,
            "feature_extraction_s": round(self.extract_s, 2),
            "world_size": info.world_size,
        }
        if source is not None:
            self._set_replay(source)
        self.data_state = {"num_images": self.num_images, "images": ids}
        if cfg.train.validate_every > 0:
            self.validate_every, self.validate_at_start = D.on_main(lambda: self._setup_validation(backbone), info)
        return self

    def _setup_validation(self, backbone) -> tuple[int, bool]:
        """Rank 0: the validation sample's features (one backbone pass, kept in memory) and the rows of
        ``validation.csv`` a resumed run keeps (those up to its step: later ones were made by weights the resumed
        run trains again). Returns (the interval in effect: ``train.validate_every``, or 0 when skipped, whether
        the resumed step is due and has no row: a run stopped between its checkpoint and its validation)."""
        cfg = self.cfg
        if backbone is None:  # the training features were given: the validation images need the backbone
            backbone = build_backbone_from_config(cfg)
        self.validation = ValidationSet.build(cfg, backbone, self.device)
        if self.validation is None:
            return 0, False
        path = self.run_dir / VALIDATION_FILE
        self.validation_rows = [r for r in read_validation_rows(path) if int(r["step"]) <= self.start_step]
        if path.exists():
            write_validation_rows(path, self.validation_rows)
        self.validate_every = cfg.train.validate_every
        missing = self.start_step not in {int(r["step"]) for r in self.validation_rows}
        return self.validate_every, self._validation_due(self.start_step) and missing

    def _set_replay(self, source: InitSource) -> None:
        """The batch mix of an add run and its record in ``config.json`` (``init_from``)."""
        if self.samples is None:  # pragma: no cover - setup refuses precomputed features with init_from
            raise ConfigError("train.init_from needs the training samples")
        self.replay = replay_rows(self.samples, source)
        self.replay_batch = replay_batch_rows(self.batch_size, self.cfg.train.replay_fraction)
        old = set(source.categories)
        self.meta["init_from"] = {
            "run": str(source.run_dir),
            "step": source.step,
            "old_categories": source.categories,
            "new_categories": sorted({str(s.category) for s in self.samples} - old),
            "replay_images": int(self.replay[0].numel()),
            "replay_rows_per_batch": self.replay_batch,
        }

    @property
    def num_images(self) -> int:
        return int(self.features.shape[0])

    def _load_features(self, features: torch.Tensor | FeatureStore | None, samples: list | None):
        """Set the training features (extracted unless given) and samples; returns the backbone when it was built
        (validation reuses it), else None."""
        backbone = None
        if features is None:
            t0 = time.perf_counter()
            samples = shared_training_samples(self.cfg, self.info)  # data errors before the (slow) backbone load
            backbone = build_backbone_from_config(self.cfg)
            features, samples = train_features(self.cfg, backbone, self.device, self.info, samples)
            self.extract_s = time.perf_counter() - t0
        check_finite_features(features, samples)
        self.features, self.samples = features, samples
        return backbone if self.cfg.train.validate_every > 0 else None

    def _init_model(self) -> None:
        _, c, h, w = self.features.shape
        # re-seed: feature extraction (DataLoader base seeds) may or may not have drawn from the global RNG,
        # and the initial weights must depend on the seed alone (cached vs fresh features, CLI vs API)
        torch.manual_seed(self.cfg.train.seed)
        model = DPDiffAD(c, (h, w), self.cfg.model, self.cfg.loss)
        mean, std = channel_statistics(self.features)
        model.set_token_statistics(mean, std)
        self.model = model.to(self.device)

    def _restore(self, state: dict) -> None:
        """Weights, progress (step, history, running sums, time) and RNG states from the resume state."""
        _, c, h, w = self.features.shape
        path = self.run_dir / STATE_FILE
        if "model" in state:
            if (int(state["in_dim"]), tuple(state["grid_size"])) != (c, (h, w)):
                raise CheckpointError(
                    f"{path}: checkpoint expects {state['in_dim']} channels on a "
                    f"{tuple(state['grid_size'])} grid, the backbone gives {c} on {(h, w)}"
                )
            model = build_model_from_state(state["model"], c, (h, w), self.cfg, path)
        else:  # resume state written before the weights were stored in it
            model, _, payload = D.on_main(lambda: load_model(self.run_dir), self.info)
            if int(payload.get("step", -1)) != int(state["step"]):
                raise CheckpointError(
                    f"{self.run_dir}: {STATE_FILE} is at step {state['step']} but the weights are "
                    f"at step {payload.get('step')}; cannot resume exactly"
                )
        self.model = model.to(self.device)
        self.start_step = self.last_saved = int(state["step"])
        self.history = list(state.get("history", []))
        self.running = dict(state.get("running", {}))
        self.prev_train_s = float(state.get("train_s", 0.0))
        set_rng_states(state.get("rng", {}))

    def _restore_optimizer(self, state: dict) -> None:
        cfg = self.cfg.train
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # lr/weight decay are checked equal; take the config's anyway
            group["lr"], group["weight_decay"] = cfg.lr, cfg.weight_decay
        if self.ema is not None:
            if "ema" not in state:
                raise ConfigError(
                    f"{self.run_dir / STATE_FILE}: no EMA weights in the resume state (train.ema_decay "
                    f"was off when it was written); resume with --set train.ema_decay=0 or start again"
                )
            self.ema.load_state_dict(state["ema"])

    def _distribute(self) -> None:
        """Wrap the loss for DistributedDataParallel and fix this rank's rows of every global batch."""
        info, device = self.info, self.device
        self.loss_module = _LossModule(self.model)
        if info.enabled:
            self.loss_module = nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.batch_size = min(self.cfg.train.batch_size, self.num_images)
        if self.batch_size < info.world_size:
            raise ConfigError(
                f"train.batch_size={self.batch_size} is smaller than the number of processes ({info.world_size})"
            )
        self.lo, self.hi = D.shard_range(self.batch_size, info.rank, info.world_size)
        self.share = (self.hi - self.lo) / self.batch_size  # this rank's part of the global mean

    # ------------------------------------------------------------------ training

    def fit(self) -> Path:
        """Train from ``start_step`` to ``train.steps``; returns the run folder."""
        steps = self.cfg.train.steps
        t_start = time.perf_counter()
        pbar = progress(
            range(self.start_step, steps),
            desc="train",
            initial=self.start_step,
            total=steps,
            mininterval=2.0,
            disable=not self.info.is_main,
        )
        # a resumed run logs again from the step after its checkpoint: the earlier run's later events are hidden
        purge = self.start_step + 1 if self.start_step > 0 else None
        watch = build_logger(self.cfg.train.logger, self.run_dir, purge) if self.info.is_main else None
        try:
            if self.validate_at_start:  # resumed at a checkpoint whose validation did not finish
                self._validate(self.start_step, watch)
            for step in pbar:
                self.step(step)
                row = self._record(step + 1, t_start)
                if row is not None and self.info.is_main:
                    pbar.set_postfix(loss=f"{row['loss']:.4f}", diff=f"{row['diff']:.4f}")
                    if watch is not None:
                        watch.log(step + 1, self._watch_scalars(row, step, t_start))
                if self._validation_due(step + 1):
                    self._validate(step + 1, watch)
        finally:
            if watch is not None:
                watch.close()
        if self.start_step >= steps:  # nothing left to do, keep files as they are
            return self.run_dir
        D.barrier(self.info)
        return self.run_dir

    def _validation_due(self, done: int) -> bool:
        every = self.validate_every
        return every > 0 and done > 0 and (done % every == 0 or done == self.cfg.train.steps)

    def _validate(self, done: int, watch: TrainingLogger | None) -> None:
        """Rank 0 scores the validation sample with the inference weights after ``done`` steps and writes the row
        to ``validation.csv`` and the logger; every rank then waits for it (a failure stops every rank)."""
        error = None
        if self.info.is_main and self.validation is not None:
            try:
                # the weights inference would use: the EMA's when on (saved as model.safetensors)
                model = cast(DPDiffAD, self.ema.module) if self.ema is not None else self.model
                row = self.validation.run(model, done)
                self.validation_rows = [r for r in self.validation_rows if int(r["step"]) != done] + [row]
                write_validation_rows(self.run_dir / VALIDATION_FILE, self.validation_rows)
                scalars = {f"val/{k}": float(row[k]) for k in VALIDATION_METRICS if row[k] is not None}
                if watch is not None and scalars:
                    watch.log(done, scalars)
                logger.info(
                    "step %d validation (%d test images, %.1f s): %s",
                    done,
                    row["images"],
                    row["seconds"],
                    ", ".join(f"{k} {v:.4f}" for k, v in scalars.items()) or "no metric defined",
                )
            except Exception as e:  # noqa: BLE001 - re-raised on every rank below
                error = e
        D.raise_if_any_failed(error, self.info)

    def _watch_scalars(self, row: dict, step: int, t_start: float) -> dict[str, float]:
        """What a training logger shows at a logged step: the loss terms, the lr and the speed so far."""
        cfg = self.cfg.train
        done_here = step + 1 - self.start_step
        return {
            **{f"loss/{'total' if k == 'loss' else k}": float(row[k]) for k in LOSS_KEYS if k in row},
            "train/lr": cfg.lr * lr_factor(step, cfg.steps, cfg.lr_schedule, cfg.warmup_steps),
            "train/steps_per_s": done_here / max(time.perf_counter() - t_start, 1e-9),
        }

    def _draw_batch(self, step: int) -> tuple[torch.Tensor, dict]:
        """This rank's tokens and noise of step ``step``'s global batch, drawn from the (seed, step) generator."""
        seed = self.cfg.train.seed * 1_000_003 + step
        g = torch.Generator().manual_seed(seed)
        if self.replay is None:
            idx = torch.randint(0, self.num_images, (self.batch_size,), generator=g)
        else:  # an add run: a fixed share of every batch from the old categories' images, the rest from the new
            old, new = self.replay
            n_old = self.replay_batch
            idx = torch.cat(
                [
                    old[torch.randint(0, old.numel(), (n_old,), generator=g)],
                    new[torch.randint(0, new.numel(), (self.batch_size - n_old,), generator=g)],
                ]
            )
        g_dev = g if self.device.type == "cpu" else torch.Generator(self.device).manual_seed(seed)
        keep = self.cfg.train.token_keep if step < self.cfg.train.steps - self.cfg.train.full_token_steps else 1.0
        noise = self.model.draw_training_noise(
            self.batch_size, g_dev, self.device, keep
        )  # the global batch's draws ...
        noise = {k: (v[self.lo : self.hi] if v is not None else None) for k, v in noise.items()}  # ... this rank's rows
        tokens = tokens_from_maps(self.features[idx[self.lo : self.hi]].float()).to(self.device)
        return tokens, noise

    def step(self, step: int) -> torch.Tensor:
        """One optimiser step (0-based ``step``, paper Eq. 19); returns the global mean of ``LOSS_KEYS``."""
        cfg, info = self.cfg.train, self.info
        tokens, noise = self._draw_batch(step)
        losses = self.loss_module(tokens, noise)
        local = torch.stack([losses[k].detach().float() for k in LOSS_KEYS])
        global_losses = D.all_reduce_sum(local * self.share, info) if info.enabled else local
        if not bool(torch.isfinite(global_losses).all()):
            vals = ", ".join(f"{k}={float(v):.4g}" for k, v in zip(LOSS_KEYS, global_losses, strict=True))
            raise TrainingDiverged(
                f"training diverged: non-finite loss at step {step + 1} ({vals}); stopped without updating, "
                f"{self._last_checkpoint_note()}. Lower train.lr or set train.grad_clip"
            )
        self.optimizer.zero_grad(set_to_none=True)
        (losses["loss"] * (self.share * info.world_size) if info.enabled else losses["loss"]).backward()
        if cfg.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            if not bool(torch.isfinite(norm)):
                raise TrainingDiverged(
                    f"training diverged: non-finite gradient norm at step {step + 1}; stopped without updating, "
                    f"{self._last_checkpoint_note()}. Lower train.lr"
                )
        lr = cfg.lr * lr_factor(step, cfg.steps, cfg.lr_schedule, cfg.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        for k, v in zip(LOSS_KEYS, global_losses.tolist(), strict=True):
            self.running[k] = self.running.get(k, 0.0) + v
        return global_losses

    def _last_checkpoint_note(self) -> str:
        return _last_checkpoint_note(self.run_dir, self.last_saved, self.cfg)

    def _record(self, done: int, t_start: float) -> dict | None:
        """After ``done`` steps: log a history row and/or save a checkpoint when due; returns the new row."""
        cfg = self.cfg.train
        log_now = done % cfg.log_every == 0 or done == cfg.steps
        save_now = done % cfg.checkpoint_every == 0 or done == cfg.steps
        row = None
        if log_now:
            k_steps = done % cfg.log_every or cfg.log_every
            row = {"step": done, **{k: v / k_steps for k, v in self.running.items()}}
            self.history.append(row)
            self.running = {}
        if not (log_now or save_now):
            return row
        error = None
        if self.info.is_main:  # rank 0 writes; a failed write (disk full ...) stops every rank, not just this one
            try:
                if log_now:
                    _write_history(self.run_dir / HISTORY_FILE, self.history)
                if save_now:
                    self._save(done, self.prev_train_s + time.perf_counter() - t_start)
            except OSError as e:
                error = e
        D.raise_if_any_failed(error, self.info)
        if save_now:
            self.last_saved = done
        return row

    def _save(self, done: int, train_s: float) -> None:
        """Write the resume state, the weights (the EMA's when on) and config.json after ``done`` steps."""
        self.meta["train_s"] = round(train_s, 2)
        self.meta["step"] = done
        resume_state = {
            "step": done,
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
            "running": dict(self.running),
            "rng": rng_states(),
            "data": self.data_state,
            "train_s": train_s,
            "seed": self.cfg.train.seed,
            "world_size": self.info.world_size,
        }
        if self.ema is not None:
            resume_state["ema"] = self.ema.state_dict()
        save_checkpoint(
            self.run_dir,
            self.model,
            self.cfg,
            self.meta,
            resume_state,
            inference_model=self.ema.module if self.ema is not None else None,
        )


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


def load_history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / HISTORY_FILE
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


__all__ = [
    "Trainer",
    "split_samples",
    "training_samples",
    "prepare_run_dir",
    "build_backbone_from_config",
    "train_features",
    "load_history",
    "check_finite_features",
    "TrainingDiverged",
]
