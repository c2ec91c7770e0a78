"""GPU rows of the speed issue (#22): one prepared run, under 5 minutes on one GPU.

    python benchmarks/gpu_rows.py                       # -> benchmarks/results/gpu_rows.json
    python benchmarks/gpu_rows.py --quick               # smoke run (CPU or GPU, tiny batches)

(1) Paper Table 4 on this GPU: the paper preset (`paper_dinov2_b448`, DINOv2 ViT-B/14 with *random* weights: speed
    does not depend on them) backbone alone vs the full pipeline at batch 64, in float16 and bfloat16 autocast
    (the paper: 101 FPS on an RTX 4090, 0.80 of Dinomaly's 127). Times the code users run:
    `dpdiff.experiments.benchmark.benchmark_fps` (the Detector's own path).
(2) Training steps/s of the shipped `lite0_cpu` preset: `Trainer.step` itself on random tokens of the preset's
    grid (batch 16), on the GPU.

Every number is measured in this one run, with the device name recorded. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from dpdiff.config import load_config
from dpdiff.data.types import Sample
from dpdiff.experiments.benchmark import benchmark_fps
from dpdiff.training.distributed import DistInfo
from dpdiff.training.trainer import Trainer
from dpdiff.utils.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def paper_rows(batch_size: int, rounds: int, warmup: int) -> dict:
    cfg = load_config("paper_dinov2_b448")
    out = {}
    for dtype in ("float16", "bfloat16"):
        r = benchmark_fps(cfg, batch_size=batch_size, rounds=rounds, warmup=warmup, device="auto", dtype=dtype)
        out[dtype] = r
        print(f"paper preset, {dtype}: {json.dumps({k: r[k] for k in r if 'fps' in k or 'ratio' in k})}", flush=True)
    return out


def training_row(steps: int, warmup: int) -> dict:
    cfg = load_config("lite0_cpu")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    grid = cfg.backbone.image_size // (cfg.backbone.feature_stride or 16)
    n_images = 64
    features = torch.randn(n_images, 152, grid, grid)  # Lite0 stages 2+3: 152 channels
    samples = [Sample(Path(f"random_{i}.png"), None, 0, "good", "random") for i in range(n_images)]
    with tempfile.TemporaryDirectory(prefix="dpdiff_gpu_rows_") as tmp:
        trainer = Trainer(cfg.override({"train.device": str(device)}), Path(tmp) / "run", DistInfo(device=device))
        trainer.setup(overwrite=True, features=features, samples=samples)
        for s in range(warmup):
            trainer.step(s)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for s in range(warmup, warmup + steps):
            trainer.step(s)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    row = {"device": str(device), "steps": steps, "steps_per_s": steps / seconds, "batch_size": cfg.train.batch_size}
    print(f"lite0_cpu Trainer.step on {device}: {row['steps_per_s']:.1f} steps/s", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_rows.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.quick:
        print("no GPU here: nothing measured (run with --quick for a smoke run on the CPU)")
        return 0
    bs, rounds, warmup, steps = (2, 1, 1, 3) if args.quick else (64, 5, 2, 200)
    result = {
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "paper_preset": paper_rows(bs, rounds, warmup),
        "lite0_cpu_training": training_row(steps, warmup),
    }
    out = Path(args.out) if not args.quick else Path(tempfile.gettempdir()) / "gpu_rows_quick.json"
    atomic_write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
