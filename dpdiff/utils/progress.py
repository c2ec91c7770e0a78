"""Progress bars: every bar dpdiff shows goes through :func:`progress`, so one switch turns them all off.

Bars are off when the environment variable ``DPDIFF_NO_PROGRESS`` is set to anything but ``""``/``0``/
``false``/``no``, and after ``set_progress_enabled(False)`` (``dpdiff --no-progress`` / ``--quiet``);
otherwise tqdm draws them on stderr as usual.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["NO_PROGRESS_ENV", "ProgressLogHandler", "progress", "progress_enabled", "set_progress_enabled"]

NO_PROGRESS_ENV = "DPDIFF_NO_PROGRESS"
_switched_off = False

T = TypeVar("T")


def set_progress_enabled(enabled: bool) -> None:
    """Turn the bars of this process off (``False``) or back to the default (``True``: on unless
    ``DPDIFF_NO_PROGRESS`` says otherwise)."""
    global _switched_off
    _switched_off = not enabled


def progress_enabled() -> bool:
    """Whether bars may be shown (see the module docstring)."""
    if _switched_off:
        return False
    return os.environ.get(NO_PROGRESS_ENV, "").strip().lower() in ("", "0", "false", "no")


def progress(iterable: Iterable[T] | None = None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled when bars are off. A caller's own ``disable=True`` (e.g. on a
    worker rank) is kept either way."""
    if not progress_enabled():
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)


class ProgressLogHandler(logging.Handler):
    """A logging handler writing each record to the current ``sys.stderr`` through ``tqdm.write``, so a
    progress bar that is being drawn is cleared and redrawn below the line instead of being torn apart."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise; Handler.handleError reports it
            self.handleError(record)
