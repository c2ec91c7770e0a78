"""The files of the scores built after training (the token bank, the image Gaussian): a few named tensors in a
safetensors file of the run folder, written atomically, and an error that says how to get the file when it is
missing."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dpdiff.utils.errors import CheckpointError
from dpdiff.utils.io import atomic_write

__all__ = ["save_run_tensors", "load_run_tensors"]


def save_run_tensors(run_dir: Path, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``tensors`` (moved to the CPU) to ``run_dir/name`` atomically."""
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(Path(run_dir) / name, lambda tmp: save_file(cpu, tmp))


def load_run_tensors(run_dir: Path, name: str, what: str, option: str, example: str) -> dict[str, torch.Tensor]:
    """The tensors of ``run_dir/name``; a missing file is a :class:`CheckpointError` saying that ``what`` is built
    by ``dpdiff train`` when ``inference.<option>`` > 0 (``example``: a value to retrain with)."""
    path = Path(run_dir) / name
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: inference.{option} > 0 needs the {what} that `dpdiff train` builds when "
            f"inference.{option} > 0 at training time; retrain with --set inference.{option}={example}, or score "
            f"with inference.{option}=0"
        )
    return load_file(str(path))
