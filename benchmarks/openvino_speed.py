"""OpenVINO against ONNX Runtime on this CPU (issue #22 item 3): is an OpenVINO export worth shipping?

    pip install openvino            # not a dependency of dpdiff: this benchmark only
    python benchmarks/openvino_speed.py [--threads 1] [--rounds 7]

The shipped preset's graph (``lite0_cpu``: Lite0 at 256 px, DiT 128x4, one antithetic pair, 1 DDIM step; random
DiT weights, which cost exactly what trained ones cost) is exported with ``dpdiff.inference.export.export_onnx``,
as float32 and as ``--quantize int8``. Each file is run by onnxruntime (CPU provider) and by OpenVINO (the same
.onnx read by ``openvino.Core().compile_model``, f32 precision hint, latency hint), with the same number of threads,
on the same batch of 16 preprocessed images: images/s (median of ``--rounds`` timed calls, the two runtimes
interleaved so that a busy machine slows both alike), their ratio, and the largest relative difference of each
output. Writes ``benchmarks/results/openvino_vs_onnxruntime.json`` atomically.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dpdiff.config import load_config
from dpdiff.experiments.benchmark import cpu_name, random_model, stand_in_scoring_files
from dpdiff.features import build_backbone_from_config
from dpdiff.inference.detector import Detector
from dpdiff.inference.export import export_onnx
from dpdiff.utils.io import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results" / "openvino_vs_onnxruntime.json"


def _time(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compare(path: Path, threads: int, rounds: int, batch: np.ndarray) -> dict:
    import onnxruntime as ort
    import openvino as ov

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    core = ov.Core()
    core.set_property("CPU", {"INFERENCE_NUM_THREADS": threads})
    compiled = core.compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    name = session.get_inputs()[0].name
    ref = session.run(None, {name: batch})
    got = compiled({0: batch})
    got = [got[o] for o in compiled.outputs]
    diffs = [float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12)) for a, b in zip(ref, got, strict=True)]
    t_ort, t_ov = [], []
    for _ in range(rounds):  # interleaved: a busy machine slows both alike
        t_ort.append(_time(lambda: session.run(None, {name: batch}), 1))
        t_ov.append(_time(lambda: compiled({0: batch}), 1))
    ort_s, ov_s = statistics.median(t_ort), statistics.median(t_ov)
    n = batch.shape[0]
    return {
        "onnxruntime_images_per_s": n / ort_s,
        "openvino_images_per_s": n / ov_s,
        "openvino_over_onnxruntime": ort_s / ov_s,
        "max_relative_output_difference": diffs,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--output", default=str(RESULTS))
    args = ap.parse_args()
    try:
        import openvino
    except ImportError:
        print("openvino is not installed (pip install openvino); nothing measured", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    cfg = load_config("lite0_cpu")
    backbone = build_backbone_from_config(cfg)
    size = cfg.backbone.image_size
    model = random_model(backbone.out_channels, tuple(backbone.grid_size(size)), cfg, "cpu", seed=0)
    detector = stand_in_scoring_files(Detector(backbone, model, cfg, "cpu"))  # the preset's bank and Gaussian
    batch = np.random.default_rng(0).normal(size=(16, 3, size, size)).astype(np.float32)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for quantize in (None, "int8"):
            path = Path(tmp) / f"model_{quantize or 'fp32'}.onnx"
            export_onnx(detector, path, verify=False, quantize=quantize)
            rows[quantize or "float32"] = compare(path, args.threads, args.rounds, batch)
            print(quantize or "float32", rows[quantize or "float32"], flush=True)
    out = {
        "preset": "lite0_cpu (random DiT weights)",
        "batch": int(batch.shape[0]),
        "threads": args.threads,
        "cpu": cpu_name(),
        "openvino": openvino.__version__,
        "rows": rows,
    }
    atomic_write_json(Path(args.output), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
