"""`dpdiff demo`: synthetic multi-category data -> train one model -> test -> metrics and overlays."""
from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..data.synthetic import generate_synthetic_dataset
from ..engine.evaluate import evaluate
from ..engine.train import train

DEMO_PRESET = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def demo_config() -> Config:
    if DEMO_PRESET.is_file():
        return Config.from_yaml(DEMO_PRESET)
    return Config()


def run_demo(output: Path, cfg: Config | None = None, num_categories: int = 4, seed: int = 0,
             overwrite: bool = False) -> dict:
    output = Path(output)
    cfg = cfg or demo_config()
    data_root = output / "data"
    if not (data_root / ".complete").exists():
        print(f"[demo] generating {num_categories} synthetic categories in {data_root}")
        generate_synthetic_dataset(data_root, num_categories=num_categories, image_size=cfg.backbone.image_size, seed=seed)
        (data_root / ".complete").write_text("ok\n")
    cfg.data.root = str(data_root)
    cfg.data.categories = None
    run_dir = output / "run"
    resume = (run_dir / "train_state.pt").exists() and not overwrite
    print(f"[demo] training one unified model for {cfg.train.steps} steps -> {run_dir}")
    train(cfg, run_dir, overwrite=overwrite, resume=resume)
    print("[demo] testing")
    result = evaluate(run_dir, output_dir=run_dir / "eval", overwrite=True)
    return result
