"""The errors dpdiff raises for a problem of the user's input, as opposed to a bug.

Every class derives from :class:`DpdiffError` *and* from the built-in type the code raised before it
existed (``ValueError``, ``FileExistsError`` ...), so ``except ValueError`` keeps working. The command
line (:func:`dpdiff.cli.main`) turns a :class:`DpdiffError` (and a missing/existing file) into one line
``dpdiff: error: ...`` and exit status 2; any other exception is a bug and keeps its traceback.

This module is the bottom layer: it imports nothing from dpdiff, so every module can use it.
"""

from __future__ import annotations

__all__ = [
    "DpdiffError",
    "ConfigError",
    "ConfigKeyError",
    "UsageError",
    "DataError",
    "CheckpointError",
    "RunFolderError",
    "MissingDependencyError",
    "TrainingDiverged",
]


class DpdiffError(Exception):
    """Base class: the message says what is wrong, naming the file/key, and what to do."""


class ConfigError(DpdiffError, ValueError):
    """A configuration value (YAML preset, ``--set``, grid file, test-time override) is invalid."""


class ConfigKeyError(ConfigError, KeyError):
    """A configuration key that does not exist or may not be changed here (also a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UsageError(DpdiffError, ValueError):
    """Command-line options that contradict each other or are missing."""


class DataError(DpdiffError, ValueError):
    """Input data (a dataset folder, an image, a split or results file) is missing pieces or unreadable."""


class CheckpointError(DpdiffError, ValueError):
    """A weights file (run checkpoint or backbone weights) exists but is unreadable or does not fit."""


class RunFolderError(DpdiffError, FileExistsError):
    """An output folder already holds results that would be replaced (pass ``--overwrite``/``--resume``)."""

    def __str__(self) -> str:  # FileExistsError would otherwise format errno-style args
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(DpdiffError, ImportError):
    """An optional package the requested setting needs is not installed (the message names the pip command)."""


class TrainingDiverged(DpdiffError, FloatingPointError):
    """The loss (or the gradient norm) became NaN or inf; the last good checkpoint is kept."""
