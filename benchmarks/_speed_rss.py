"""Section (3) of ``speed.py``: peak RSS of ``train()`` reading its features from the feature cache, against the same
process with a 16-image in-RAM feature tensor and (full run) the in-RAM extraction path. Each runs in its own
subprocess (``speed.py --_rss-child MODE``, :func:`rss_child`); peak RSS = the child's ``VmHWM`` from /proc.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dpdiff.config import load_config
from dpdiff.data import shared_data_dir
from dpdiff.data.readers.mvtec import load_split
from dpdiff.features.cache import FeatureCache
from dpdiff.utils.io import atomic_write_json


def rss_child(args, preset: str) -> int:
    """Runs in a subprocess: train() with features from the cache / a tiny tensor / in-RAM extraction."""
    torch.set_num_threads(args.threads)
    from dpdiff.training.trainer import build_backbone_from_config
    from dpdiff.workflows.train import train

    cfg = load_config(preset)
    data = shared_data_dir() / "mtd"
    cfg.data.root, cfg.data.categories = str(data), ["magnetic_tile"]
    cfg.train.device, cfg.train.steps = "cpu", args.rss_steps
    cfg.train.checkpoint_every = cfg.train.log_every = args.rss_steps
    samples = load_split(data, "magnetic_tile", "train")[: args.n_images or None]
    info: dict = {"mode": args.rss_child}
    if args.rss_child == "cache":
        backbone = build_backbone_from_config(cfg)
        features = FeatureCache(args.cache_dir).get(
            backbone, None, samples, cfg.backbone.image_size, cfg.train.feature_batch_size, "cpu"
        )
        info["tokens_fp16_bytes"] = features.nbytes
        info["shards_are_memmap"] = all(isinstance(s, np.memmap) for s in features.shards)
        del backbone
    elif args.rss_child == "baseline":
        backbone = build_backbone_from_config(cfg)
        g = backbone.grid_size(cfg.backbone.image_size)
        features = torch.randn(16, backbone.out_channels, *g).to(torch.float16)
        samples = samples[:16]
        del backbone
    else:  # "ram": the path without cache, train() extracts into an in-RAM tensor
        features, samples = None, None
        if args.n_images:  # only the first n images: a one-category subset folder of symlinks
            sub = Path(args.run_dir).parent / "mtd_subset"
            dst = sub / "magnetic_tile" / "train" / "good"
            dst.mkdir(parents=True, exist_ok=True)
            for s in load_split(data, "magnetic_tile", "train")[: args.n_images]:
                if not (dst / s.image_path.name).exists():
                    os.symlink(s.image_path, dst / s.image_path.name)
            cfg.data.root = str(sub)
    gc.collect()
    t0 = time.perf_counter()
    train(cfg, Path(args.run_dir), overwrite=True, features=features, samples=samples)
    info["train_s"] = time.perf_counter() - t0
    info["vmhwm_kib"] = vm_hwm_kib()
    info["ru_maxrss_kib_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    atomic_write_json(args.child_out, info)
    return 0


def vm_hwm_kib() -> int | None:
    """Peak resident set of this process image since exec (``VmHWM``, KiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def run_rss_child(mode: str, args, tmp: Path, script: Path) -> dict:
    out_json = tmp / f"rss_{mode}.json"
    log = tmp / f"rss_{mode}.log"
    cmd = [
        sys.executable,
        str(script),
        "--_rss-child",
        mode,
        "--threads",
        str(args.threads),
        "--rss-steps",
        str(args.rss_steps),
        "--n-images",
        str(args.n_images or 0),
        "--cache-dir",
        str(args.cache_dir),
        "--run-dir",
        str(tmp / f"run_{mode}"),
        "--child-out",
        str(out_json),
    ]
    env = dict(os.environ, TQDM_DISABLE="1")
    with open(log, "w") as fh:
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"RSS child '{mode}' failed (exit {p.returncode}):\n{tail}")
    info = json.loads(out_json.read_text())
    # Linux carries the launching process's peak over exec into ru_maxrss (the child starts from this
    # process's memory image), so wait4's ru_maxrss is at least this benchmark's own peak: recorded,
    # but the child's VmHWM (peak RSS of its own image since exec) is what is compared.
    info["ru_maxrss_wait4_bytes"] = usage.ru_maxrss * 1024
    if info.get("vmhwm_kib") is None:
        raise RuntimeError("peak RSS needs /proc/self/status (Linux)")
    info["peak_rss_bytes"] = info["vmhwm_kib"] * 1024
    return info


def bench_rss(args, tmp: Path, script: Path) -> dict:
    data = shared_data_dir() / "mtd"
    if not data.is_dir():
        msg = f"skipped: Magnetic Tile data not found at {data} (set DPDIFF_SHARED_DATA)"
        print(f"  peak RSS: {msg}", flush=True)
        return {"skipped": msg}
    modes = ["baseline", "cache"] + (["ram"] if not args.quick else [])
    res = {m: run_rss_child(m, args, tmp, script) for m in modes}
    tokens = res["cache"]["tokens_fp16_bytes"]
    base, cached = res["baseline"]["peak_rss_bytes"], res["cache"]["peak_rss_bytes"]
    out = {
        "steps": args.rss_steps,
        "num_images": args.n_images or "all",
        "tokens_fp16_bytes": tokens,
        "peak_rss_bytes": {m: r["peak_rss_bytes"] for m, r in res.items()},
        "children": res,
        "budget_bytes": base + tokens,
        "excess_over_baseline_bytes": cached - base,
        "meets_goal": cached <= base + tokens,
        "goal": "peak RSS(cache) <= peak RSS(baseline: same process, 16-image tensor) + fp16 token bytes",
        "measure": "VmHWM of each child process (peak RSS since exec), read by the child at its end",
    }
    mib = 2**20
    line = (
        f"  peak RSS: cache {cached / mib:.0f} MiB vs baseline (model only) {base / mib:.0f} MiB + tokens "
        f"{tokens / mib:.1f} MiB = budget {(base + tokens) / mib:.0f} MiB -> "
        f"{'OK' if out['meets_goal'] else 'OVER'} (excess {(cached - base) / mib:.1f} MiB)"
    )
    if "ram" in res:
        line += f"; in-RAM extraction path {res['ram']['peak_rss_bytes'] / mib:.0f} MiB"
    print(line, flush=True)
    return out
