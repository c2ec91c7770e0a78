"""Training loop for DPDiff-AD on frozen-backbone tokens (paper Eq. 19, Adam, batch 32).

The backbone runs once over the training images (``extract_features``); the loop then samples
batches of tokens. Every step's batch indices and noise come from a generator seeded by
(seed, step), so a resumed run draws exactly what an uninterrupted one would.
"""
from __future__ import annotations

import csv
import io
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..backbones import build_backbone
from ..config import Config
from ..data.dataset import ImageDataset
from ..data.mvtec import load_dataset
from ..io import atomic_write_text
from ..model.dpdiff_ad import DPDiffAD
from .checkpoint import CONFIG_FILE, STATE_FILE, load_model, save_checkpoint
from .features import channel_statistics, extract_features, resolve_device, tokens_from_maps

HISTORY_FILE = "loss_history.csv"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def prepare_run_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuse to clobber an existing run unless asked to (--overwrite) or continuing it (--resume)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and (run_dir / CONFIG_FILE).exists() and not (overwrite or resume):
        raise FileExistsError(f"{run_dir} already holds a dpdiff run; pass --resume to continue it or "
                              f"--overwrite to start again")
    if resume and not (run_dir / STATE_FILE).exists():
        raise FileNotFoundError(f"cannot resume: {run_dir / STATE_FILE} does not exist")
    run_dir.mkdir(parents=True, exist_ok=True)


def build_backbone_from_config(cfg: Config):
    b = cfg.backbone
    return build_backbone(b.name, layers=b.layers, weights=b.weights, image_size=b.image_size,
                          feature_stride=b.feature_stride)


def train_features(cfg: Config, backbone, device) -> tuple[torch.Tensor, list]:
    if not cfg.data.root:
        raise ValueError("no data root: set data.root in the config or pass --data PATH")
    samples = load_dataset(Path(cfg.data.root), cfg.data.categories, "train")
    dataset = ImageDataset(samples, cfg.backbone.image_size, backbone.mean, backbone.std, load_masks=False)
    feats = extract_features(backbone, dataset, cfg.train.feature_batch_size, device,
                             cfg.train.num_workers, desc="train features")
    return feats, samples


def train(cfg: Config, run_dir: Path, overwrite: bool = False, resume: bool = False,
          features: torch.Tensor | None = None, samples: list | None = None) -> Path:
    """Train one unified model on all configured categories; returns the run folder.

    ``features`` (N, C, h, w) may be passed in to skip the backbone (benchmarks reuse them).
    """
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, overwrite, resume)
    seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    if features is None:
        backbone = build_backbone_from_config(cfg)
        t0 = time.perf_counter()
        features, samples = train_features(cfg, backbone, device)
        extract_s = time.perf_counter() - t0
        del backbone
    else:
        extract_s = 0.0
    n, c, h, w = features.shape
    categories = sorted({s.category for s in samples}) if samples else (cfg.data.categories or [])

    if resume:
        model, _, _ = load_model(run_dir, device)
        state = torch.load(run_dir / STATE_FILE, map_location="cpu", weights_only=False)
        start_step = int(state["step"])
        history = state.get("history", [])
    else:
        model = DPDiffAD(c, (h, w), cfg.model, cfg.loss)
        mean, std = channel_statistics(features)
        model.set_token_statistics(mean, std)
        model.to(device)
        start_step, history, state = 0, [], None
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])

    meta = {"categories": categories, "num_train_images": n, "feature_extraction_s": round(extract_s, 2)}
    bs = min(cfg.train.batch_size, n)
    t_start = time.perf_counter()
    pbar = tqdm(range(start_step, cfg.train.steps), desc="train", initial=start_step, total=cfg.train.steps,
                mininterval=2.0)
    running: dict[str, float] = {}
    for step in pbar:
        g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
        idx = torch.randint(0, n, (bs,), generator=g)
        tokens = tokens_from_maps(features[idx].float()).to(device)
        g_dev = g if device.type == "cpu" else torch.Generator(device).manual_seed(cfg.train.seed * 1_000_003 + step)
        losses = model.training_losses(tokens, g_dev)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        done = step + 1
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            k_steps = done % cfg.train.log_every or cfg.train.log_every
            row = {"step": done, **{k: v / k_steps for k, v in running.items()}}
            history.append(row)
            running = {}
            pbar.set_postfix(loss=f"{row['loss']:.4f}", diff=f"{row['diff']:.4f}")
            _write_history(run_dir / HISTORY_FILE, history)
        if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps:
            meta["train_s"] = round(time.perf_counter() - t_start, 2)
            meta["step"] = done
            save_checkpoint(run_dir, model, cfg, meta,
                            {"step": done, "optimizer": optimizer.state_dict(), "history": history})
    if start_step >= cfg.train.steps:  # nothing left to do, keep files as they are
        return run_dir
    _plot_history(run_dir, history)
    return run_dir


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


__all__ = ["train", "prepare_run_dir", "build_backbone_from_config", "train_features", "load_history"]
