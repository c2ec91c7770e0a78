"""Helpers shared by every dataset reader: the layout error, path checks, the category list, the training-row
filter.

This module imports nothing else from :mod:`dpdiff.data`, so every reader (and the format registry,
:mod:`dpdiff.data.readers.registry`) can import it without creating an import cycle. :class:`LayoutError` is
re-exported by :mod:`dpdiff.data.readers.generic`, :mod:`dpdiff.data.readers` and :mod:`dpdiff.data`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from dpdiff.utils.errors import ConfigError, DataError

__all__ = ["DataError", "LayoutError", "expect_dir", "expect_file", "keep_normal_training", "resolve_categories"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class LayoutError(DataError, FileNotFoundError):
    """A dataset root does not match the expected on-disk layout.

    ``path`` is the first offending path (the one that was expected and is missing, or that has
    the wrong content). A :class:`~dpdiff.utils.errors.DataError` (so a ``ValueError``) and a
    :class:`FileNotFoundError`, so callers catching either (as for :mod:`dpdiff.data.readers.mvtec`) also catch it.
    """

    def __init__(self, message: str, path: Path | str | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)

    def __str__(self) -> str:  # FileNotFoundError would otherwise format errno-style args
        return str(self.args[0]) if self.args else ""


def _expect(path: Path, what: str, kind: str, other: str, is_kind: Callable[[Path], bool]) -> Path:
    path = Path(path)
    if not is_kind(path):
        state = f"is a {other}, not a {kind}" if path.exists() else "does not exist"
        raise LayoutError(f"expected {kind} {str(path)!r} {what} ({state})", path)
    return path


def expect_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory, else :class:`LayoutError` ``"expected directory <path> <what> (why)"``."""
    return _expect(path, what, "directory", "file", Path.is_dir)


def expect_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else :class:`LayoutError` ``"expected file <path> <what> (why)"``."""
    return _expect(path, what, "file", "directory", Path.is_file)


def resolve_categories(categories: Sequence[str] | str | None, list_all: Callable[[], list[str]]) -> list[str]:
    """The categories a reader loads: every one of ``list_all()`` when ``categories`` is None, ``[categories]``
    for one name, else the given names in their order; a name given twice is a :class:`ConfigError`."""
    if categories is None:
        names = list(list_all())
    elif isinstance(categories, str):
        names = [categories]
    else:
        names = list(categories)
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate categories in {names}")
    return names


def keep_normal_training(rows: Iterable[T], is_anomalous, source: str, log: logging.Logger | None = None) -> list[T]:
    """The rows of a training split that are normal; anomalous ones are left out and counted.

    Unsupervised training must never see anomalies, but some split files list them in their
    training rows (VisA ``2cls_highshot.csv`` / ``2cls_fewshot.csv``, Real-IAD
    ``realiad_jsons_fuiad_0.x``). ``is_anomalous(row)`` decides; when any row is left out a
    warning ``left out N anomalous training row(s) of <source>`` is logged (on ``log``, default
    this module's logger).
    """
    kept: list[T] = []
    dropped = 0
    for r in rows:
        if is_anomalous(r):
            dropped += 1
        else:
            kept.append(r)
    if dropped:
        (log or logger).warning(
            "left out %d anomalous training row%s of %s (training uses the normal rows only; %d kept)",
            dropped,
            "" if dropped == 1 else "s",
            source,
            len(kept),
        )
    return kept
