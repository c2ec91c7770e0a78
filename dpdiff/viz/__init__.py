"""Visualisation: anomaly-map overlays, training curves and the HTML report (headless; no pyplot state).

viz only draws arrays (``dpdiff.figure_data`` and plain numpy): it never imports dpdiff.engine nor runs a model.
"""

from dpdiff.viz.curves import plot_curves, plot_loss_history
from dpdiff.viz.overlay import (
    PANEL_GAP,
    TITLE_HEIGHT,
    compose_overlay,
    heat_colors,
    mask_boundary,
    save_overlay,
    save_overlay_items,
)

__all__ = [
    "save_overlay",
    "save_overlay_items",
    "compose_overlay",
    "heat_colors",
    "mask_boundary",
    "plot_curves",
    "plot_loss_history",
    "PANEL_GAP",
    "TITLE_HEIGHT",
]
