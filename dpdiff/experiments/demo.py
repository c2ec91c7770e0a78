"""`dpdiff demo`: synthetic multi-category data -> train one model -> test -> metrics and overlays."""

from __future__ import annotations

import logging
from pathlib import Path

from dpdiff.config import Config, load_config
from dpdiff.data.synthetic import generate_synthetic_dataset
from dpdiff.utils.io import atomic_write_text
from dpdiff.utils.run_files import EVAL_DIR, STATE_FILE
from dpdiff.workflows.reporting import evaluate_and_report, plot_training_curves
from dpdiff.workflows.train import train

logger = logging.getLogger(__name__)

#: The packaged preset of `dpdiff demo` (dpdiff/configs/demo.yaml).
DEMO_PRESET = "demo"


def demo_config() -> Config:
    """The demo preset; a missing preset is an error (FileNotFoundError naming the presets found), never a
    silent fallback to the defaults."""
    return load_config(DEMO_PRESET)


def run_demo(
    output: Path, cfg: Config | None = None, num_categories: int = 4, seed: int = 0, overwrite: bool = False
) -> dict:
    output = Path(output)
    cfg = cfg or demo_config()
    data_root = output / "data"
    if not (data_root / ".complete").exists():
        logger.info("generating %d synthetic categories in %s", num_categories, data_root)
        generate_synthetic_dataset(
            data_root, num_categories=num_categories, image_size=cfg.backbone.image_size, seed=seed
        )
        atomic_write_text(data_root / ".complete", "ok\n")
    cfg.data.root = str(data_root)
    cfg.data.categories = None
    run_dir = output / "run"
    resume = (run_dir / STATE_FILE).exists() and not overwrite
    logger.info("training one unified model for %d steps -> %s", cfg.train.steps, run_dir)
    train(cfg, run_dir, overwrite=overwrite, resume=resume)
    plot_training_curves(run_dir)
    logger.info("testing")
    result = evaluate_and_report(run_dir, output_dir=run_dir / EVAL_DIR, overwrite=True)
    return result
