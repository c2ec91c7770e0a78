"""Export benchmark (issue #14): onnxruntime vs PyTorch eager on the demo model, speed and consistency.

    python benchmarks/export_speed.py            # the demo model (trains it first when missing, ~5 CPU minutes)
    python benchmarks/export_speed.py --quick    # smoke run: a tiny random model at 64 px, a few seconds

The model: ``runs/demo/run`` (``make demo``) when it exists, else the ``demo`` preset trained on the demo's
synthetic data into ``runs/export_speed_demo`` (resumed if interrupted). It is exported with ``dpdiff.inference.export``
and both runtimes score the demo's test images (4 categories x 24):

* consistency: image scores (largest relative difference), maps (largest absolute difference), the ranking of the
  test images, and the decisions with thresholds calibrated in memory (5 % false alarms) on the demo's
  *training* images (disjoint from the test images, so no test score sits exactly on a threshold);
* speed: images/s of the model call on the same preprocessed batches (``inference.batch_size``), median of
  ``--rounds`` timed passes over all test images after one warm-up pass, with the same number of CPU threads for
  both (``torch.get_num_threads()``; onnxruntime's intra-op threads set to it). Preprocessing (decoding, resizing)
  is the same code for both and not timed.

Writes ``benchmarks/results/export.json`` (``--quick``: ``export_quick.json``) atomically.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, ROOT, inference_settings

from dpdiff.config import load_config
from dpdiff.data.synthetic import generate_synthetic_dataset
from dpdiff.experiments.benchmark import cpu_name, measure, random_model
from dpdiff.experiments.demo import DEMO_PRESET
from dpdiff.features import build_backbone_from_config
from dpdiff.inference.detector import Detector
from dpdiff.inference.export import export_onnx
from dpdiff.inference.onnx_runtime import OnnxDetector
from dpdiff.utils.io import atomic_write_json
from dpdiff.utils.run_files import STATE_FILE
from dpdiff.utils.sizes import hw_json
from dpdiff.workflows.train import train

DEMO_RUN = ROOT / "runs" / "demo" / "run"
OWN_DEMO = ROOT / "runs" / "export_speed_demo"


def demo_detector() -> tuple[Detector, Path, str]:
    """(detector, data root, where it came from): the `make demo` run, or the demo preset trained here."""
    if (DEMO_RUN / "model.safetensors").is_file():
        return Detector.load(DEMO_RUN), DEMO_RUN.parent / "data", str(DEMO_RUN.relative_to(ROOT))
    cfg = load_config(DEMO_PRESET)
    data = OWN_DEMO / "data"
    if not (data / ".complete").exists():
        generate_synthetic_dataset(data, num_categories=4, image_size=cfg.backbone.image_size, seed=0)
        (data / ".complete").write_text("ok\n")
    cfg.data.root = str(data)
    run = OWN_DEMO / "run"
    if not (run / "model.safetensors").is_file() or (run / STATE_FILE).is_file():
        print(f"training the demo preset into {run} ...", flush=True)
        train(cfg, run, resume=(run / STATE_FILE).is_file())
    return Detector.load(run), data, str(run.relative_to(ROOT))


def quick_detector(folder: Path) -> tuple[Detector, Path, str]:
    """A tiny random model at 64 px and a small synthetic data set (no training)."""
    cfg = load_config(DEMO_PRESET).override(
        {
            "backbone.image_size": 64,
            "model.hidden_dim": 32,
            "model.depth": 1,
            "model.num_heads": 2,
            "model.prototype_heads": 2,
        }
    )
    backbone = build_backbone_from_config(cfg)
    model = random_model(backbone.out_channels, tuple(backbone.grid_size(64)), cfg, "cpu", seed=0)
    data = folder / "data"
    generate_synthetic_dataset(
        data,
        num_categories=2,
        train_per_category=20,
        test_good_per_category=6,
        test_defect_per_category=6,
        image_size=64,
        seed=0,
    )
    return Detector(backbone, model, cfg, "cpu"), data, "tiny random model (--quick)"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random model at 64 px (smoke run, seconds)")
    ap.add_argument("--rounds", type=int, default=3, help="timed passes over the test images (median reported)")
    ap.add_argument("--output", help="result JSON (default benchmarks/results/export.json, --quick: export_quick.json)")
    return ap.parse_args()


def consistency_of(detector: Detector, onnx_detector: OnnxDetector, tests: list[Path]) -> dict:
    """Scores, maps, ranking and decisions of the two runtimes on ``tests``, through the public predict of each."""
    torch_pred, onnx_pred = detector.predict(tests), onnx_detector.predict(tests)
    s_t = np.array([p.score for p in torch_pred], np.float64)
    s_o = np.array([p.score for p in onnx_pred], np.float64)
    pairs = list(zip(torch_pred, onnx_pred, strict=True))
    consistency = {
        "images": len(tests),
        "max_rel_score_diff": float(np.max(np.abs(s_o - s_t) / np.abs(s_t))),
        "max_abs_map_diff": float(max(np.abs(a.anomaly_map - b.anomaly_map).max() for a, b in pairs)),
        "max_map_value": float(max(a.anomaly_map.max() for a in torch_pred)),
        "same_ranking": bool(np.array_equal(np.argsort(s_t, kind="stable"), np.argsort(s_o, kind="stable"))),
        "decisions_agree": int(sum(a.is_anomalous == b.is_anomalous for a, b in pairs)),
        "anomalous_torch": int(sum(p.is_anomalous for p in torch_pred)),
        "image_threshold": detector.thresholds().image,
        "mask_pixels_differing": int(sum((a.mask != b.mask).sum() for a, b in pairs)),
        "mask_pixels": int(sum(a.mask.size for a in torch_pred)),
    }
    consistency["meets_acceptance"] = (
        consistency["max_rel_score_diff"] <= 1e-4
        and consistency["max_abs_map_diff"] <= 1e-3
        and consistency["same_ranking"]
        and consistency["decisions_agree"] == len(tests)
    )
    return consistency


def speed_of(detector: Detector, onnx_detector: OnnxDetector, tests: list[Path], rounds: int) -> dict:
    """Images/s of the model call of each runtime on the same preprocessed batches (median of ``rounds`` passes)."""
    bs = int(detector.cfg.inference.batch_size)
    numpy_batches = [detector.preprocess(tests[i : i + bs]) for i in range(0, len(tests), bs)]
    batches = [torch.from_numpy(b) for b in numpy_batches]
    device = torch.device("cpu")
    scorer = detector.scorer()

    def torch_pass():  # the backbone and the scorer, as the detector runs a batch
        noise = scorer.noise_source(torch.Generator(detector.device).manual_seed(int(detector.cfg.inference.seed)))
        with torch.inference_mode():
            return [scorer.score_features(detector.features(b), noise) for b in batches]

    def onnx_pass():
        return [onnx_detector.run(b) for b in numpy_batches]

    speed = {}
    for name, fn in (("torch_eager", torch_pass), ("onnxruntime", onnx_pass)):
        m = measure(fn, device, warmup=1, rounds=rounds)
        speed[name] = m | {"images_per_s": len(tests) / m["median_s"]}
        print(f"  {name}: {speed[name]['images_per_s']:.2f} images/s", flush=True)
    speed["onnx_over_torch"] = speed["onnxruntime"]["images_per_s"] / speed["torch_eager"]["images_per_s"]
    return speed


def main() -> int:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dpdiff_export_"))
    detector, data, source = quick_detector(tmp) if args.quick else demo_detector()
    cfg = detector.cfg
    tests = sorted(data.glob("*/test/*/*.png"))
    train_good = sorted(data.glob("*/train/good/*.png"))
    print(f"model: {source}; {len(tests)} test images; calibrating on {len(train_good)} training images", flush=True)
    detector.calibration_path = None  # thresholds in memory only: the run folder is left as it is
    detector.calibration = None
    detector.calibrate(train_good, target_fpr=0.05, save=False)

    model_path = tmp / "model.onnx"
    t0 = time.perf_counter()
    summary = export_onnx(detector, model_path, overwrite=True, verify=False)
    export_s = time.perf_counter() - t0
    onnx_detector = OnnxDetector.load(model_path)

    consistency = consistency_of(detector, onnx_detector, tests)
    print(f"consistency: {consistency}", flush=True)
    speed = speed_of(detector, onnx_detector, tests, args.rounds)  # the model call on the same batches

    import onnxruntime

    result = {
        "model": source,
        "quick": bool(args.quick),
        "image_size": cfg.backbone.image_size,
        "map_size": hw_json(detector.map_size),
        "batch_size": int(cfg.inference.batch_size),
        "inference": inference_settings(cfg),
        "export": {"seconds": round(export_s, 2), "bytes": summary["bytes"], "opset": summary["opset"]},
        "consistency": consistency,
        "speed": speed,
        "machine": {
            "cpu": cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
    }
    out = Path(args.output) if args.output else RESULTS / ("export_quick.json" if args.quick else "export.json")
    atomic_write_json(out, result)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
