"""DPDiff-AD vs a PatchCore-style kNN memory bank on the real Magnetic Tile Defect data (issue #2).

Both methods see the SAME backbone tokens (one feature extraction, same layers and image size) and
the same map post-processing (bilinear upsampling, Gaussian smoothing, pooled-max image score), so
the rows differ only in how a token is scored. Prints both rows of the seven metrics and writes
benchmarks/results/mtd_knn_vs_dpdiff.{json,csv,md}.

    python benchmarks/mtd_knn_vs_dpdiff.py --config mtd_lite0 [--steps N]

Cite the dataset: Huang et al., "Surface defect saliency of magnetic tile", The Visual Computer 2020.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from _common import RESULTS, ROOT

from dpdiff.config import load_config
from dpdiff.data import shared_data_dir
from dpdiff.data.dataset import ImageDataset
from dpdiff.data.readers.mvtec import load_split
from dpdiff.experiments.compare import build_knn, dpdiff_score_features, knn_score_features, masks_and_labels
from dpdiff.features import extract_features, resolve_device
from dpdiff.inference.detector import Detector
from dpdiff.metrics import compute_metrics
from dpdiff.metrics.tables import write_results
from dpdiff.model.checkpoint import load_model
from dpdiff.training.trainer import build_backbone_from_config
from dpdiff.workflows.train import train


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="mtd_lite0", help="preset name or YAML file (default mtd_lite0)")
    ap.add_argument("--data", default=None, help="MTD root (default: $DPDIFF_SHARED_DATA/mtd)")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps")
    ap.add_argument(
        "--coreset",
        type=float,
        default=1.0,
        help=(
            "kNN coreset fraction; 1.0 = the full memory bank "
            "(strongest kNN; PatchCore subsamples to 0.1 or 0.01 for speed)"
        ),
    )
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "bench_mtd"))
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument(
        "--noise-steps",
        type=int,
        nargs="*",
        default=None,
        help="also evaluate these inference noise steps (diagnostic rows)",
    )
    return ap.parse_args()


def features(cfg, backbone, data: Path, device: torch.device) -> tuple:
    """(train samples, train features, test features, test masks, test labels, seconds) of the Magnetic Tile split."""
    train_samples = load_split(data, "magnetic_tile", "train")
    test_samples = load_split(data, "magnetic_tile", "test")
    train_ds = ImageDataset(train_samples, cfg.backbone.image_size, backbone.mean, backbone.std, load_masks=False)
    test_ds = ImageDataset(test_samples, cfg.backbone.image_size, backbone.mean, backbone.std)
    t0 = time.perf_counter()
    train_feats = extract_features(backbone, train_ds, cfg.train.feature_batch_size, device, desc="train features")
    test_feats = extract_features(backbone, test_ds, cfg.train.feature_batch_size, device, desc="test features")
    t_feat = time.perf_counter() - t0
    masks, labels = masks_and_labels(test_ds)
    return train_samples, train_feats, test_feats, masks, labels, t_feat


def dpdiff_rows(cfg, backbone, train_feats, train_samples, test_feats, masks, labels, args, device, timings) -> dict:
    """Train (or resume) DPDiff-AD in ``--run-dir`` and score the test features at the preset's noise step and at
    each ``--noise-steps`` (diagnostic rows); the seconds go into ``timings``."""
    rows = {}
    t0 = time.perf_counter()
    run_dir = Path(args.run_dir)
    resume = (run_dir / "train_state.pt").exists()
    train(cfg, run_dir, overwrite=not resume, resume=resume, features=train_feats, samples=train_samples)
    timings["dpdiff_train_s"] = round(time.perf_counter() - t0, 1)
    model, cfg_run, _ = load_model(run_dir, device)
    detector = Detector(backbone, model, cfg, device)
    detector.run_dir = run_dir  # the token bank and image Gaussian train() built, when the preset uses them
    steps_to_eval = [cfg.inference.noise_step] + [s for s in (args.noise_steps or []) if s != cfg.inference.noise_step]
    for k, noise_step in enumerate(steps_to_eval):
        t0 = time.perf_counter()
        cfg.inference.noise_step = noise_step
        maps, scores = dpdiff_score_features(detector, test_feats)
        name = f"DPDiff-AD (t={noise_step}, {cfg.inference.ddim_steps} DDIM)"
        if k > 0:
            name += " [diagnostic]"
        rows[name] = compute_metrics(scores.numpy(), labels, maps.numpy(), masks)
        timings[f"dpdiff_test_t{noise_step}_s"] = round(time.perf_counter() - t0, 1)
    return rows


def main() -> int:
    args = parse_args()
    cfg = load_config(args.config)
    data = Path(args.data) if args.data else shared_data_dir() / "mtd"
    if not data.is_dir():
        print(f"MTD data not found at {data}; set DPDIFF_SHARED_DATA or --data", file=sys.stderr)
        return 2
    if args.steps:
        cfg.train.steps = args.steps
    cfg.data.root = str(data)
    cfg.data.categories = ["magnetic_tile"]
    torch.manual_seed(0)
    device = resolve_device(cfg.train.device)
    t_all = time.perf_counter()

    backbone = build_backbone_from_config(cfg)
    train_samples, train_feats, test_feats, masks, labels, t_feat = features(cfg, backbone, data, device)
    print(f"features: train {tuple(train_feats.shape)}, test {tuple(test_feats.shape)} in {t_feat:.1f}s")

    rows, timings = {}, {"feature_extraction_s": round(t_feat, 1)}
    # ---- kNN memory bank (PatchCore-style)
    t0 = time.perf_counter()
    maps, scores = knn_score_features(build_knn(train_feats, args.coreset), test_feats, cfg)
    rows[f"kNN memory bank (coreset {args.coreset:g})"] = compute_metrics(scores.numpy(), labels, maps.numpy(), masks)
    timings["knn_s"] = round(time.perf_counter() - t0, 1)
    print(f"kNN done in {timings['knn_s']}s")

    # ---- DPDiff-AD
    rows |= dpdiff_rows(cfg, backbone, train_feats, train_samples, test_feats, masks, labels, args, device, timings)
    timings["total_s"] = round(time.perf_counter() - t_all, 1)

    protocol = {
        "dataset": str(data),
        "backbone": cfg.backbone.name,
        "layers": cfg.backbone.layers,
        "image_size": cfg.backbone.image_size,
        "train_steps": cfg.train.steps,
        "model": cfg.to_dict()["model"],
        "inference": cfg.to_dict()["inference"],
        "timings": timings,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    out = Path(args.out)
    paths = write_results(rows, out, stem="mtd_knn_vs_dpdiff", protocol=protocol, mean_row=False)
    print(Path(paths["md"]).read_text() if "md" in paths else json.dumps(rows, indent=2))
    print(json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
