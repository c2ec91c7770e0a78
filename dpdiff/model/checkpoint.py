"""Checkpoints: safetensors weights + JSON config/metadata + resume state, each written atomically.

A run folder holds

* ``train_state.pt``: everything a resumed run needs - step, model weights, optimiser, RNG states,
  loss history, the training images in order (the data the (seed, step) batch draws index into) and
  the config. ``--resume`` reads this file only.
* ``model.safetensors``: DPDiffAD weights and buffers (metadata ``step``), and
* ``config.json``: the full Config plus the token grid, channel count and ``step``;
  ``load_model`` rebuilds the model from these two alone (``test``/``predict``).

Each file is written to a temporary file in the folder, flushed to disk and renamed over the old one,
so a crash (even SIGKILL) leaves either the old or the new version of each file, plus at most a
stray ``.<name>.*.tmp``. ``train_state.pt`` is written first: a kill between the three writes can
leave ``model.safetensors``/``config.json`` one checkpoint older than ``train_state.pt``, never a
resume state that is behind the weights it claims, and resuming is exact either way because it never
mixes files.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from dpdiff.config import LOCATION, Config, flatten_config, is_weight_neutral, keys_with_role, weight_neutral_keys
from dpdiff.model.dpdiff_ad import DPDiffAD
from dpdiff.utils.errors import CheckpointError, ConfigError
from dpdiff.utils.io import TEMP_SUFFIX, atomic_write
from dpdiff.utils.run_files import CONFIG_FILE, MODEL_FILE, RUN_FILES, STATE_FILE  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

STATE_FORMAT = 2

#: Config keys that may change when a run is resumed: the weight-neutral keys tagged in dpdiff/config.py
#: (device, workers, logging, checkpoint interval, feature cache; the inference and evaluation sections),
#: where the inputs live (LOCATION: data.root, backbone.weights; the training images are checked against the
#: resume state) and train.steps (a run may be extended). Everything else must match the checkpoint or the
#: result would not be the run it claims.
RESUME_MUTABLE_KEYS = weight_neutral_keys() | keys_with_role(LOCATION) | frozenset({"train.steps"})


def describe_differences(diffs: list[tuple[str, Any, Any]], old: str, shown: int = 8) -> str:
    """``diffs`` ((key, old value, new value), as :func:`config_differences` gives them) as one line for an error:
    the first ``shown`` as ``key: <old> a, now b``, then how many more."""
    listed = "; ".join(f"{k}: {old} {a!r}, now {b!r}" for k, a, b in diffs[:shown])
    return listed + (f" (and {len(diffs) - shown} more)" if len(diffs) > shown else "")


def resume_may_change(key: str) -> bool:
    """True for a dotted config key that may differ from the checkpoint's on resume (RESUME_MUTABLE_KEYS, and
    any key of a test-time section, also one an older version had)."""
    return key in RESUME_MUTABLE_KEYS or is_weight_neutral(key)


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete ``.<run file>.*.tmp`` left by a write that was killed; returns what was removed."""
    removed = []
    for name in RUN_FILES:
        for p in Path(run_dir).glob(f".{name}.*{TEMP_SUFFIX}"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def rng_states() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states, storable with ``weights_only`` loading."""
    py = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict[str, Any]) -> None:
    if not states:
        return
    if "python" in states:
        v, internal, gauss = states["python"]
        random.setstate((v, tuple(internal), gauss))
    if "numpy" in states:
        s = states["numpy"]
        np.random.set_state(
            (s["kind"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached_gaussian"])
        )
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    run_dir: Path,
    model: DPDiffAD,
    cfg: Config,
    meta: dict[str, Any],
    train_state: dict[str, Any] | None = None,
    inference_model: torch.nn.Module | None = None,
) -> None:
    """Write ``train_state.pt`` (when given; it gets ``model``'s weights, config and grid added), then
    ``model.safetensors`` (the weights of ``inference_model``, e.g. the EMA, default ``model``), then
    ``config.json``, each atomically."""
    run_dir = Path(run_dir)

    def cpu_state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous().cpu().clone() for k, v in m.state_dict().items()}

    tensors = cpu_state(model)
    served = tensors if inference_model is None else cpu_state(inference_model)
    step = meta.get("step", train_state.get("step") if train_state else None)
    if train_state is not None:
        full = {
            "format": STATE_FORMAT,
            "config": cfg.to_dict(),
            "in_dim": int(model.in_dim),
            "grid_size": list(model.grid_size),
            "model": tensors,
            **train_state,
        }
        atomic_write(run_dir / STATE_FILE, lambda tmp: torch.save(full, tmp))
    st_meta = {"format": "dpdiff"} | ({"step": str(int(step))} if step is not None else {})
    atomic_write(run_dir / MODEL_FILE, lambda tmp: save_file(served, tmp, metadata=st_meta))
    payload = {"config": cfg.to_dict(), "in_dim": model.in_dim, "grid_size": list(model.grid_size), **meta}
    atomic_write(run_dir / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))


def load_train_state(run_dir: Path) -> dict[str, Any]:
    """The resume state of a run folder; a missing, truncated or foreign file is a clear error."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"cannot resume: {path} does not exist (the run stopped before its first "
            f"checkpoint, see train.checkpoint_every; start it again with --overwrite)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - zip/pickle errors of a damaged file come in many types
        raise CheckpointError(
            f"{path}: truncated or corrupt resume checkpoint ({type(e).__name__}: {e}); "
            f"start the run again with --overwrite"
        ) from e
    if not isinstance(state, dict) or "step" not in state or "optimizer" not in state:
        raise CheckpointError(f"{path}: not a dpdiff resume checkpoint (no step/optimizer state)")
    return state


def resume_config(run_dir: Path) -> Config:
    """The configuration a run was trained with (from ``train_state.pt``, else ``config.json``)."""
    state_path = Path(run_dir) / STATE_FILE
    state = load_train_state(run_dir)  # a run without it cannot be resumed anyway
    if "config" in state:
        try:
            return Config.from_dict(state["config"], source=str(state_path))
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{state_path}: unreadable config ({e})") from e
    return read_run_config(run_dir)[0]


def config_differences(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every key that may not change on resume."""
    a, b = flatten_config(saved), flatten_config(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if resume_may_change(key):
            continue
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if isinstance(va, tuple):
            va = list(va)
        if isinstance(vb, tuple):
            vb = list(vb)
        if va != vb:
            diffs.append((key, va, vb))
    return diffs


def check_resume_config(run_dir: Path, state: dict[str, Any], cfg: Config) -> None:
    """A resumed run must use the configuration it was started with (except RESUME_MUTABLE_KEYS)."""
    if "config" not in state:
        return
    saved = state["config"]
    try:  # keys added since the checkpoint was made (e.g. model.denoiser) take their defaults, as on loading
        saved = Config.from_dict(saved, source=str(Path(run_dir) / STATE_FILE)).to_dict()
    except (ValueError, TypeError):
        pass  # compared as stored: the differences are then reported below
    diffs = config_differences(saved, cfg.to_dict())
    if diffs:
        listed = describe_differences(diffs, "checkpoint")
        raise ConfigError(
            f"{Path(run_dir) / STATE_FILE}: checkpoint was made with a different configuration: "
            f"{listed}. Resume with the run's own config (omit --config), or start a new "
            f"run (--overwrite or another --output)"
        )


def read_run_config(run_dir: Path) -> tuple[Config, dict[str, Any]]:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint config here (is {run_dir} a dpdiff run folder?)")
    try:
        payload = json.loads(path.read_text())
        cfg = Config.from_dict(payload["config"], source=str(path))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint config ({e})") from e
    return cfg, payload


def build_model_from_state(
    state: dict[str, torch.Tensor], in_dim: int, grid_size, cfg: Config, source: Path
) -> DPDiffAD:
    """A DPDiffAD for ``cfg`` with ``state`` loaded; any key or shape mismatch is a ValueError naming ``source``.

    A checkpoint made before the full-rank skip existed (no ``noise_skip.weight``) loads without it; its
    rank-deficient head is then scored with the projected-error fallback (``DPDiffAD.noise_head_basis``).
    """
    if cfg.model.output_skip and cfg.model.diffusion and "noise_skip.weight" not in state:
        logger.info(
            "%s: checkpoint without the full-rank noise skip (made before issue #13); loading it with "
            "model.output_skip=false",
            source,
        )
        cfg.model.output_skip = False
    model = DPDiffAD(int(in_dim), tuple(grid_size), cfg.model, cfg.loss)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: checkpoint does not match its configuration (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); was it made with another config?"
        )
    for k, v in expected.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise CheckpointError(
                f"{source}: tensor {k} has shape {tuple(state[k].shape)}, the configuration "
                f"expects {tuple(v.shape)}; was it made with another config?"
            )
    model.load_state_dict(state, strict=True)
    return model


def load_model(run_dir: Path, map_location: str | torch.device = "cpu") -> tuple[DPDiffAD, Config, dict[str, Any]]:
    run_dir = Path(run_dir)
    cfg, payload = read_run_config(run_dir)
    wpath = run_dir / MODEL_FILE
    if not wpath.is_file():
        raise FileNotFoundError(f"{wpath}: checkpoint weights missing")
    try:
        state = load_file(str(wpath), device="cpu")
        with safe_open(str(wpath), framework="pt") as f:
            st_meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{wpath}: truncated or corrupt checkpoint ({e})") from e
    try:
        in_dim, grid = int(payload["in_dim"]), tuple(payload["grid_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{run_dir / CONFIG_FILE}: no in_dim/grid_size ({e})") from e
    model = build_model_from_state(state, in_dim, grid, cfg, wpath)
    if "step" in st_meta:
        payload = dict(payload, step=int(st_meta["step"]))  # the weights' own step wins
    return model.to(map_location).eval(), cfg, payload


__all__ = [
    "MODEL_FILE",
    "CONFIG_FILE",
    "STATE_FILE",
    "RUN_FILES",
    "save_checkpoint",
    "load_model",
    "read_run_config",
    "load_train_state",
    "resume_config",
    "check_resume_config",
    "config_differences",
    "build_model_from_state",
    "remove_stale_temp_files",
    "rng_states",
    "set_rng_states",
]
