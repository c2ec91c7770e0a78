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
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import RESULTS
from _speed_rss import bench_rss, rss_child

from dpdiff.backbones import build_backbone
from dpdiff.config import Config, load_config
from dpdiff.data import shared_data_dir
from dpdiff.data.dataset import ImageDataset
from dpdiff.data.readers.mvtec import load_split
from dpdiff.experiments.benchmark import cpu_name, measure, random_model, random_vit, stand_in_scoring_files
from dpdiff.features import resolve_device, tokens_from_maps
from dpdiff.features.cache import FeatureCache
from dpdiff.inference.detector import Detector
from dpdiff.scoring.noise import IndependentNoise
from dpdiff.scoring.scorer import Scorer, ScoringSettings
from dpdiff.training.distributed import DistInfo
from dpdiff.training.trainer import Trainer
from dpdiff.utils.io import atomic_write_json

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
    # what evaluation and prediction run, with a stand-in token bank (MTD's size) and image Gaussian when the preset
    # uses them
    detector = stand_in_scoring_files(Detector(backbone, model, cfg, device, **score_kw))
    out = inference_header(name, cfg, batch, feats, score_kw)
    bb = measure(lambda: detector.features(images), device, warmup, rounds)
    out["backbone"] = bb | {"fps": batch / bb["median_s"]}
    print(f"  [{name}] backbone only: {fmt(out['backbone']['fps'])} img/s (batch {batch})", flush=True)

    def inference(ensemble: int):
        return dataclasses.replace(cfg.inference, ensemble=ensemble)

    tokens = tokens_from_maps(feats.float())

    def dit(ensemble: int):
        scorer = detector.scorer(inference(ensemble))
        with torch.inference_mode():
            return scorer.token_scores(tokens, scorer.noise_source(torch.Generator(device).manual_seed(0)))

    def full_pipeline(ensemble: int):
        scorer = detector.scorer(inference(ensemble))
        with torch.inference_mode():
            noise = scorer.noise_source(torch.Generator(device).manual_seed(0))
            return scorer.score_features(detector.features(images), noise)

    maps = dit(1)
    post = measure(lambda: detector.scorer().postprocess(maps), device, warmup, rounds)
    out["postprocess"] = post | {"ms_per_image": 1e3 * post["median_s"] / batch}
    for e in ensembles:
        dit_t = measure(lambda e=e: dit(e), device, warmup, rounds)
        full = measure(lambda e=e: full_pipeline(e), device, warmup, rounds)
        row = pipeline_row(e, batch, dit_t, full, out["backbone"]["fps"], cfg, score_kw)
        if per_draw_loop and e > 1:  # the former implementation: one reconstruct() per noise draw
            lp = measure(lambda e=e: per_draw_loop_errors(model, feats, cfg, device, e), device, warmup, rounds)
            row["dit_per_draw_loop_ms_per_image"] = 1e3 * lp["median_s"] / batch
        out.setdefault("pipelines", []).append(row)
        print_pipeline_row(name, row, out)
    return out


def inference_header(name: str, cfg: Config, batch: int, feats: torch.Tensor, score_kw: dict) -> dict:
    """What :func:`bench_inference` measured with: batch, image size, tokens, DiT size, DDIM steps, options."""
    c, h, w = feats.shape[1:]
    return {
        "name": name,
        "batch": batch,
        "image_size": cfg.backbone.image_size,
        "tokens": [int(c), int(h), int(w)],
        "dit": {"hidden_dim": cfg.model.hidden_dim, "depth": cfg.model.depth, "num_heads": cfg.model.num_heads},
        "ddim_steps": cfg.inference.ddim_steps,
        "noise_step": cfg.inference.noise_step,
        "score_options": {k: str(v) for k, v in score_kw.items()},
    }


def pipeline_row(e: int, batch: int, dit_t: dict, full: dict, backbone_fps: float, cfg: Config, score_kw: dict) -> dict:
    """One row of :func:`bench_inference`'s ``pipelines``: the full pipeline with ``e`` noise draws against the
    backbone alone."""
    row = {
        "ensemble": e,
        "full": full | {"fps": batch / full["median_s"]},
        "dit_ms_per_image": 1e3 * dit_t["median_s"] / batch,
        "fps_ratio_full_over_backbone": (batch / full["median_s"]) / backbone_fps,
        "goal_ratio": GOAL_FPS_RATIO,
    }
    row["meets_goal"] = row["fps_ratio_full_over_backbone"] >= GOAL_FPS_RATIO
    # the shipped setting: the preset's own draws with no speed option on top (issue #13)
    row["preset"] = not score_kw and e == int(cfg.inference.ensemble) and cfg.inference.antithetic
    return row


def per_draw_loop_errors(model, feats: torch.Tensor, cfg: Config, device: torch.device, e: int) -> torch.Tensor:
    """The former implementation of ``e`` noise draws: one ``reconstruct()`` per draw, errors averaged."""
    with torch.inference_mode():
        inf = cfg.inference
        g = torch.Generator(device).manual_seed(0)
        one_draw = Scorer(model, ScoringSettings(inf.noise_step, inf.ddim_steps))
        tok = tokens_from_maps(feats.float())
        total = None
        for _ in range(e):
            x0, x0_hat = one_draw.reconstruct(tok, IndependentNoise(g))
            x0_hat = x0_hat[0]
            s = (x0_hat - x0).pow(2).sum(-1)
            total = s if total is None else total + s
        return total / e


