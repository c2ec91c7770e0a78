"""Training you can watch (issue #25): optional experiment loggers beside ``loss_history.csv``.

``train.logger``: ``none`` (default) or ``tensorboard``: event files under ``RUN/tensorboard/`` with the loss
terms (``loss/total``, ``loss/diff``, ``loss/local``, ``loss/global``), the learning rate (``train/lr``) and the
speed (``train/steps_per_s``) at every logged step, and with ``train.validate_every`` the validation metrics
(``val/I-AUROC``, ``val/P-AUROC``; :mod:`.validation`); ``tensorboard --logdir RUN/tensorboard`` shows them. The
TensorBoard writer (``torch.utils.tensorboard``, which needs the ``tensorboard`` package) is imported only when
asked for, so nothing is required at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from dpdiff.choices import LOGGERS
from dpdiff.utils.errors import MissingDependencyError
from dpdiff.utils.run_files import TENSORBOARD_DIR  # the folder of the event files in a run folder (re-exported)

__all__ = ["LOGGERS", "TENSORBOARD_DIR", "TrainingLogger", "build_logger"]


class TrainingLogger(Protocol):
    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoardLogger:
    """Scalars to TensorBoard event files in ``log_dir`` (appended on resume). ``purge_step``: a resumed run's
    first step; TensorBoard then hides the events of the earlier run from that step on (written after the
    checkpoint the run resumed from, they are logged again)."""

    def __init__(self, log_dir: Path, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise MissingDependencyError(
                "train.logger=tensorboard needs the tensorboard package: pip install tensorboard"
            ) from e
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, float(value), int(step))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def build_logger(name: str, run_dir: Path, purge_step: int | None = None) -> TrainingLogger | None:
    """The logger ``name`` (:data:`LOGGERS`) writing into ``run_dir``; None for ``none``. ``purge_step``: see
    :class:`TensorBoardLogger`."""
    if name == "none":
        return None
    if name == "tensorboard":
        return TensorBoardLogger(Path(run_dir) / TENSORBOARD_DIR, purge_step)
    raise ValueError(f"train.logger must be one of {LOGGERS}, got {name!r}")
