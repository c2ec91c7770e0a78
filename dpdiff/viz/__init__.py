"""Visualisation: anomaly-map overlays, training curves and the HTML report (headless; no pyplot state).

viz only draws arrays (``dpdiff.figure_data`` and plain numpy): it never imports the layers that run a model.
"""

from dpdiff.viz import overlay
from dpdiff.viz.curves import plot_curves, plot_loss_history
from dpdiff.viz.overlay import *  # noqa: F403 - exactly the names of overlay.__all__, listed there once

__all__ = [*overlay.__all__, "plot_curves", "plot_loss_history"]
