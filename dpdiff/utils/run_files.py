"""The names of the files dpdiff writes into a run folder and an evaluation folder, in one place.

A run folder (``dpdiff train --output RUN``)::

    RUN/train_state.pt        STATE_FILE     everything --resume needs (model/checkpoint.py)
    RUN/model.safetensors     MODEL_FILE     weights served to test/predict
    RUN/config.json           CONFIG_FILE    config + token grid + step
    RUN/loss_history.csv      HISTORY_FILE   logged losses
    RUN/loss_curves.png       LOSS_CURVES    their plot
    RUN/validation.csv        VALIDATION_FILE   validation metrics while training (train.validate_every)
    RUN/tensorboard/          TENSORBOARD_DIR   TensorBoard event files (train.logger=tensorboard)
    RUN/calibration.json      CALIBRATION_FILE  decision thresholds (`dpdiff calibrate`, train.calibration_fraction)
    RUN/knn_bank.safetensors  TOKEN_BANK_FILE   token bank of inference.knn_weight (scoring/token_bank.py)
    RUN/image_gaussian.safetensors  IMAGE_GAUSSIAN_FILE  image Gaussian of inference.image_gaussian_weight
                              (scoring/image_gaussian.py)
    RUN/eval/                 EVAL_DIR       default output of `dpdiff test`

An evaluation folder (``dpdiff test``)::

    EVAL/results.json|.csv|.md      RESULTS_STEM + RESULTS_FILE   per-category metrics and their mean
    EVAL/image_scores.csv           IMAGE_SCORES_FILE             one score per test image
    EVAL/object_level.json|.csv     OBJECT_LEVEL_STEM             Real-IAD object-level metrics
    EVAL/overlays/                  OVERLAYS_DIR                  overlay PNGs
    EVAL/report.html                REPORT_FILE                   the HTML report
    EVAL/report_files/              report_files_dir()            its PNGs and CSVs
    EVAL/report_data.npz            REPORT_DATA_FILE              the maps the report shows

This module is the bottom layer: it imports nothing from dpdiff.
"""

from __future__ import annotations

from pathlib import Path

STATE_FILE = "train_state.pt"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
HISTORY_FILE = "loss_history.csv"
LOSS_CURVES = "loss_curves.png"
VALIDATION_FILE = "validation.csv"
TENSORBOARD_DIR = "tensorboard"
#: Files a training run writes; their presence marks a folder as holding a run.
RUN_FILES = (STATE_FILE, MODEL_FILE, CONFIG_FILE, HISTORY_FILE, LOSS_CURVES, VALIDATION_FILE)

EVAL_DIR = "eval"
RESULTS_STEM = "results"
RESULTS_FILE = f"{RESULTS_STEM}.json"
IMAGE_SCORES_FILE = "image_scores.csv"
OBJECT_LEVEL_STEM = "object_level"
OVERLAYS_DIR = "overlays"
REPORT_FILE = "report.html"
REPORT_DATA_FILE = "report_data.npz"
CALIBRATION_FILE = "calibration.json"
TOKEN_BANK_FILE = "knn_bank.safetensors"
IMAGE_GAUSSIAN_FILE = "image_gaussian.safetensors"
PREDICTIONS_FILE = "scores.csv"


def report_files_dir(html_path: str | Path) -> Path:
    """``EVAL/report.html`` -> ``EVAL/report_files/`` (the folder of the report's PNGs, next to it)."""
    html_path = Path(html_path)
    return html_path.with_name(f"{html_path.stem}_files")


__all__ = [
    "STATE_FILE",
    "MODEL_FILE",
    "CONFIG_FILE",
    "HISTORY_FILE",
    "LOSS_CURVES",
    "VALIDATION_FILE",
    "TENSORBOARD_DIR",
    "RUN_FILES",
    "EVAL_DIR",
    "RESULTS_STEM",
    "RESULTS_FILE",
    "IMAGE_SCORES_FILE",
    "OBJECT_LEVEL_STEM",
    "OVERLAYS_DIR",
    "REPORT_FILE",
    "REPORT_DATA_FILE",
    "CALIBRATION_FILE",
    "TOKEN_BANK_FILE",
    "IMAGE_GAUSSIAN_FILE",
    "PREDICTIONS_FILE",
    "report_files_dir",
]
