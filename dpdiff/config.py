"""Typed configuration (dataclasses) with YAML presets in ``configs/``.

Every value the paper states is the default here (Sec. 5.1.3); values the paper leaves open are
marked "choice" and documented in docs/method.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass
class BackboneConfig:
    name: str = "tf_efficientnet_lite0"
    layers: list[int] | None = None        # None: the backbone's default (ViT-B: blocks 6-11; Lite0: stages 2,3)
    weights: str | None = None             # local file; None = the installed package's weights (Lite) / required (DINOv2)
    image_size: int = 256
    feature_stride: int | None = None      # CNNs: token grid = image_size // feature_stride (default 16)


@dataclass
class ModelConfig:
    num_local_prototypes: int = 8          # M (paper)
    num_global_prototypes: int = 2         # K (paper)
    use_local_prototypes: bool = True
    use_global_prototypes: bool = True
    prototype_heads: int = 4
    hidden_dim: int = 256                  # DiT width (choice)
    depth: int = 4                         # DiT blocks (choice)
    num_heads: int = 4
    mlp_ratio: float = 4.0
    prototype_cross_attention: bool = True  # False = diffusion-only ablation (Table 5 row 3)
    denoiser: str = "dit"                   # dit (paper, Eq. 16-17) | unet | uvit: Table 9 variants (docs/method.md)
    diffusion: bool = True                 # False = prototype-only ablation (Table 5 rows 1-2): no denoiser is
                                           # built or trained; score with inference.scoring=prototype
    num_timesteps: int = 1000              # T (paper)
    beta_start: float = 1e-4               # paper
    beta_end: float = 0.02                 # paper
    standardize_tokens: bool = True        # choice: per-channel z-score of tokens before diffusion
    ot_epsilon: float = 0.05               # choice: entropic regularisation of Eq. (13)
    ot_iters: int = 50
    ot_cost_per_channel: bool = True       # choice: cost / C so epsilon is width-independent
    train_max_timestep: int | None = None  # choice: None = uniform over all T (paper); else t ~ U[0, this]
    output_skip: bool = True               # choice (issue #13): eps = denoiser(...) + W x_t with a learned CxC W
                                           # (zero-init), so the noise head has full rank even when hidden_dim < C;
                                           # W x_t is the exact Bayes noise predictor for Gaussian tokens


@dataclass
class LossConfig:
    lambda_local: float = 0.2              # lambda_1 (paper)
    lambda_global: float = 0.001           # lambda_2 (paper)


@dataclass
class TrainConfig:
    batch_size: int = 32                   # paper
    lr: float = 1e-4                       # paper (Adam)
    weight_decay: float = 0.0
    steps: int = 2000
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    log_every: int = 25
    checkpoint_every: int = 500
    feature_batch_size: int = 16
    grad_clip: float | None = 1.0          # choice: stabilises the noisy diffusion loss
    ema_decay: float = 0.999               # choice: EMA of the weights, used at inference and saved as
                                           # model.safetensors (0 = off); decay warms up as (1+n)/(10+n)
    lr_schedule: str = "cosine"            # choice: constant | cosine (decay to 0 at train.steps)
    warmup_steps: int = 100                # choice: linear lr warm-up (0 = off)
    feature_cache: bool = False            # memory-mapped fp16 token cache reused across runs (engine/features/cache.py)
    cache_dir: str | None = None           # default $DPDIFF_CACHE or ~/.cache/dpdiff/features


@dataclass
class InferenceConfig:
    noise_step: int = 100                  # choice (paper: "moderate"): 0-based index of t in 0..T-1
    ddim_steps: int = 3                    # paper: 3 is best (Fig. 6)
    ensemble: int = 2                      # choice: noise draws per image (the paper: 1)
    antithetic: bool = True                # choice: draws come in pairs (eps, -eps) for tokens and prototypes;
                                           # needs an even ensemble (issue #13: one pair ~ 16 independent draws)
    ensemble_reduce: str = "error_of_mean"  # error_of_mean (score the mean reconstruction) | mean_error
    common_noise: bool = True              # choice: every image gets the same noise draws (seeded with
                                           # inference.seed): a score depends on the image alone, not its batch
    scoring: str = "reconstruction"        # reconstruction (Eq. 22) | prototype (Table 5 rows 1-2: per token
                                           # 1 - max cosine similarity to the image's own prototypes, no diffusion)
    seed: int = 0
    smoothing_sigma: float = 4.0           # choice: Gaussian sigma in pixels after upsampling (0 = off)
    pool_size: int = 16                    # choice: AvgPool kernel (pixels) of Eq. (24)
    image_score: str = "pooled_max"        # pooled_max (Eq. 24, paper/ADer) | top_percent_mean (Dinomaly)
    top_percent: float = 1.0               # top_percent_mean: mean of the highest this-% pixels of the map
    batch_size: int = 16


@dataclass
class EvaluationConfig:
    """The evaluation protocol; every results file records it (docs/datasets.md, "Evaluation protocol")."""
    resolution: int | None = None          # maps and masks at this size; None = backbone.image_size (Dinomaly: 256)
    mask_threshold: float = 0.0            # mask value in [0, 1] must be > this (Dinomaly 0, ADer 0.5)
    mask_resize: str = "nearest"           # nearest | bilinear (resampling of the mask before thresholding)


@dataclass
class DataConfig:
    root: str | None = None
    categories: list[str] | None = None    # None = all categories found under root
    format: str = "mvtec"                  # mvtec | mpdd | visa | realiad | realiad_variety | btad | generic | auto
    options: dict = field(default_factory=dict)  # reader options, e.g. {resolution: 512} for Real-IAD (docs/datasets.md)


@dataclass
class Config:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> "Config":
        return _from_dict(cls, d or {}, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Config":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            d = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from e
        if d is not None and not isinstance(d, dict):
            raise ValueError(f"{path}: top level must be a mapping, got {type(d).__name__}")
        return cls.from_dict(d or {}, source=str(path))

    def override(self, dotted: dict[str, Any]) -> "Config":
        """Apply {"train.steps": 100, ...} overrides (CLI). Unknown keys raise."""
        d = self.to_dict()
        for key, value in dotted.items():
            section, _, name = key.partition(".")
            if section not in d or not isinstance(d[section], dict) or name not in d[section]:
                raise KeyError(f"unknown config key {key!r}")
            d[section][name] = value
        return Config.from_dict(d, source="overrides")


def _from_dict(cls, d: dict[str, Any], source: str):
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {sorted(unknown)} for {cls.__name__}; known: {sorted(known)}")
    kwargs = {}
    for name, f in known.items():
        if name not in d:
            continue
        value = d[name]
        ftype = f.default_factory if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if ftype is not None and is_dataclass(ftype):
            if not isinstance(value, dict):
                raise ValueError(f"{source}: section {name!r} must be a mapping")
            value = _from_dict(ftype, value, f"{source}:{name}")
        kwargs[name] = value
    return cls(**kwargs)
