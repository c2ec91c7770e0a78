"""``dpdiff test``, ``report``, ``predict`` and the loss curves of ``train``, composed: the engine scores, viz draws.

* :func:`evaluate_and_report` = ``evaluate`` + the overlay PNGs + the HTML report (``dpdiff test``, the demo);
  the same arguments as :func:`dpdiff.workflows.evaluate.evaluate`.
* :func:`rebuild_report` = the model outputs the saved report data lacks + the HTML report (``dpdiff report``).
* :func:`predict_and_draw` = ``predict`` + its overlay PNGs (``dpdiff predict``).
* :func:`plot_training_curves` = ``RUN/loss_curves.png`` (``dpdiff train``, the demo).

The engine never imports dpdiff.viz and viz never runs a model; this layer is where the two meet.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dpdiff.training.trainer import load_history
from dpdiff.utils.errors import RunFolderError
from dpdiff.utils.run_files import EVAL_DIR, LOSS_CURVES, REPORT_FILE
from dpdiff.viz.curves import plot_loss_history
from dpdiff.viz.overlay import save_overlay_items
from dpdiff.viz.report import build_report, check_report_target
from dpdiff.workflows.evaluate import evaluate
from dpdiff.workflows.predict import PredictionFiles, predict
from dpdiff.workflows.report_inputs import prepare_report_data

__all__ = ["evaluate_and_report", "plot_training_curves", "predict_and_draw", "rebuild_report"]


def evaluate_and_report(
    run_dir: Path,
    output_dir: Path | None = None,
    overwrite: bool = False,
    report: bool = True,
    **evaluate_options: Any,
) -> dict:
    """:func:`~dpdiff.workflows.evaluate.evaluate` (``evaluate_options``: its keyword arguments, e.g. ``data_root``,
    ``categories``, ``inference_overrides``, ``weights``), then its overlays (``EVAL/overlays/``) and, unless
    ``report=False``, the HTML report (``EVAL/report.html``, summary under ``result["report"]``). An existing
    report is refused before anything runs unless ``overwrite``; a failing report is an error (the results
    files are written by then)."""
    out = Path(output_dir) if output_dir else Path(run_dir) / EVAL_DIR
    if report and (out / REPORT_FILE).exists() and not overwrite:
        raise RunFolderError(f"{out / REPORT_FILE} exists; pass --overwrite or choose another --output")
    result = evaluate(run_dir, output_dir=out, overwrite=overwrite, report=report, **evaluate_options)
    save_overlay_items(result["overlays"], out)
    if report:
        result["report"] = build_report(
            run_dir, out, out / REPORT_FILE, overwrite=True, data=result["report_data"], history=load_history(run_dir)
        )
    return result


def rebuild_report(
    run_dir: Path,
    eval_dir: Path | None = None,
    output: Path | None = None,
    overwrite: bool = False,
    data_root: str | None = None,
    device: str = "auto",
    weights: str | None = None,
) -> dict:
    """The HTML report of an evaluation (``dpdiff report``): ``report_data.npz`` drawn as saved; the model runs
    only for what it lacks (see :func:`~dpdiff.workflows.report_inputs.prepare_report_data`)."""
    run_dir = Path(run_dir)
    eval_dir = Path(eval_dir) if eval_dir else run_dir / EVAL_DIR
    out = Path(output) if output else eval_dir / REPORT_FILE
    check_report_target(out, overwrite)  # before the model runs
    t0 = time.perf_counter()
    data, root = prepare_report_data(run_dir, eval_dir, data_root, device, weights)
    return build_report(
        run_dir,
        eval_dir,
        out,
        overwrite,
        data=data,
        data_root=root,
        history=load_history(run_dir),
        timings={"prepare_s": time.perf_counter() - t0},
    )


def predict_and_draw(run_dir: Path, images: Path, output_dir: Path, **predict_options: Any) -> PredictionFiles:
    """:func:`~dpdiff.workflows.predict.predict` (``predict_options``: its keyword arguments, e.g. ``device``,
    ``overwrite``, ``skip_bad``, ``category``; ``OUTPUT/scores.csv``, ``OUTPUT/masks/`` when calibrated), then
    one overlay PNG per image under ``OUTPUT/overlays/`` (the anomaly map with the predicted defect mask's
    contour) unless ``overlays=False``. ``run_dir``: a run folder or an exported ``.onnx``."""
    prediction = predict(run_dir, images, output_dir, **predict_options)
    save_overlay_items(prediction.overlays, output_dir)
    return prediction


def plot_training_curves(run_dir: Path) -> Path | None:
    """``RUN/loss_curves.png`` from ``RUN/loss_history.csv`` (None when the run logged no losses yet)."""
    history = load_history(run_dir)
    return plot_loss_history(history, Path(run_dir) / LOSS_CURVES) if history else None
