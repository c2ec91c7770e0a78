"""Speed benchmark (issue #5): inference FPS vs the backbone alone, training from the feature cache vs
through the backbone, and peak RSS of training from the cache. Everything is measured in one run,
side by side, with warm-up rounds and the median of several timed rounds.

    python benchmarks/speed.py            # full run (about 5-10 minutes on 2 CPU cores)
    python benchmarks/speed.py --quick    # smoke version (about 1-2 minutes)

(1) Inference at the CPU preset (lite0_cpu: EfficientNet-Lite0, 256 px, its DiT size,
    3 DDIM steps) with random (untrained) DiT weights: backbone-only FPS, full-pipeline FPS
    (backbone + DiT reconstruction + upsampling/smoothing/pooling) for ensemble 1 and the preset's
    ensemble, and the DiT / post-processing shares. Also DINOv2 ViT-B/14+reg at 448 px (random
    weights through ``build_vit``) with the paper preset's DiT, at a small batch.
(2) Training steps/s: tokens read from the memory-mapped feature cache vs images decoded and run
    through the backbone every step (same model, batch, optimiser).
(3) Peak RSS of ``train()`` on the Magnetic Tile training set read from the cache, vs the same
    process with a 16-image in-RAM feature tensor ("the model": interpreter, torch, backbone built
    and freed, DiT, Adam) and (full run) the in-RAM extraction path; each in its own subprocess,
    peak RSS = the child's ``VmHWM`` from /proc. (Not ``ru_maxrss`` of ``wait4``/``RUSAGE_CHILDREN``:
    Linux carries the launching process's peak RSS over ``exec`` into it, measured here: a 10 MiB child
    of an 800 MiB parent reports 811 MiB.) Skipped with a message when the data is absent.

Writes benchmarks/results/speed.json (``--quick``: speed_quick.json) atomically.

The pipeline timed is ``dpdiff.inference.detector.Detector``, the object evaluation and prediction score with;
the timing helpers and the random DiT/ViT builders are shared with ``dpdiff.experiments.benchmark``; for the
FPS of one config (paper Table 4) use ``dpdiff benchmark``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpdiff.backbones import build_backbone  # noqa: E402
from dpdiff.config import Config, load_config  # noqa: E402
from dpdiff.data import shared_data_dir  # noqa: E402
from dpdiff.data.dataset import ImageDataset  # noqa: E402
from dpdiff.data.mvtec import load_split  # noqa: E402
from dpdiff.experiments.benchmark import cpu_name, measure, random_model, random_vit  # noqa: E402
from dpdiff.features import resolve_device, tokens_from_maps  # noqa: E402
from dpdiff.features.cache import FeatureCache  # noqa: E402
from dpdiff.inference.detector import Detector  # noqa: E402
from dpdiff.training.distributed import DistInfo  # noqa: E402
from dpdiff.training.trainer import Trainer  # noqa: E402
from dpdiff.utils.io import atomic_write_json  # noqa: E402

LITE_CFG = "lite0_cpu"  # packaged presets (dpdiff/configs/)
PAPER_CFG = "paper_dinov2_b448"
GOAL_FPS_RATIO = 0.80
GOAL_TRAIN_SPEEDUP = 5.0


# ---------------------------------------------------------------------------------------- helpers
def fmt(x: float, nd: int = 2) -> str:
    return f"{x:.{nd}f}"


def bench_inference(
    name: str,
    backbone,
    cfg: Config,
    device: torch.device,
    batch: int,
    warmup: int,
    rounds: int,
    ensembles: list[int],
    score_kw: dict,
    per_draw_loop: bool,
) -> dict:
    size = cfg.backbone.image_size
    torch.manual_seed(1)
    images = torch.randn(batch, 3, size, size, device=device)
    backbone = backbone.to(device).eval()
    with torch.inference_mode():
        feats = backbone(images)
    c, h, w = feats.shape[1:]
    model = random_model(c, (h, w), cfg, device)
    detector = Detector(backbone, model, cfg, device, **score_kw)  # what evaluation and prediction run
    out: dict = {
        "name": name,
        "batch": batch,
        "image_size": size,
        "tokens": [int(c), int(h), int(w)],
        "dit": {"hidden_dim": cfg.model.hidden_dim, "depth": cfg.model.depth, "num_heads": cfg.model.num_heads},
        "ddim_steps": cfg.inference.ddim_steps,
        "noise_step": cfg.inference.noise_step,
        "score_options": {k: str(v) for k, v in score_kw.items()},
    }
    bb = measure(lambda: detector.features(images), device, warmup, rounds)
    out["backbone"] = bb | {"fps": batch / bb["median_s"]}
    print(f"  [{name}] backbone only: {fmt(out['backbone']['fps'])} img/s (batch {batch})", flush=True)

    def inference(ensemble: int):
        return dataclasses.replace(cfg.inference, ensemble=ensemble)

    def dit(ensemble: int):
        return detector.token_scores(feats, torch.Generator(device).manual_seed(0), inference(ensemble))

    def full_pipeline(ensemble: int):
        return detector(images, torch.Generator(device).manual_seed(0), inference(ensemble))

    maps = dit(1)
    post = measure(lambda: detector.postprocess(maps), device, warmup, rounds)
    out["postprocess"] = post | {"ms_per_image": 1e3 * post["median_s"] / batch}
    for e in ensembles:
        dit_t = measure(lambda e=e: dit(e), device, warmup, rounds)
        full = measure(lambda e=e: full_pipeline(e), device, warmup, rounds)
        row = {
            "ensemble": e,
            "full": full | {"fps": batch / full["median_s"]},
            "dit_ms_per_image": 1e3 * dit_t["median_s"] / batch,
            "fps_ratio_full_over_backbone": (batch / full["median_s"]) / out["backbone"]["fps"],
            "goal_ratio": GOAL_FPS_RATIO,
        }
        row["meets_goal"] = row["fps_ratio_full_over_backbone"] >= GOAL_FPS_RATIO
        # the shipped setting: the preset's own draws with no speed option on top (issue #13)
        row["preset"] = not score_kw and e == int(cfg.inference.ensemble) and cfg.inference.antithetic
        if per_draw_loop and e > 1:  # the former implementation: one reconstruct() per noise draw

            def loop(e: int = e):
                with torch.inference_mode():
                    inf = cfg.inference
                    g = torch.Generator(device).manual_seed(0)
                    tok = tokens_from_maps(feats.float())
                    total = None
                    for _ in range(e):
                        x0, x0_hat = model.reconstruct(tok, inf.noise_step, inf.ddim_steps, g)
                        s = (x0_hat - x0).pow(2).sum(-1)
                        total = s if total is None else total + s
                    return total / e

            lp = measure(loop, device, warmup, rounds)
            row["dit_per_draw_loop_ms_per_image"] = 1e3 * lp["median_s"] / batch
        out.setdefault("pipelines", []).append(row)
        extra = (
            f", per-draw loop {fmt(row['dit_per_draw_loop_ms_per_image'], 1)} ms/img"
            if "dit_per_draw_loop_ms_per_image" in row
            else ""
        )
        print(
            f"  [{name}] full pipeline, ensemble {e}: {fmt(row['full']['fps'])} img/s -> ratio "
            f"{fmt(row['fps_ratio_full_over_backbone'], 3)} (goal >= {GOAL_FPS_RATIO}); DiT "
            f"{fmt(row['dit_ms_per_image'], 1)} ms/img{extra}, post {fmt(out['postprocess']['ms_per_image'], 1)} "
            f"ms/img, backbone {fmt(1e3 / out['backbone']['fps'], 1)} ms/img",
            flush=True,
        )
    return out


# ---------------------------------------------------------------------------------------- training speed
def training_samples(n: int | None) -> tuple[list, str]:
    data = shared_data_dir() / "mtd"
    if data.is_dir():
        samples = load_split(data, "magnetic_tile", "train")
        return (samples[:n] if n else samples), f"MTD train ({data})"
    from dpdiff.data.mvtec import load_dataset
    from dpdiff.data.synthetic import generate_synthetic_dataset

    root = Path(tempfile.mkdtemp(prefix="dpdiff_speed_synth_"))
    per = max(8, (n or 64) // 2)
    generate_synthetic_dataset(
        root,
        num_categories=2,
        train_per_category=per,
        test_good_per_category=1,
        test_defect_per_category=1,
        image_size=256,
        seed=0,
    )
    samples = load_dataset(root, None, "train")
    return (samples[:n] if n else samples), f"synthetic ({root}; MTD not found at {data})"


def bench_training(
    cfg: Config,
    backbone,
    samples: list,
    cache_root: Path,
    device: torch.device,
    warmup: int,
    cached_steps: int,
    backbone_steps: int,
) -> dict:
    out: dict = {"num_images": len(samples), "batch_size": cfg.train.batch_size}
    cache = FeatureCache(cache_root)
    t0 = time.perf_counter()
    store = cache.get(backbone, None, samples, cfg.backbone.image_size, cfg.train.feature_batch_size, device)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = FeatureCache(cache_root).get(
        backbone, None, samples, cfg.backbone.image_size, cfg.train.feature_batch_size, device
    )
    warm = time.perf_counter() - t0
    out["cache"] = {
        "cold_get_s": cold,
        "extracted_images": cache.last_extracted,
        "warm_get_s": warm,
        "tokens_fp16_bytes": store.nbytes,
        "shape": list(store.shape),
    }
    print(
        f"  cache: first get {fmt(cold, 1)} s ({cache.last_extracted} images extracted), second get "
        f"{fmt(warm * 1e3, 1)} ms (hit), tokens {store.nbytes / 2**20:.1f} MiB fp16",
        flush=True,
    )
    n, c, h, w = store.shape
    bs = min(cfg.train.batch_size, n)
    g = torch.Generator().manual_seed(123)
    gather = measure(lambda: store[torch.randint(0, n, (bs,), generator=g)], device, warmup, max(5, cached_steps))
    out["cache_read_ms_per_batch"] = 1e3 * gather["median_s"]
    # the real step (Trainer.step: batch draw, loss, backward, clipping, lr schedule, Adam, EMA) from the cache,
    # and the same step with the batch's images pushed through the backbone first (what training without the
    # feature cache adds per step)
    dataset = ImageDataset(samples, cfg.backbone.image_size, backbone.mean, backbone.std, load_masks=False)
    trainer = real_trainer(cfg, store, samples, cache_root / "run_cache", device)
    step_no = iter(range(10**9))

    def through_backbone() -> None:
        idx = torch.randint(0, n, (bs,), generator=g)
        images = torch.stack([dataset[int(i)]["image"] for i in idx]).to(device)
        with torch.inference_mode():
            backbone(images)
        trainer.step(next(step_no))

    a = measure(lambda: trainer.step(next(step_no)), device, warmup, cached_steps)
    b = measure(through_backbone, device, max(1, warmup // 2), backbone_steps)
    out["from_cache"] = a | {"steps_per_s": 1 / a["median_s"]}
    out["through_backbone"] = b | {"steps_per_s": 1 / b["median_s"]}
    out["speedup"] = out["from_cache"]["steps_per_s"] / out["through_backbone"]["steps_per_s"]
    out["goal_speedup"] = GOAL_TRAIN_SPEEDUP
    out["meets_goal"] = out["speedup"] >= GOAL_TRAIN_SPEEDUP
    print(
        f"  training: {fmt(out['from_cache']['steps_per_s'])} steps/s from the cache vs "
        f"{fmt(out['through_backbone']['steps_per_s'])} through the backbone -> {fmt(out['speedup'], 1)}x "
        f"(goal >= {GOAL_TRAIN_SPEEDUP}x; batch {bs}; reading a batch from the cache "
        f"{fmt(out['cache_read_ms_per_batch'], 2)} ms)",
        flush=True,
    )
    return out


def real_trainer(cfg: Config, features, samples: list, run_dir: Path, device: torch.device) -> Trainer:
    """A :class:`~dpdiff.training.trainer.Trainer` set up as ``dpdiff train`` sets it up, on these features (its
    ``step`` is what is timed; nothing is saved: the steps run outside ``fit``)."""
    cfg = cfg.override({"train.device": str(device)})
    return Trainer(cfg, run_dir, DistInfo(device=device)).setup(overwrite=True, features=features, samples=samples)


def bench_trainer_step(
    cfg: Config, features, samples: list, run_root: Path, device: torch.device, warmup: int, steps: int
) -> dict:
    """steps/s and tokens/s of ``Trainer.step`` with the shipped preset, on one and two threads, with every token
    and with masked training (``train.token_keep`` 0.5; issue #22). Tokens/s counts the tokens the DiT sees."""
    out: dict = {}
    n_tokens = int(features.shape[2] * features.shape[3])
    before = torch.get_num_threads()
    try:
        for keep in (1.0, 0.5):
            trainer = real_trainer(
                cfg.override({"train.token_keep": keep}), features, samples, run_root / f"k{keep}", device
            )
            bs = trainer.batch_size
            step_no = iter(range(10**9))
            for threads in (1, 2):
                torch.set_num_threads(threads)
                r = measure(lambda t=trainer, it=step_no: t.step(next(it)), device, warmup, steps)
                sps = 1.0 / r["median_s"]
                out[f"token_keep={keep:g}, threads={threads}"] = r | {
                    "steps_per_s": sps,
                    "tokens_per_s": sps * bs * round(keep * n_tokens),
                    "batch_size": bs,
                    "minutes_per_3000_steps": 3000 / sps / 60,
                }
                print(
                    f"  Trainer.step, token_keep {keep:g}, {threads} thread(s): {fmt(sps)} steps/s, "
                    f"{sps * bs * round(keep * n_tokens):.0f} tokens/s, 3000 steps in {3000 / sps / 60:.1f} min",
                    flush=True,
                )
    finally:
        torch.set_num_threads(before)
    return out


# ---------------------------------------------------------------------------------------- peak RSS
def rss_child(args) -> int:
    """Runs in a subprocess: train() with features from the cache / a tiny tensor / in-RAM extraction."""
    torch.set_num_threads(args.threads)
    from dpdiff.training.trainer import build_backbone_from_config
    from dpdiff.workflows.train import train

    cfg = load_config(LITE_CFG)
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


def run_rss_child(mode: str, args, tmp: Path) -> dict:
    out_json = tmp / f"rss_{mode}.json"
    log = tmp / f"rss_{mode}.log"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
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


def bench_rss(args, tmp: Path) -> dict:
    data = shared_data_dir() / "mtd"
    if not data.is_dir():
        msg = f"skipped: Magnetic Tile data not found at {data} (set DPDIFF_SHARED_DATA)"
        print(f"  peak RSS: {msg}", flush=True)
        return {"skipped": msg}
    modes = ["baseline", "cache"] + (["ram"] if not args.quick else [])
    res = {m: run_rss_child(m, args, tmp) for m in modes}
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


def bench_inference_sections(
    args, lite, lite_cfg: Config, device: torch.device, warmup: int, rounds: int, tmp: Path
) -> dict:
    """(1) Lite0 at the CPU preset (plus the --autocast/--compile variants) and (1b) DINOv2 at the paper's
    preset, unless skipped."""
    results, q = {}, args.quick
    if "lite0" not in args.skip:
        print("(1) inference, EfficientNet-Lite0 @256 (lite0_cpu), random DiT weights", flush=True)
        ens = sorted({1, int(lite_cfg.inference.ensemble)})
        batch = 4 if q else int(lite_cfg.inference.batch_size)
        results["inference_lite0"] = bench_inference(
            "lite0@256", lite, lite_cfg, device, batch, warmup, rounds, ens, {}, per_draw_loop=True
        )
        extra = []
        if args.autocast:
            extra.append(("autocast", {"autocast_dtype": args.autocast}))
        if args.compile:
            extra.append(("compile", {"compile": True}))
        float_backbone = results["inference_lite0"]["backbone"]["fps"]
        for label, kw in extra:
            r = bench_inference(f"lite0@256 {label}", lite, lite_cfg, device, batch, warmup, rounds, ens, kw, False)
            for row in r["pipelines"]:  # the goal is against the FLOAT backbone alone, measured above
                row["fps_ratio_full_over_float_backbone"] = row["full"]["fps"] / float_backbone
                print(
                    f"  [lite0@256 {label}] ensemble {row['ensemble']}: {fmt(row['full']['fps'])} img/s = "
                    f"{fmt(row['fps_ratio_full_over_float_backbone'], 3)} x the float32 backbone alone",
                    flush=True,
                )
            results[f"inference_lite0_{label}"] = r
    if "dinov2" not in args.skip:
        paper = load_config(PAPER_CFG)
        if q:  # smoke: the same code path at ViT-S/14 224 px
            arch, size, batch = "vit_small_patch14_reg4_dinov2", 224, 1
        else:
            arch, size, batch = "vit_base_patch14_reg4_dinov2", paper.backbone.image_size, 2
        paper.backbone.image_size = size
        print(
            f"(1b) inference, DINOv2 {arch} @{size} (random weights), paper DiT "
            f"{paper.model.hidden_dim}x{paper.model.depth}, batch {batch}",
            flush=True,
        )
        vit = random_vit(arch, list(paper.backbone.layers), size, name=f"{arch}(random)", tmp_dir=tmp)
        results["inference_dinov2"] = bench_inference(
            f"{arch}@{size}",
            vit,
            paper,
            device,
            batch,
            1,
            max(2, rounds - 2),
            [max(1, int(paper.inference.ensemble))],
            {},
            False,
        )
        del vit
        gc.collect()
    return results


# ---------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke version: small batches, few rounds, subsets")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    ap.add_argument("--cache-dir", default=None, help="feature cache root (default: a temp folder, removed after)")
    ap.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/speed.json, --quick: speed_quick.json)"
    )
    ap.add_argument("--autocast", default=None, help="also time the pipeline with this autocast dtype (bf16/fp16)")
    ap.add_argument("--compile", action="store_true", help="also time the pipeline with torch.compile'd DiT")
    ap.add_argument("--skip", nargs="*", default=[], choices=["lite0", "dinov2", "train", "rss"])
    # internal: the peak-RSS subprocess
    ap.add_argument("--_rss-child", dest="rss_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rss-steps", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n-images", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        return rss_child(args)

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    q = args.quick
    warmup, rounds = (1, 2) if q else (2, 5)
    args.rss_steps = args.rss_steps or (5 if q else 40)
    args.n_images = args.n_images if args.n_images is not None else (48 if q else None)
    out_path = (
        Path(args.out) if args.out else ROOT / "benchmarks" / "results" / ("speed_quick.json" if q else "speed.json")
    )
    tmp = Path(tempfile.mkdtemp(prefix="dpdiff_speed_"))
    own_cache = args.cache_dir is None
    args.cache_dir = str(tmp / "cache") if own_cache else args.cache_dir
    t_all = time.perf_counter()

    env = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "compute_dtype": "float32 (DiT and backbone)",
        "feature_storage_dtype": "float16",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "quick": q,
        "warmup_rounds": warmup,
        "timed_rounds": rounds,
        "statistic": "median",
        "load_average_at_start": list(os.getloadavg()),
    }
    print(
        f"device {env['device']} ({env['device_name']}), compute float32, features float16, "
        f"{env['torch_threads']} torch threads, {env['cpu_count']} CPUs, torch {env['torch']}, "
        f"load average {os.getloadavg()[0]:.2f}{' [QUICK smoke run]' if q else ''}",
        flush=True,
    )
    if os.getloadavg()[0] > 0.5:
        print(
            f"WARNING: load average {os.getloadavg()[0]:.2f} before starting: other processes compete for the "
            f"CPUs, timings will be inflated and ratios distorted",
            flush=True,
        )
    results: dict = {"env": env}
    try:
        lite_cfg = load_config(LITE_CFG)
        b = lite_cfg.backbone
        lite = build_backbone(
            b.name, layers=b.layers, weights=b.weights, image_size=b.image_size, feature_stride=b.feature_stride
        )
        results |= bench_inference_sections(args, lite, lite_cfg, device, warmup, rounds, tmp)
        if "train" not in args.skip or "rss" not in args.skip:
            samples, source = training_samples(args.n_images)
            print(f"(2) training steps/s, {len(samples)} images of {source}", flush=True)
            results["training"] = bench_training(
                lite_cfg, lite, samples, Path(args.cache_dir), device, warmup + 1, 5 if q else 30, 2 if q else 6
            )
            results["training"]["data"] = source
            print("(2b) Trainer.step of the shipped preset, one and two threads, all tokens vs masked", flush=True)
            store = FeatureCache(Path(args.cache_dir)).get(
                lite, None, samples, lite_cfg.backbone.image_size, lite_cfg.train.feature_batch_size, device
            )
            results["training"]["trainer_step"] = bench_trainer_step(
                lite_cfg, store, samples, tmp / "trainer", device, warmup + 1, 5 if q else 20
            )
        if "rss" not in args.skip:
            print(f"(3) peak RSS of train() ({args.rss_steps} steps), separate processes", flush=True)
            results["peak_rss"] = bench_rss(args, tmp)
    finally:
        results["total_s"] = round(time.perf_counter() - t_all, 1)
        env["load_average_at_end"] = list(os.getloadavg())
        atomic_write_json(out_path, results)
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"wrote {out_path} ({results['total_s']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
