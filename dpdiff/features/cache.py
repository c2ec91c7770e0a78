"""On-disk cache of frozen-backbone features: extract once, memory-map ever after.

The backbone is a pure function of (weights, options, image), so its fp16 feature maps can be kept
on disk and reused by every later run that asks for the same thing.

Layout (``root`` = ``FeatureCache(root)``, default ``$DPDIFF_CACHE``, else
``$XDG_CACHE_HOME/dpdiff/features``, else ``~/.cache/dpdiff/features``)::

    root/weights_sha256.json                 memo: weights file (path, size, mtime_ns) -> sha256
    root/<backbone>-<size>-<keyhash>/        one folder per backbone key (<size>: S, or HxW)
        key.json                             the key, for people (the folder name is its hash)
        shard-<id>.npy                       fp16 maps (n, C, h, w), NumPy .npy, read memory-mapped
        shard-<id>.json                      index: the n image identities, in row order

Key (``backbone_fingerprint``): backbone class, name, layers, feature stride, local aggregation,
patch size, backbone image size, output channels, normalisation mean/std, sha256 of the weights
file (``backbone.weights_path``; a backbone without one is hashed from its state dict), the
requested image geometry (input size; resize mode and region of interest unless plain, so a cache made at
another geometry is never reused), the caller's ``backbone_key`` dict, torch and timm versions, and a hash of
the source files that define the extractor and the image preprocessing. Any change selects
another folder, i.e. invalidates.

Image identity: (absolute resolved path, size in bytes, mtime_ns), taken *before* the image is read,
so an image edited during extraction is re-extracted next time, never served stale. A tile (``data.tiling``: a
sample with a ``crop``) is keyed per tile: its path gets ``#tile=x0,y0,x1,y1`` appended (:func:`item_identity`).

Crash safety: a shard's data is written to a hidden temp file, fsync'ed, renamed to its final name
(``dpdiff.utils.io.atomic_write``), and only then its index is written (atomically too). Lookups read
indexes only, so a crash at any point leaves nothing visible but complete shards (at most a stray temp or
index-less data file, removed by :meth:`FeatureCache.prune`). Concurrent writers never collide (unique
shard ids); two processes missing the same images may both extract them (``lock=True``, the default, serialises
writers of one key with ``flock`` where available, so the second one finds them cached).

RAM: extraction streams batches to disk (nothing accumulates in memory) and :class:`FeatureStore`
(:mod:`dpdiff.features.store`, the shard format) reads through ``np.memmap``: only the rows asked for are
copied into RAM.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dpdiff.data.geometry import ImageGeometry, as_geometry
from dpdiff.data.types import Sample
from dpdiff.features.store import FeatureStore, ShardWriter
from dpdiff.utils.io import TEMP_SUFFIX, atomic_write, atomic_write_json, slugify, to_jsonable

if TYPE_CHECKING:
    from dpdiff.backbones.base import FeatureExtractor

__all__ = [
    "FeatureCache",
    "FeatureStore",
    "CACHE_ENV",
    "default_cache_root",
    "file_identity",
    "item_identity",
    "backbone_fingerprint",
    "weights_sha256",
]

CACHE_ENV = "DPDIFF_CACHE"
FORMAT_VERSION = 1
WEIGHTS_MEMO = "weights_sha256.json"
_BACKBONE_ATTRS = (
    "name",
    "layers",
    "feature_stride",
    "local_aggregation",
    "patch_size",
    "image_size",
    "out_channels",
    "stage_channels",
    "mean",
    "std",
)


def default_cache_root() -> Path:
    """``$DPDIFF_CACHE``, else ``$XDG_CACHE_HOME/dpdiff/features``, else ``~/.cache/dpdiff/features``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dpdiff" / "features"


def file_identity(path: str | os.PathLike) -> tuple[str, int, int]:
    """(absolute resolved path, size, mtime_ns) of an existing file."""
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {str(path)!r} does not exist") from None
    return (str(p), int(st.st_size), int(st.st_mtime_ns))


#: What follows an image's path in the identity of one of its tiles (:func:`item_identity`).
TILE_MARK = "#tile="


def item_identity(sample: Sample) -> tuple[str, int, int]:
    """The cache identity of a sample: its file's (:func:`file_identity`), the tile box appended to the path
    when the sample is a tile (``crop``), so each tile of an image is a row of its own."""
    path, size, mtime_ns = file_identity(sample.image_path)
    if sample.crop is None:
        return path, size, mtime_ns
    return f"{path}{TILE_MARK}{','.join(str(int(v)) for v in sample.crop)}", size, mtime_ns


