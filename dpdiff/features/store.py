"""The on-disk format of the feature cache's shards: :class:`ShardWriter` streams fp16 maps into a ``.npy`` file,
:class:`FeatureStore` reads one or more of them back memory-mapped, in the order of the requested samples
(:mod:`dpdiff.features.cache` keys, writes and finds the shards).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["FeatureStore", "ShardWriter"]


class ShardWriter:
    """Sequential ``.npy`` writer with ``w[a:b] = maps`` (what ``extract_features(out=...)`` does):
    the header is written on the first batch, then raw fp16 rows; nothing is kept in RAM."""

    def __init__(self, path: Path, n: int):
        self.path, self.n, self.pos = path, int(n), 0
        self.item_shape: tuple[int, ...] | None = None
        self._fh = open(path, "wb")

    def __setitem__(self, sl: slice, value: torch.Tensor) -> None:
        value = torch.as_tensor(value)
        if value.dtype != torch.float16:
            raise TypeError(f"shard rows must be float16, got {value.dtype}")
        if (
            not isinstance(sl, slice)
            or sl.start != self.pos
            or (sl.stop is not None and sl.stop != self.pos + len(value))
        ):
            raise ValueError(f"shard rows must be written in order: expected [{self.pos}:...], got {sl}")
        if self.item_shape is None:
            self.item_shape = tuple(value.shape[1:])
            header = {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                "fortran_order": False,
                "shape": (self.n, *self.item_shape),
            }
            np.lib.format.write_array_header_1_0(self._fh, header)
        elif tuple(value.shape[1:]) != self.item_shape:
            raise ValueError(f"feature map shape changed within a shard: {self.item_shape} -> {tuple(value.shape[1:])}")
        if self.pos + len(value) > self.n:
            raise ValueError(f"more rows than announced ({self.n})")
        self._fh.write(value.contiguous().numpy().tobytes())
        self.pos += len(value)

    def close(self) -> None:
        if self._fh.closed:
            return
        try:
            if self.pos != self.n or self.item_shape is None:
                raise ValueError(f"shard {self.path.name}: {self.pos} of {self.n} rows written")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        finally:
            self._fh.close()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class FeatureStore:
    """Read-only view of cached fp16 maps ``(N, C, h, w)``, in the order of the requested samples,
    over one or more memory-mapped shards (``np.memmap``): indexing copies only the rows asked for.

    Drop-in for the ``features`` tensor of ``train``/``score_dataset``: ``store.shape``,
    ``len(store)``, ``store[i]``, ``store[a:b]``, ``store[long_tensor]``, ``store[ndarray]`` all
    return ``torch.float16`` tensors (fresh copies, safe to modify).
    """

    dtype = torch.float16

    def __init__(
        self,
        shards: Sequence[np.ndarray],
        shard_of: np.ndarray,
        row_of: np.ndarray,
        identities: Sequence[tuple[str, int, int]] | None = None,
        shard_paths: Sequence[Path] | None = None,
    ):
        if not shards:
            raise ValueError("a FeatureStore needs at least one shard")
        item = tuple(shards[0].shape[1:])
        for s in shards:
            if tuple(s.shape[1:]) != item:
                raise ValueError(f"shards disagree on the map shape: {item} vs {tuple(s.shape[1:])}")
        self.shards = list(shards)
        self._shard = np.asarray(shard_of, dtype=np.int32)
        self._row = np.asarray(row_of, dtype=np.int64)
        if self._shard.shape != self._row.shape or self._shard.ndim != 1:
            raise ValueError("shard_of and row_of must be 1-D arrays of equal length")
        self.identities = list(identities) if identities is not None else None
        self.shard_paths = list(shard_paths) if shard_paths is not None else None
        self.shape: tuple[int, int, int, int] = (int(self._row.shape[0]), *item)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the maps this store covers (fp16)."""
        return int(np.prod(self.shape, dtype=np.int64)) * 2

    def __repr__(self) -> str:
        return f"FeatureStore(shape={self.shape}, dtype=float16, shards={len(self.shards)})"

    def _positions(self, idx) -> np.ndarray:
        n = len(self)
        if isinstance(idx, slice):
            return np.arange(n, dtype=np.int64)[idx]
        if torch.is_tensor(idx):
            idx = idx.detach().to("cpu")
            if idx.dtype == torch.bool:
                idx = torch.nonzero(idx).flatten()
            elif idx.is_floating_point() or idx.is_complex():
                raise IndexError(f"FeatureStore indices must be integers, got {idx.dtype}")
            idx = idx.numpy()
        pos = np.asarray(idx)
        if pos.dtype == bool:
            if pos.shape != (n,):
                raise IndexError(f"boolean index of shape {pos.shape} does not fit {n} items")
            pos = np.nonzero(pos)[0]
        if pos.dtype.kind not in "iu":
            raise IndexError(f"FeatureStore indices must be integers, got {pos.dtype}")
        if pos.ndim != 1:
            raise IndexError(f"FeatureStore takes a 1-D index, got shape {pos.shape}")
        pos = pos.astype(np.int64)
        if pos.size and (pos.min() < -n or pos.max() >= n):
            bad = pos[(pos < -n) | (pos >= n)][0]
            raise IndexError(f"index {bad} is out of range for a FeatureStore of {n} items")
        return np.where(pos < 0, pos + n, pos)

    def _gather(self, pos: np.ndarray) -> np.ndarray:
        out = np.empty((len(pos), *self.shape[1:]), dtype=np.float16)
        if not len(pos):
            return out
        sid, rows = self._shard[pos], self._row[pos]
        if (sid == sid[0]).all():
            arr = self.shards[int(sid[0])]
            if len(rows) > 1 and (np.diff(rows) == 1).all():  # contiguous: one slice read
                out[:] = arr[rows[0] : rows[-1] + 1]
            else:
                out[:] = arr[rows]
            return out
        for s in np.unique(sid):
            m = sid == s
            out[m] = self.shards[int(s)][rows[m]]
        return out

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, (int, np.integer)) or (
            torch.is_tensor(idx) and idx.ndim == 0 and not idx.is_floating_point() and idx.dtype != torch.bool
        ):
            i = int(idx)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} is out of range for a FeatureStore of {len(self)} items")
            return torch.from_numpy(self._gather(np.array([i % len(self)], dtype=np.int64))[0])
        if isinstance(idx, tuple):
            raise IndexError("FeatureStore supports indexing along the first axis only; index the returned tensor")
        return torch.from_numpy(self._gather(self._positions(idx)))

    def __getstate__(self) -> dict:
        """Pickles as shard file paths (e.g. to DataLoader workers), never as the data itself."""
        if self.shard_paths is None:
            raise TypeError("a FeatureStore built without shard paths cannot be pickled")
        state = dict(self.__dict__)
        state["shards"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.shard_paths is None:  # pragma: no cover - __getstate__ refuses to pickle such a store
            raise TypeError("a FeatureStore built without shard paths cannot be unpickled")
        self.shards = [np.load(p, mmap_mode="r") for p in self.shard_paths]

    def to_tensor(self, chunk: int = 256) -> torch.Tensor:
        """Everything as one in-RAM fp16 tensor (what the store exists to avoid; for small sets)."""
        out = torch.empty(self.shape, dtype=torch.float16)
        for i in range(0, len(self), chunk):
            out[i : i + chunk] = self[i : i + chunk]
        return out
