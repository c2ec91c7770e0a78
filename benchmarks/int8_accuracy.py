"""Accuracy cost of the ONNX exports (float32 and ``--quantize int8``) against PyTorch, on trained models (issue #22).

    python benchmarks/int8_accuracy.py --run runs/accuracy/mtd/runs/preset --data ../shared/data/mtd
    python benchmarks/int8_accuracy.py --run runs/accuracy/synthetic/runs/preset --data runs/accuracy/synthetic/data

The run (a `dpdiff train` folder, e.g. the shipped preset trained by ``benchmarks/accuracy.py``) is exported with
``dpdiff.inference.export.export_onnx`` as float32 and as INT8 (onnxruntime dynamic quantisation of the MatMuls),
and the three runtimes (PyTorch, onnxruntime float32, onnxruntime INT8) score the data set's test images through
the same public call, ``score_images``. Metrics: the seven of the paper and mAD (mean over categories, masks at the
map size, nearest resampling as in ``dpdiff test``), and the largest metric change of each export against PyTorch;
images/s of each runtime on this machine (one process, the threads torch/onnxruntime use by default). Writes
``--output`` (default ``benchmarks/results/int8_accuracy_<run folder name>.json``) atomically.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dpdiff import Detector
from dpdiff.data import load_samples
from dpdiff.data.images import read_mask_values, resize_binarise_mask
from dpdiff.inference.export import export_onnx
from dpdiff.metrics import METRIC_NAMES, add_mean_row, compute_metrics
from dpdiff.utils.io import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"


def _masks(samples, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    masks = np.zeros((len(samples), *size), bool)  # size: the detector's (Hm, Wm)
    known = np.ones(len(samples), bool)
    for i, s in enumerate(samples):
        if s.label and s.mask_path is not None:
            masks[i] = resize_binarise_mask(read_mask_values(s.mask_path), size)
        elif s.label:
            known[i] = False
    return masks, known


def _metrics(samples, maps, scores, masks, known) -> dict:
    cats = np.array([s.category for s in samples])
    labels = np.array([int(s.label) for s in samples])
    per = {
        c: compute_metrics(
            scores[cats == c], labels[cats == c], maps[cats == c], masks[cats == c], mask_known=known[cats == c]
        )
        for c in sorted(set(cats))
    }
    return add_mean_row(per)["mean"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a `dpdiff train` run folder")
    ap.add_argument("--data", required=True, help="the data set's root (its test split is scored)")
    ap.add_argument("--format", default="auto")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    run = Path(args.run)
    samples = sorted(load_samples(args.format, Path(args.data), None, "test"), key=lambda s: str(s.image_path))
    paths = [s.image_path for s in samples]
    torch_detector = Detector.load(run, device="cpu")
    masks, known = _masks(samples, torch_detector.map_size)
    rows, timing = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        detectors = {"pytorch": torch_detector}
        for quantize in (None, "int8"):
            path = Path(tmp) / f"model_{quantize or 'fp32'}.onnx"
            export_onnx(torch_detector, path, verify=False, quantize=quantize)
            detectors[f"onnxruntime {quantize or 'float32'}"] = Detector.load(path)
        for name, detector in detectors.items():
            detector.score_images(paths[:8])  # warm-up: first-call allocations are not timed
            t0 = time.perf_counter()
            maps, scores = detector.score_images(paths)
            timing[name] = len(paths) / (time.perf_counter() - t0)
            rows[name] = _metrics(samples, np.asarray(maps), np.asarray(scores), masks, known)
            print(
                name, {k: rows[name][k] for k in ("I-AUROC", "P-AUROC", "mAD")}, f"{timing[name]:.1f} img/s", flush=True
            )
    keys = [*METRIC_NAMES, "mAD"]
    base = rows["pytorch"]
    out = {
        "run": str(run),
        "data": str(args.data),
        "test_images": len(paths),
        "metrics": rows,
        "images_per_s": timing,
        "largest_change_vs_pytorch": {
            name: max(abs(m[k] - base[k]) for k in keys if m.get(k) is not None and base.get(k) is not None)
            for name, m in rows.items()
            if name != "pytorch"
        },
    }
    output = Path(args.output) if args.output else RESULTS / f"int8_accuracy_{run.parent.parent.name}.json"
    atomic_write_json(output, out)
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