def print_pipeline_row(name: str, row: dict, out: dict) -> None:
    extra = (
        f", per-draw loop {fmt(row['dit_per_draw_loop_ms_per_image'], 1)} ms/img"
        if "dit_per_draw_loop_ms_per_image" in row
        else ""
    )
    print(
        f"  [{name}] full pipeline, ensemble {row['ensemble']}: {fmt(row['full']['fps'])} img/s -> ratio "
        f"{fmt(row['fps_ratio_full_over_backbone'], 3)} (goal >= {GOAL_FPS_RATIO}); DiT "
        f"{fmt(row['dit_ms_per_image'], 1)} ms/img{extra}, post {fmt(out['postprocess']['ms_per_image'], 1)} "
        f"ms/img, backbone {fmt(1e3 / out['backbone']['fps'], 1)} ms/img",
        flush=True,
    )


# ---------------------------------------------------------------------------------------- training speed
def training_samples(n: int | None) -> tuple[list, str]:
    data = shared_data_dir() / "mtd"
    if data.is_dir():
        samples = load_split(data, "magnetic_tile", "train")
        return (samples[:n] if n else samples), f"MTD train ({data})"
    from dpdiff.data.readers.mvtec import load_dataset
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
    store, out["cache"] = time_feature_cache(cfg, backbone, samples, cache_root, device)
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


def time_feature_cache(cfg: Config, backbone, samples: list, cache_root: Path, device: torch.device) -> tuple:
    """(the feature store of ``samples``, timings): a first ``FeatureCache.get`` (extracting what is missing) and a
    second one from a fresh ``FeatureCache`` object (a hit)."""
    cache = FeatureCache(cache_root)
    t0 = time.perf_counter()
    store = cache.get(backbone, None, samples, cfg.backbone.image_size, cfg.train.feature_batch_size, device)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = FeatureCache(cache_root).get(
        backbone, None, samples, cfg.backbone.image_size, cfg.train.feature_batch_size, device
    )
    warm = time.perf_counter() - t0
    info = {
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
    return store, info


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
def parse_args() -> argparse.Namespace:
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
    return ap.parse_args()


def environment(device: torch.device, quick: bool, warmup: int, rounds: int) -> dict:
    """Where and how this run measures (printed, with a warning when other processes load the CPUs)."""
    env = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "compute_dtype": "float32 (DiT and backbone)",
        "feature_storage_dtype": "float16",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "quick": quick,
        "warmup_rounds": warmup,
        "timed_rounds": rounds,
        "statistic": "median",
        "load_average_at_start": list(os.getloadavg()),
    }
    print(
        f"device {env['device']} ({env['device_name']}), compute float32, features float16, "
        f"{env['torch_threads']} torch threads, {env['cpu_count']} CPUs, torch {env['torch']}, "
        f"load average {os.getloadavg()[0]:.2f}{' [QUICK smoke run]' if quick else ''}",
        flush=True,
    )
    if os.getloadavg()[0] > 0.5:
        print(
            f"WARNING: load average {os.getloadavg()[0]:.2f} before starting: other processes compete for the "
            f"CPUs, timings will be inflated and ratios distorted",
            flush=True,
        )
    return env


def bench_training_sections(
    args, lite, lite_cfg: Config, device: torch.device, warmup: int, tmp: Path, results: dict
) -> None:
    """(2) training steps/s from the cache vs through the backbone and (2b) ``Trainer.step`` of the shipped preset,
    into ``results["training"]`` (set after (2), so a failure in (2b) leaves (2) in the results)."""
    q = args.quick
    samples, source = training_samples(args.n_images)
    print(f"(2) training steps/s, {len(samples)} images of {source}", flush=True)
    results["training"] = training = bench_training(
        lite_cfg, lite, samples, Path(args.cache_dir), device, warmup + 1, 5 if q else 30, 2 if q else 6
    )
    training["data"] = source
    print("(2b) Trainer.step of the shipped preset, one and two threads, all tokens vs masked", flush=True)
    store = FeatureCache(Path(args.cache_dir)).get(
        lite, None, samples, lite_cfg.backbone.image_size, lite_cfg.train.feature_batch_size, device
    )
    training["trainer_step"] = bench_trainer_step(
        lite_cfg, store, samples, tmp / "trainer", device, warmup + 1, 5 if q else 20
    )


def main() -> int:
    args = parse_args()
    if args.rss_child:
        return rss_child(args, LITE_CFG)

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    q = args.quick
    warmup, rounds = (1, 2) if q else (2, 5)
    args.rss_steps = args.rss_steps or (5 if q else 40)
    args.n_images = args.n_images if args.n_images is not None else (48 if q else None)
    out_path = Path(args.out) if args.out else RESULTS / ("speed_quick.json" if q else "speed.json")
    tmp = Path(tempfile.mkdtemp(prefix="dpdiff_speed_"))
    own_cache = args.cache_dir is None
    args.cache_dir = str(tmp / "cache") if own_cache else args.cache_dir
    t_all = time.perf_counter()

    env = environment(device, q, warmup, rounds)
    results: dict = {"env": env}
    try:
        lite_cfg = load_config(LITE_CFG)
        b = lite_cfg.backbone
        lite = build_backbone(
            b.name, layers=b.layers, weights=b.weights, image_size=b.image_size, feature_stride=b.feature_stride
        )
        results |= bench_inference_sections(args, lite, lite_cfg, device, warmup, rounds, tmp)
        if "train" not in args.skip or "rss" not in args.skip:
            bench_training_sections(args, lite, lite_cfg, device, warmup, tmp, results)
        if "rss" not in args.skip:
            print(f"(3) peak RSS of train() ({args.rss_steps} steps), separate processes", flush=True)
            results["peak_rss"] = bench_rss(args, tmp, Path(__file__).resolve())
    finally:
        results["total_s"] = round(time.perf_counter() - t_all, 1)
        env["load_average_at_end"] = list(os.getloadavg())
        atomic_write_json(out_path, results)
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"wrote {out_path} ({results['total_s']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
