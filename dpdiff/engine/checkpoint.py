"""Checkpoints: safetensors weights + JSON config/metadata, written atomically (temp + rename).

A run folder holds ``model.safetensors`` (DPDiffAD weights and buffers), ``config.json`` (the full
Config plus the token grid and channel count) and ``train_state.pt`` (optimiser, step, RNG) for
resuming. ``load_model`` rebuilds the model from the folder alone.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import Config
from ..model.dpdiff_ad import DPDiffAD

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.pt"


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(run_dir: Path, model: DPDiffAD, cfg: Config, meta: dict[str, Any],
                    train_state: dict[str, Any] | None = None) -> None:
    run_dir = Path(run_dir)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic(run_dir / MODEL_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "dpdiff"}))
    payload = {"config": cfg.to_dict(), "in_dim": model.in_dim, "grid_size": list(model.grid_size), **meta}
    _atomic(run_dir / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))
    if train_state is not None:
        _atomic(run_dir / STATE_FILE, lambda tmp: torch.save(train_state, tmp))


def read_run_config(run_dir: Path) -> tuple[Config, dict[str, Any]]:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint config here (is {run_dir} a dpdiff run folder?)")
    try:
        payload = json.loads(path.read_text())
        cfg = Config.from_dict(payload["config"], source=str(path))
    except (json.JSONDecodeError, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: unreadable checkpoint config ({e})") from e
    return cfg, payload


def load_model(run_dir: Path, map_location: str | torch.device = "cpu") -> tuple[DPDiffAD, Config, dict[str, Any]]:
    run_dir = Path(run_dir)
    cfg, payload = read_run_config(run_dir)
    model = DPDiffAD(int(payload["in_dim"]), tuple(payload["grid_size"]), cfg.model, cfg.loss)
    wpath = run_dir / MODEL_FILE
    if not wpath.is_file():
        raise FileNotFoundError(f"{wpath}: checkpoint weights missing")
    try:
        state = load_file(str(wpath), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{wpath}: truncated or corrupt checkpoint ({e})") from e
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{wpath}: checkpoint does not match its config.json "
                         f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    for k, v in model.state_dict().items():
        if v.shape != state[k].shape:
            raise ValueError(f"{wpath}: tensor {k} has shape {tuple(state[k].shape)}, config expects {tuple(v.shape)}")
    return model.to(map_location).eval(), cfg, payload
