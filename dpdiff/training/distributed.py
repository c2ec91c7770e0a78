"""Data-parallel helpers for ``torchrun`` launches (PyTorch DistributedDataParallel).

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (plus ``MASTER_ADDR``/``MASTER_PORT``)
for every process it starts; :func:`init_distributed` reads them and joins the process group
(``nccl`` when the training device is a GPU, ``gloo`` on CPU). Without those variables (or with
``WORLD_SIZE=1``) everything here is a no-op for a single process, so the same code path trains
with one process or many.

How training uses it (see ``dpdiff/training/trainer.py``):

* feature extraction is sharded: rank r runs the backbone over its contiguous slice of the
  training images (:func:`shard_range`), then :func:`all_gather_rows` gives every rank all tokens;
* every rank draws the same global batch indices and noise from the (seed, step) generator and
  keeps its slice (:func:`shard_range` again), so the result matches a single process with the
  same ``train.batch_size``; DDP all-reduces the gradients;
* only rank 0 writes checkpoints, logs and evaluation results; errors on any rank are shared
  (:func:`raise_if_any_failed`) so that every rank stops with the same message instead of hanging.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from dpdiff.utils import errors
from dpdiff.utils.errors import ConfigError

T = TypeVar("T")

__all__ = [
    "DistInfo",
    "env_world",
    "init_distributed",
    "teardown",
    "distributed_context",
    "shard_range",
    "all_gather_rows",
    "all_reduce_sum",
    "broadcast_object",
    "barrier",
    "raise_if_any_failed",
    "on_main",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) from torchrun's environment; (0, 1, 0) when absent."""

    def _int(name: str, default: int) -> int:
        value = os.environ.get(name, "").strip()
        if not value:
            return default
        try:
            return int(value)
        except ValueError as e:
            raise ConfigError(f"environment variable {name}={value!r} is not an integer") from e

    return _int("RANK", 0), _int("WORLD_SIZE", 1), _int("LOCAL_RANK", 0)


def _device_for(device: str, local_rank: int, world_size: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and world_size > 1:
        if dev.index is not None and dev.index != local_rank:
            raise ConfigError(
                f"device {device!r} given, but with several processes per node each uses "
                f"cuda:LOCAL_RANK (this process: cuda:{local_rank}); pass --device cuda"
            )
        dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join torchrun's process group (idempotent); returns this process's rank, world and device."""
    rank, world, local_rank = env_world()
    if world <= 1:
        from dpdiff.features import resolve_device

        return DistInfo(device=resolve_device(device))
    dev = _device_for(device, local_rank, world)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend, init_method="env://", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
        )
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=dev,
        backend=dist.get_backend(),
    )


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class distributed_context:
    """``with distributed_context(device) as info:`` joins the group and leaves it at the end, unless
    the caller had already joined it (then it is left to the caller)."""

    def __init__(self, device: str = "auto"):
        self.device = device
        self._owner = False

    def __enter__(self) -> DistInfo:
        self._owner = not (dist.is_available() and dist.is_initialized())
        return init_distributed(self.device)

    def __exit__(self, *exc) -> None:
        if self._owner:
            teardown()


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous [lo, hi) slice of ``n`` items for ``rank``; sizes differ by at most one."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def _comm_device(info: DistInfo) -> torch.device:
    return info.device if info.backend == "nccl" else torch.device("cpu")


def all_gather_rows(local: torch.Tensor, n_total: int, info: DistInfo) -> torch.Tensor:
    """Concatenate every rank's rows (rank order, slices from :func:`shard_range`) on every rank (CPU)."""
    if not info.enabled:
        return local
    dev = _comm_device(info)
    sizes = [shard_range(n_total, r, info.world_size) for r in range(info.world_size)]
    rows = max(hi - lo for lo, hi in sizes)
    buf = torch.zeros((rows, *local.shape[1:]), dtype=local.dtype, device=dev)
    buf[: local.shape[0]] = local.to(dev)
    gathered = [torch.empty_like(buf) for _ in range(info.world_size)]
    dist.all_gather(gathered, buf)
    return torch.cat([g[: hi - lo].cpu() for g, (lo, hi) in zip(gathered, sizes, strict=True)])


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return x
    y = x.detach().to(_comm_device(info)).clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y.to(x.device)


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; for small things such as the resume state)."""
    if not info.enabled:
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device(info))
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.local_rank])
        else:
            dist.barrier()


def raise_if_any_failed(error: BaseException | None, info: DistInfo) -> None:
    """Collective: if any rank hit an error, every rank raises it (the lowest failing rank's
    exception type and message) instead of the others waiting forever in the next collective.

    The other ranks rebuild the type by name: the nearest :mod:`dpdiff.utils.errors` class or built-in exception in
    its MRO (so a user error stays a user error on every rank)."""
    if not info.enabled:
        if error is not None:
            raise error
        return
    mine = None if error is None else (_portable_type_name(error), str(error))
    everyone: list[Any] = [None] * info.world_size
    dist.all_gather_object(everyone, mine)
    for rank, item in enumerate(everyone):
        if item is None:
            continue
        if rank == info.rank and error is not None:
            raise error
        kind, msg = item
        exc_type = getattr(errors, kind, None) or getattr(builtins, kind, None)
        if not (isinstance(exc_type, type) and issubclass(exc_type, Exception)):
            exc_type = ValueError
        try:
            rebuilt = exc_type(f"{msg} (reported by rank {rank})")
        except TypeError:  # a type whose constructor takes other arguments
            rebuilt = ValueError(f"{msg} (reported by rank {rank})")
        raise rebuilt


def _portable_type_name(error: BaseException) -> str:
    """Name of the first class in ``error``'s MRO that every rank can rebuild (dpdiff.utils.errors or built-in)."""
    for cls in type(error).__mro__:
        if getattr(errors, cls.__name__, None) is cls or getattr(builtins, cls.__name__, None) is cls:
            return cls.__name__
    return "ValueError"  # pragma: no cover - every exception derives from a built-in one


def on_main(fn: Callable[[], T], info: DistInfo) -> T:
    """Run ``fn`` on rank 0 only and hand its result (or its error) to every rank."""
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            error = e
    raise_if_any_failed(error, info)
    return broadcast_object(result, info)
