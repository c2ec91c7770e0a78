"""The one place for file-writing helpers: atomic writes, directory fsync, JSON conversion, file-name slugs.

Atomic write (:func:`atomic_write` and its text/bytes/JSON forms): the data goes into a temporary file
``.<name>.<random>.tmp`` in the destination folder, which is flushed to disk (``fsync``), renamed onto
the target (``os.replace``, atomic on POSIX and Windows) and then the folder itself is fsync'ed so the
rename survives a power cut. A reader never sees a half-written file: a crash (even SIGKILL) leaves
either the old file or the new one, plus at most a stray ``.<name>.*.tmp`` (see
:func:`dpdiff.model.checkpoint.remove_stale_temp_files`).

This module imports nothing from dpdiff.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "fsync_dir",
    "new_file_mode",
    "to_jsonable",
    "slugify",
    "TEMP_SUFFIX",
]

#: Suffix of the temporary files of an atomic write (``.<name>.<random>.tmp``).
TEMP_SUFFIX = ".tmp"


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (e.g. a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows has no directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    """The process umask, read without changing it where the OS tells it (Linux ``/proc/self/status``); else
    by the set-and-restore idiom."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: 0666 minus the umask (0644 under umask 022)."""
    return 0o666 & ~_current_umask()


def atomic_write(path: str | os.PathLike, writer: Callable[[str], Any]) -> Path:
    """``writer(tmp_path)`` writes the whole file at ``tmp_path`` (a new empty file in ``path``'s folder);
    it is then fsync'ed, renamed onto ``path`` and the folder fsync'ed. On any error (``writer``'s included)
    the temporary file is removed and the old ``path``, if any, is untouched.

    The file gets the mode any program's new file would (:func:`new_file_mode`), not the 0600 of the
    temporary file, so a model or report written by one account can be read by a service account.
    Parent folders are created when missing. Returns ``path``. Example:
    ``atomic_write(p, lambda tmp: torch.save(state, tmp))``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, new_file_mode())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def to_jsonable(obj: Any, fallback: Callable[[Any], Any] | None = None) -> Any:
    """``obj`` with numpy/torch scalars and arrays, paths, tuples and sets turned into plain JSON types
    (recursively; dict keys become strings).

    Any other object is returned as it is (``json.dumps`` then rejects it), or as ``fallback(obj)``
    when given (e.g. ``repr`` for a fingerprint that must never fail). Non-finite floats stay: ``json``
    writes them as ``NaN``/``Infinity`` and reads them back.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, fallback) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v, fallback) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if callable(getattr(obj, "tolist", None)):  # numpy/torch scalars and arrays, without importing them here
        return to_jsonable(obj.tolist(), fallback)
    return obj if fallback is None else fallback(obj)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Serialise ``obj`` as JSON (:func:`to_jsonable` first) and write it atomically."""
    text = json.dumps(to_jsonable(obj), indent=indent, sort_keys=False) + "\n"
    return atomic_write_text(path, text)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slugify(name: Any, default: str = "x", max_length: int | None = None) -> str:
    """``name`` as a safe file-name part: every run of characters other than ASCII letters, digits, ``.``,
    ``_`` and ``-`` becomes one ``_``; leading/trailing ``.`` and ``_`` are dropped (no hidden files), the
    result is cut to ``max_length`` characters, and ``default`` stands in for an empty result.

    ``slugify("screw/thread side")`` -> ``"screw_thread_side"``.
    """
    slug = _UNSAFE.sub("_", str(name)).strip("._")
    if max_length is not None:
        slug = slug[:max_length]
    return slug or default