def _sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _read_json(path: Path) -> dict | None:
    try:
        with open(path) as fh:
            d = json.load(fh)
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def weights_sha256(path: str | os.PathLike, memo_file: str | os.PathLike | None = None) -> str:
    """sha256 of a weights file's content, memoised in ``memo_file`` (JSON) under
    (resolved path, size, mtime_ns), so a large file is hashed once until it changes."""
    path, size, mtime_ns = file_identity(path)
    memo = _read_json(Path(memo_file)) if memo_file else None
    entry = (memo or {}).get(path)
    if (
        isinstance(entry, dict)
        and entry.get("size") == size
        and entry.get("mtime_ns") == mtime_ns
        and isinstance(entry.get("sha256"), str)
    ):
        return entry["sha256"]
    digest = _sha256_file(Path(path))
    if memo_file:
        memo = _read_json(Path(memo_file)) or {}  # re-read: another process may have added entries
        memo[path] = {"size": size, "mtime_ns": mtime_ns, "sha256": digest}
        try:
            atomic_write_json(memo_file, memo)
        except OSError:  # a read-only cache still works, it only hashes again next time
            pass
    return digest


def _state_dict_sha256(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _code_sha256(backbone: torch.nn.Module) -> str:
    """Hash of the source files defining the extractor's output and the image preprocessing."""
    import inspect

    from dpdiff.backbones import base as _base
    from dpdiff.data import dataset as _dataset
    from dpdiff.data import geometry as _geometry
    from dpdiff.data import images as _images

    files = set()
    for obj in (type(backbone), _base, _dataset, _geometry, _images):
        try:
            f = inspect.getsourcefile(obj)
        except TypeError:
            f = None
        if f:
            files.add(os.path.abspath(f))
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(os.path.basename(f).encode())
        try:
            h.update(Path(f).read_bytes())
        except OSError:
            h.update(b"<unreadable>")
    return h.hexdigest()


def backbone_fingerprint(
    backbone: torch.nn.Module,
    image_size: int | Sequence[int] | ImageGeometry,
    backbone_key: dict | None = None,
    memo_file: str | os.PathLike | None = None,
) -> dict:
    """Everything that determines the cached maps (see the module docstring), as a JSON-able dict.
    ``image_size``: the image geometry (:class:`~dpdiff.data.geometry.ImageGeometry`: input size, resize mode,
    region of interest) or a size (the plain geometry); a plain square one keys as ``image_size: S`` alone."""
    key: dict = {
        "format": FORMAT_VERSION,
        "dtype": "float16",
        **as_geometry(image_size).input_key(),
        "class": f"{type(backbone).__module__}.{type(backbone).__qualname__}",
    }
    for attr in _BACKBONE_ATTRS:  # under their own names: backbone.image_size is not the requested size
        if hasattr(backbone, attr):
            key[f"backbone.{attr}"] = to_jsonable(getattr(backbone, attr), fallback=repr)
    wpath = getattr(backbone, "weights_path", None)
    if wpath:
        key["weights_sha256"] = weights_sha256(wpath, memo_file)
    else:
        key["state_dict_sha256"] = _state_dict_sha256(backbone)
    key["code_sha256"] = _code_sha256(backbone)
    key["torch"] = torch.__version__
    try:
        import timm

        key["timm"] = timm.__version__
    except ImportError:  # pragma: no cover - timm is a dependency
        key["timm"] = None
    key["options"] = to_jsonable(dict(backbone_key or {}), fallback=repr)
    return key


def _key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


@contextlib.contextmanager
def _locked(path: Path, enabled: bool):
    """Exclusive ``flock`` on ``path`` (no-op where unsupported or disabled)."""
    if not enabled:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        except OSError:  # e.g. a filesystem without flock: carry on unlocked
            pass
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


class FeatureCache:
    """Extract-once cache of backbone maps (see the module docstring).

    ``FeatureCache(root).get(backbone, backbone_key, samples, image_size)`` returns a
    :class:`FeatureStore` in the order of ``samples``; images not cached yet under this key (or changed
    since: other size or mtime) are extracted with ``extract_features`` into one new shard.
    """

    def __init__(self, root: str | os.PathLike | None = None, lock: bool = True):
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        self.lock = bool(lock)
        #: images extracted by the last ``get`` (0 when everything was cached)
        self.last_extracted = 0

    @property
    def weights_memo(self) -> Path:
        return self.root / WEIGHTS_MEMO

    def key(
        self,
        backbone: torch.nn.Module,
        image_size: int | Sequence[int] | ImageGeometry,
        backbone_key: dict | None = None,
    ) -> dict:
        return backbone_fingerprint(backbone, image_size, backbone_key, self.weights_memo)

    def key_dir(self, key: dict) -> Path:
        backbone = slugify(key.get("backbone.name", "backbone"), default="backbone", max_length=60)
        size = key["image_size"]
        side = str(int(size)) if isinstance(size, int) else "x".join(str(int(v)) for v in size)
        name = f"{backbone}-{side}-{_key_hash(key)}"
        return self.root / name

    # ---------------------------------------------------------------- reading
    @staticmethod
    def _index_files(key_dir: Path) -> list[Path]:
        if not key_dir.is_dir():
            return []
        return sorted(p for p in key_dir.glob("shard-*.json") if not p.name.startswith("."))

    def _load(self, key_dir: Path):
        """(shard arrays, shard paths, {identity: (shard no, row)}) of every complete shard."""
        arrays: list[np.ndarray] = []
        paths: list[Path] = []
        table: dict[tuple[str, int, int], tuple[int, int]] = {}
        item_shape = None
        for ipath in self._index_files(key_dir):
            index = _read_json(ipath)
            if not index or index.get("format") != FORMAT_VERSION:
                continue
            dpath = key_dir / str(index.get("data", ""))
            try:
                arr = np.load(dpath, mmap_mode="r")
            except (OSError, ValueError):
                continue  # data removed or unreadable: the shard is ignored (prune() removes it)
            items = index.get("items") or []
            if (
                arr.dtype != np.float16
                or arr.ndim != 4
                or arr.shape[0] != len(items)
                or list(arr.shape) != list(index.get("shape", []))
            ):
                continue
            if item_shape is None:
                item_shape = arr.shape[1:]
            elif arr.shape[1:] != item_shape:
                continue
            k = len(arrays)
            arrays.append(arr)
            paths.append(dpath)
            for row, it in enumerate(items):
                table[(str(it[0]), int(it[1]), int(it[2]))] = (k, row)  # later shards win
        return arrays, paths, table

    # ---------------------------------------------------------------- writing
    def _write_shard(
        self,
        key_dir: Path,
        key: dict,
        backbone: FeatureExtractor,
        samples: list[Sample],
        idents: list[tuple[str, int, int]],
        image_size: int | Sequence[int] | ImageGeometry,
        batch_size: int,
        device,
        num_workers: int,
        desc: str,
    ) -> None:
        from dpdiff.data.dataset import ImageDataset
        from dpdiff.features.extract import extract_features

        sid = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        data_name, index_name = f"shard-{sid}.npy", f"shard-{sid}.json"
        final = key_dir / data_name
        dataset = ImageDataset(samples, image_size, backbone.mean, backbone.std, load_masks=False)
        item_shape: list[tuple[int, ...]] = []

        def write_rows(tmp: str) -> None:  # streams the maps into the temp file atomic_write renames
            writer = ShardWriter(Path(tmp), len(samples))
            try:
                extract_features(backbone, dataset, batch_size, device, num_workers, desc=desc, out=writer)
                writer.close()
            except BaseException:
                writer.abort()
                raise
            if writer.item_shape is None:  # pragma: no cover - close() raises when no row was written
                raise ValueError(f"shard {data_name}: no feature map written")
            item_shape.append(writer.item_shape)

        atomic_write(final, write_rows)
        try:
            index = {
                "format": FORMAT_VERSION,
                "data": data_name,
                "shape": [len(samples), *item_shape[0]],
                "dtype": "float16",
                "key": _key_hash(key),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "items": [list(i) for i in idents],
            }
            atomic_write_json(key_dir / index_name, index)  # the shard becomes visible here, last
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(final)
            raise

    def get(
        self,
        backbone: FeatureExtractor,
        backbone_key: dict | None,
        samples: Sequence[Sample | str | os.PathLike],
        image_size: int | Sequence[int] | ImageGeometry,
        batch_size: int = 16,
        device: torch.device | str = "cpu",
        num_workers: int = 0,
        desc: str = "features (cache)",
    ) -> FeatureStore:
        """Maps of ``samples`` (``Sample``s or image paths) at ``image_size`` (a size or an
        :class:`~dpdiff.data.geometry.ImageGeometry`, part of the key), extracting what is missing.

        ``backbone_key``: extra options to key on (e.g. the backbone config section); everything the
        backbone object itself knows (name, layers, stride, weights hash ...) is keyed on anyway.
        """
        wanted = [s if isinstance(s, Sample) else Sample(Path(s), None, 0, "good", "") for s in samples]
        if not wanted:
            raise ValueError("cannot get features for an empty list of images")
        idents = [item_identity(s) for s in wanted]  # before reading: see module docstring
        key, key_dir = self._open_key_dir(backbone, image_size, backbone_key)
        self.last_extracted = 0
        arrays, paths, table = self._load(key_dir)
        if any(i not in table for i in idents):
            with _locked(key_dir / ".lock", self.lock):
                arrays, paths, table = self._load(key_dir)  # another process may have added them meanwhile
                missing: dict[tuple[str, int, int], Sample] = {}
                for s, ident in zip(wanted, idents, strict=True):
                    if ident not in table and ident not in missing:
                        missing[ident] = s
                if missing:
                    self._remove_stale_temps(key_dir)
                    self._write_shard(
                        key_dir,
                        key,
                        backbone,
                        list(missing.values()),
                        list(missing),
                        image_size,
                        batch_size,
                        device,
                        num_workers,
                        desc,
                    )
                    self.last_extracted = len(missing)
                    arrays, paths, table = self._load(key_dir)
        return self._store(key_dir, idents, arrays, paths, table)

    def _open_key_dir(
        self, backbone: FeatureExtractor, image_size: int | Sequence[int] | ImageGeometry, backbone_key: dict | None
    ) -> tuple[dict, Path]:
        """(key, key folder) of this backbone and image size, the folder (and its ``key.json``) made if new."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(
                f"feature cache folder {str(self.root)!r} cannot be created ({e}); choose another "
                f"with ${CACHE_ENV} / --cache-dir or turn the cache off"
            ) from e
        key = self.key(backbone, image_size, backbone_key)
        key_dir = self.key_dir(key)
        key_dir.mkdir(exist_ok=True)
        if not (key_dir / "key.json").exists():
            atomic_write_json(key_dir / "key.json", key)
        return key, key_dir

    @staticmethod
    def _store(
        key_dir: Path,
        idents: list[tuple[str, int, int]],
        arrays: list[np.ndarray],
        paths: list[Path],
        table: dict[tuple[str, int, int], tuple[int, int]],
    ) -> FeatureStore:
        """The :class:`FeatureStore` of the images ``idents``, in their order, over the shards that hold them."""
        lost = [i for i in idents if i not in table]
        if lost:  # pragma: no cover - only if another process deletes shards under us
            raise RuntimeError(
                f"feature cache {key_dir}: {len(lost)} image(s) vanished from the cache, e.g. {lost[0][0]}"
            )
        used = sorted({table[i][0] for i in idents})
        remap = {k: j for j, k in enumerate(used)}
        shard_of = np.array([remap[table[i][0]] for i in idents], dtype=np.int32)
        row_of = np.array([table[i][1] for i in idents], dtype=np.int64)
        return FeatureStore([arrays[k] for k in used], shard_of, row_of, idents, [paths[k] for k in used])

    # ---------------------------------------------------------------- housekeeping
    @staticmethod
    def _remove_stale_temps(key_dir: Path, max_age_s: float = 24 * 3600) -> int:
        now, n = time.time(), 0
        for p in key_dir.glob(f".*{TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > max_age_s:
                    p.unlink()
                    n += 1
        return n

    def prune(self, max_age_s: float = 3600.0) -> dict:
        """Delete what no lookup can use: temp files and index-less data files older than
        ``max_age_s`` (crash leftovers), shards whose data is truncated or missing, and shards none
        of whose images still exist unchanged.
        Returns counts. Safe while other processes read (they keep their open maps)."""
        counts = {"temp_files": 0, "orphan_data": 0, "broken_shards": 0, "dead_shards": 0}
        if not self.root.is_dir():
            return counts
        now = time.time()
        for key_dir in (p for p in self.root.iterdir() if p.is_dir()):
            counts["temp_files"] += self._remove_stale_temps(key_dir, max_age_s)
            indexed = set()
            for ipath in self._index_files(key_dir):
                index = _read_json(ipath) or {}
                data = key_dir / str(index.get("data", ""))
                indexed.add(data.name)
                items = index.get("items") or []
                try:
                    arr = np.load(data, mmap_mode="r")
                    ok = arr.shape[0] == len(items) and list(arr.shape) == list(index.get("shape", []))
                    del arr
                except (OSError, ValueError):
                    ok = False
                if not ok:  # truncated or missing data behind an index: never served, so remove it
                    ipath.unlink(missing_ok=True)
                    data.unlink(missing_ok=True)
                    counts["broken_shards"] += 1
                    continue
                alive = False
                for it in items:
                    try:
                        path = str(it[0]).partition(TILE_MARK)[0]  # a tile lives as long as its image
                        alive = file_identity(path) == (path, int(it[1]), int(it[2]))
                    except (FileNotFoundError, OSError, IndexError, ValueError):
                        alive = False
                    if alive:
                        break
                if not alive:
                    ipath.unlink(missing_ok=True)  # index first: the shard disappears atomically
                    data.unlink(missing_ok=True)
                    counts["dead_shards"] += 1
            for dpath in key_dir.glob("shard-*.npy"):
                with contextlib.suppress(OSError):
                    if dpath.name not in indexed and now - dpath.stat().st_mtime > max_age_s:
                        dpath.unlink()
                        counts["orphan_data"] += 1
        return counts

    def size_bytes(self) -> int:
        """Disk space used by the cache."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) if self.root.is_dir() else 0
