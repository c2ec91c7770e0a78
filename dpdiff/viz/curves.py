"""Line plots (e.g. loss curves) rendered with matplotlib's object API on the Agg canvas."""

from __future__ import annotations

import io
import math
from pathlib import Path

from dpdiff.utils.io import atomic_write_bytes

__all__ = ["plot_curves", "plot_loss_history"]


def plot_curves(
    series: dict[str, list[float]],
    out_path,
    xlabel: str = "step",
    ylabel: str = "value",
    title: str = "",
    logy: bool | None = None,
) -> Path:
    """Plot each named series against its index and write a PNG atomically.

    ``logy=None`` picks a log y-axis when all finite values are positive and span more than two
    decades.  Non-finite values are left as gaps.  Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    finite = []
    for name, values in series.items():
        ys = [float(v) if v is not None else math.nan for v in values]
        finite += [y for y in ys if math.isfinite(y)]
        ax.plot(range(len(ys)), ys, label=str(name), linewidth=1.2)
    if logy is None:
        logy = bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 100
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if series:
        ax.legend(loc="best", fontsize="small")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(out_path, buf.getvalue())


def plot_loss_history(history: list[dict], out_path) -> Path:
    """The training loss curves of a run (the rows of its ``loss_history.csv``: ``step`` and one column per
    loss term, each the mean over one log interval) as a PNG; returns the path."""
    if not history:
        raise ValueError(f"{out_path}: no loss history to plot")
    keys = [k for k in history[0] if k != "step"]
    every = int(history[0]["step"])
    return plot_curves(
        {k: [r[k] for r in history] for k in keys},
        out_path,
        xlabel=f"log interval (x{every} steps)",
        ylabel="loss",
        title="training losses",
    )
