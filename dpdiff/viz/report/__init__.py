"""One self-contained HTML report per evaluation (``dpdiff report``; also written by ``dpdiff test``).

The report (``EVAL/report.html``; every figure also as a PNG in ``EVAL/report_files/``) holds

* the per-category metrics table from ``results.json`` (sortable: click a column header),
* the worst false positives (highest-scoring normal test images) and false negatives (lowest-scoring
  defective images) of every category: image, ground-truth contour, anomaly-map overlay,
* prototype similarity maps of the local and global prototypes on a few test images (paper Fig. 8),
* a t-SNE of backbone tokens before and after the diffusion reconstruction, normal vs anomalous
  tokens (paper Fig. 7),
* the training loss curves (the run's ``loss_history.csv``).

This package only draws: the arrays come from :class:`dpdiff.figure_data.ReportData` (``EVAL/report_data.npz``,
written by ``evaluate``, which keeps a few maps per category and runs the model on a handful of "probe"
test images). Modules: ``build`` (:func:`build_report`), ``figures`` (one function per section), ``page``
(the HTML from ``template.html``, shipped as package data), ``images`` (PNG and panel helpers).
"""

from dpdiff.utils.run_files import REPORT_DATA_FILE, REPORT_FILE, report_files_dir
from dpdiff.viz.report.build import DISPLAY_MAX, build_report, check_report_target

__all__ = ["DISPLAY_MAX", "REPORT_DATA_FILE", "REPORT_FILE", "build_report", "check_report_target", "report_files_dir"]
