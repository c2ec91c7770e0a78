"""Load benchmark of `dpdiff serve` (issue #15): requests/s and p50/p95 latency at 1 and 8 concurrent clients, next to
`dpdiff benchmark`'s batch images/s of the same model in the same run.

    python benchmarks/serve_load.py                 # lite0_cpu, random DiT weights -> benchmarks/results/serve.json
    python benchmarks/serve_load.py --quick         # tiny model, short levels -> benchmarks/results/serve_quick.json
    python benchmarks/serve_load.py --run runs/mvtec --clients 1 4 8

What it does, all on the loopback interface (127.0.0.1) and bounded in time (``--budget-s``, default 60 s for
the whole script: what does not fit is left out and the JSON says so):

1. the model: ``--run RUN`` (a trained run folder) or, by default, a run folder with RANDOM DiT weights for
   ``--config`` in a temporary folder (speed does not depend on the weights' values; as `dpdiff benchmark`);
2. starts ``python -m dpdiff.cli serve RUN --host 127.0.0.1 --port P`` (``--max-batch``, ``--max-wait-ms``) and
   waits for ``/health`` (the server warms the model up before it answers);
3. times ``dpdiff.experiments.benchmark.benchmark_fps`` (the function behind `dpdiff benchmark`: the full
   pipeline on a batch of synthetic images) at batch 1 and at batch = the largest client count, while the server
   is idle;
4. for each client count: that many threads, each with its own HTTP connection, POST ``/predict`` (raw PNG bytes
   of 16 distinct images at the model's input size, no overlay) back to back for ``--level-s`` seconds after a
   short warm-up; requests/s = answered requests / elapsed; latency = client-side wall time per request.

Requests/s at 8 clients should approach the batch-8 images/s of step 3 (the micro-batcher runs the 8 waiting
images in one model call); at 1 client it is the batch-1 rate minus HTTP, decoding and ``--max-wait-ms``.
Server and clients share the machine's cores: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from _common import RESULTS
from PIL import Image

from dpdiff.config import load_config
from dpdiff.experiments.benchmark import benchmark_fps, cpu_name
from dpdiff.serve.server import stop_server_process
from dpdiff.utils.io import atomic_write_json

#: The --quick model: lite0_cpu's backbone at 64 px with a one-block DiT of width 32 (as the tests' tiny config).
QUICK_OVERRIDES = {
    "backbone.image_size": 64,
    "model.hidden_dim": 32,
    "model.depth": 1,
    "model.num_heads": 2,
    "model.prototype_heads": 2,
}
DISTINCT_IMAGES = 16
SERVER_START_TIMEOUT_S = 120


def log(msg: str) -> None:
    print(f"[serve_load] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- the model
def random_run(cfg, folder: Path) -> Path:
    """A run folder with random DiT weights (and the configured backbone's real ones) for ``cfg``."""
    from dpdiff.experiments.benchmark import build_benchmark_backbone, random_model
    from dpdiff.model.checkpoint import save_checkpoint

    backbone, _ = build_benchmark_backbone(cfg)
    grid = tuple(int(v) for v in backbone.grid_size(int(cfg.backbone.image_size)))
    model = random_model(int(backbone.out_channels), grid, cfg, "cpu")
    run = folder / "random_run"
    run.mkdir(parents=True)
    save_checkpoint(run, model, cfg, {"categories": [], "step": 0, "weights": "random (speed only)"})
    return run


def test_images(size: int, n: int = DISTINCT_IMAGES) -> list[bytes]:
    """``n`` distinct PNGs of ``size`` x ``size``: smooth colour gradients plus noise (compress like photos)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
    out = []
    for _ in range(n):
        base = np.stack([a * xx + b * yy + c for a, b, c in rng.uniform(-0.5, 0.8, (3, 3))], axis=-1)
        img = np.clip(base * 255 + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


# ---------------------------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, args, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "dpdiff.cli",
        "serve",
        str(run),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-batch",
        str(args.max_batch),
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--device",
        args.device,
        "--no-progress",
    ]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=log_path.parent)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dpdiff serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2.0).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"dpdiff serve did not answer within {SERVER_START_TIMEOUT_S} s")


def stop_server(proc: subprocess.Popen) -> None:
    stop_server_process(proc)


# ---------------------------------------------------------------------------------------------- load
def load_level(url: str, images: list[bytes], clients: int, seconds: float, warmup_s: float) -> dict:
    """``clients`` threads POSTing /predict back to back for ``seconds`` (after ``warmup_s`` untimed)."""
    start_gate = threading.Barrier(clients + 1)
    t_start = [0.0]
    t_stop = [0.0]
    records: list[list[tuple[float, float, int]]] = [[] for _ in range(clients)]
    errors: list[str] = []

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60.0) as c:
            i = k
            start_gate.wait()
            while True:
                now = time.perf_counter()
                if now >= t_stop[0]:
                    return
                t0 = now
                r = c.post(
                    "/predict", content=images[i % len(images)], headers={"Content-Type": "application/octet-stream"}
                )
                t1 = time.perf_counter()
                i += clients
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                if t_start[0] <= t1 <= t_stop[0]:  # answered inside the timed window
                    records[k].append((t0, t1, int(r.json()["batch_size"])))

    now = time.perf_counter()
    t_start[0], t_stop[0] = now + warmup_s, now + warmup_s + seconds
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    for t in threads:
        t.join(timeout=seconds + warmup_s + 120)
    done = [r for per in records for r in per]
    latencies = sorted(1e3 * (t1 - t0) for t0, t1, _ in done)
    elapsed = seconds
    row = {
        "clients": clients,
        "seconds": round(elapsed, 3),
        "requests": len(done),
        "errors": len(errors),
        "error_examples": errors[:3],
        "requests_per_s": len(done) / elapsed if elapsed > 0 else None,
        "latency_ms": {
            "p50": float(np.percentile(latencies, 50)) if latencies else None,
            "p95": float(np.percentile(latencies, 95)) if latencies else None,
            "mean": statistics.fmean(latencies) if latencies else None,
            "max": max(latencies) if latencies else None,
        },
        "mean_batch_size": statistics.fmean(b for _, _, b in done) if done else None,
    }
    return row


# ---------------------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model (64 px, 1-block DiT), 3 s per level")
    ap.add_argument("--run", help="a trained run folder to serve (default: random DiT weights for --config)")
    ap.add_argument("--config", default="lite0_cpu", help="preset or YAML for the random-weight model")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="concurrency levels (default 1 8)")
    ap.add_argument("--level-s", type=float, default=None, help="timed seconds per level (default 15; quick 3)")
    ap.add_argument("--warmup-s", type=float, default=None, help="untimed seconds per level (default 2; quick 1)")
    ap.add_argument("--budget-s", type=float, default=60.0, help="the whole script stops within this (default 60)")
    ap.add_argument("--max-batch", type=int, default=16, help="dpdiff serve --max-batch (default 16)")
    ap.add_argument("--max-wait-ms", type=float, default=10.0, help="dpdiff serve --max-wait-ms (default 10)")
    ap.add_argument("--bench-rounds", type=int, default=None, help="timed batches of dpdiff benchmark (default 3)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    ap.add_argument("--output", help="JSON file (default benchmarks/results/serve.json; --quick: serve_quick.json)")
    return ap.parse_args()


def prepare_model(args, tmp: Path) -> tuple:
    """(config, run folder, "trained" | "random"): ``--run``, else random DiT weights for ``--config`` in ``tmp``."""
    if args.run:
        run = Path(args.run)
        from dpdiff.model.checkpoint import read_run_config

        cfg, _ = read_run_config(run)
        return cfg, run, "trained"
    cfg = load_config(args.config, QUICK_OVERRIDES if args.quick else None)
    return cfg, random_run(cfg, tmp), "random"


def benchmark_batches(cfg, batches: list[int], rounds: int, device: str) -> dict:
    """``dpdiff benchmark``'s figures (benchmark_fps) at each batch size, while the server is idle."""
    bench = {}
    for batch in batches:
        r = benchmark_fps(cfg, batch_size=batch, rounds=rounds, warmup=1, device=device)
        bench[f"batch_{batch}"] = {
            k: r[k] for k in ("batch_size", "full_fps", "full_ms_per_image", "backbone_fps", "torch_threads")
        }
        log(f"  dpdiff benchmark, batch {batch}: {r['full_fps']:.2f} images/s")
    return bench


def run_levels(
    url: str, images: list[bytes], clients: list[int], level_s: float, warmup_s: float, deadline: float, budget_s: float
) -> tuple[list[dict], list[int]]:
    """(a row per client count run, the client counts left out): each level gets at most ``level_s`` timed seconds,
    fewer when the time to ``deadline`` runs short (a level under 1 s is left out)."""
    levels, skipped = [], []
    for i, c in enumerate(clients):
        left = deadline - time.monotonic() - 3.0  # keep time to stop the server and write
        per_level = min(level_s, left / (len(clients) - i) - warmup_s)
        if per_level < 1.0:
            skipped.append(c)
            log(f"  {c} clients: skipped (budget of {budget_s:g} s spent)")
            continue
        row = load_level(url, images, c, per_level, warmup_s)
        levels.append(row)
        log(
            f"  {c} clients: {row['requests_per_s']:.2f} req/s, p50 {row['latency_ms']['p50']:.1f} ms, "
            f"p95 {row['latency_ms']['p95']:.1f} ms, mean batch {row['mean_batch_size']:.2f}, "
            f"{row['errors']} errors"
        )
    return levels, skipped


def host_info() -> dict:
    return {
        "cpu": cpu_name(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }


def model_info(args, cfg, weights: str, size: int, health: dict) -> dict:
    return {
        "run": args.run,
        "config": None if args.run else args.config,
        "overrides": QUICK_OVERRIDES if args.quick and not args.run else {},
        "dit_weights": weights,
        "backbone": cfg.backbone.name,
        "image_size": size,
        "noise_step": cfg.inference.noise_step,
        "ddim_steps": cfg.inference.ddim_steps,
        "ensemble": cfg.inference.ensemble,
        "device": health.get("device"),
    }


def serve_over_benchmark(levels: list[dict], bench: dict, clients: list[int]) -> dict:
    """Requests/s of each level over ``dpdiff benchmark``'s images/s at the same batch (else the largest one)."""
    ratios = {}
    for row in levels:
        ref = bench.get(f"batch_{row['clients']}") or bench.get(f"batch_{max(clients)}")
        if row["requests_per_s"] and ref:
            ratios[f"clients_{row['clients']}_over_batch_{ref['batch_size']}"] = row["requests_per_s"] / ref["full_fps"]
    return ratios


def main() -> int:
    args = parse_args()
    t_script = time.monotonic()
    deadline = t_script + args.budget_s
    level_s = args.level_s or (3.0 if args.quick else 15.0)
    warmup_s = args.warmup_s if args.warmup_s is not None else (1.0 if args.quick else 2.0)
    rounds = args.bench_rounds or (2 if args.quick else 3)
    out_path = Path(args.output) if args.output else RESULTS / ("serve_quick.json" if args.quick else "serve.json")
    clients = sorted(set(args.clients))

    with tempfile.TemporaryDirectory(prefix="dpdiff_serve_load_") as tmp:
        tmp = Path(tmp)
        cfg, run, weights = prepare_model(args, tmp)
        size = int(cfg.backbone.image_size)
        images = test_images(size)
        log(f"model: {args.run or args.config} ({weights} DiT weights), {size} px; starting dpdiff serve")
        t0 = time.monotonic()
        proc, url = start_server(run, args, tmp / "server.log")
        startup_s = time.monotonic() - t0
        try:
            health = httpx.get(url + "/health").json()
            log(f"server up in {startup_s:.1f} s at {url}; dpdiff benchmark at batch 1 and {max(clients)}")
            bench = benchmark_batches(cfg, sorted({1, max(clients)}), rounds, args.device)
            levels, skipped = run_levels(url, images, clients, level_s, warmup_s, deadline, args.budget_s)
            final_stats = httpx.get(url + "/health").json()["batches"]
        finally:
            stop_server(proc)

    ratios = serve_over_benchmark(levels, bench, clients)
    result = {
        "what": "dpdiff serve under load on loopback: requests/s and client-side latency per concurrency level, "
        "next to dpdiff benchmark's full-pipeline images/s (benchmark_fps) of the same config",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": host_info(),
        "model": model_info(args, cfg, weights, size, health),
        "server": {
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "startup_s": round(startup_s, 2),
            "batches": final_stats,
        },
        "request": {
            "endpoint": "POST /predict, raw PNG body, no overlay",
            "distinct_images": len(images),
            "image_bytes_mean": int(statistics.fmean(len(b) for b in images)),
        },
        "benchmark": bench,
        "levels": levels,
        "skipped_levels": skipped,
        "serve_over_benchmark": ratios,
        "budget_s": args.budget_s,
        "elapsed_s": round(time.monotonic() - t_script, 2),
    }
    atomic_write_json(out_path, result)
    log(f"written {out_path} ({result['elapsed_s']:.1f} s)")
    return 0 if levels and all(r["errors"] == 0 for r in levels) else 1


if __name__ == "__main__":
    sys.exit(main())
