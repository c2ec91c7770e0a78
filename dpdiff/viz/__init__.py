"""Visualisation: anomaly-map overlays and training curves (headless; no pyplot state)."""

from dpdiff.viz.curves import plot_curves
from dpdiff.viz.overlay import PANEL_GAP, TITLE_HEIGHT, compose_overlay, heat_colors, mask_boundary, save_overlay

__all__ = ["save_overlay", "compose_overlay", "heat_colors", "mask_boundary", "plot_curves",
           "PANEL_GAP", "TITLE_HEIGHT"]
