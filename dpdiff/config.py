"""Typed configuration (dataclasses), validated on every load and override, with packaged YAML presets.

Every value the paper states is the default here (Sec. 5.1.3); values the paper leaves open are
marked "choice" and documented in docs/method.md.

Presets ship as package data in ``dpdiff/configs/<name>.yaml``: :func:`load_config` takes a preset name
(``"lite0_cpu"``) or the path of a YAML file. A YAML file may start from another one with ``base: NAME``
(a packaged preset) or ``base: PATH`` (relative to the file) and give only what differs; sections are
merged key by key.

What a key means is said once, on its field (:func:`_setting`, ``dataclasses.field`` metadata):

* ``help``: what it does; ``docs/configuration.md`` is generated from it (``python -m dpdiff.config_docs``);
* ``choices``: the allowed values of an enumerated key, a tuple of :mod:`dpdiff.choices` that the modules
  implementing the choice (and the command line) read too;
* ``ge`` / ``gt`` / ``le`` / ``lt``: numeric bounds;
* ``role``: :data:`RUNTIME` for where and how a computation runs (device, workers, logging, checkpoint
  interval, feature cache): the same weights and the same scores whatever its value; :data:`LOCATION` for
  where an input lives (moving the files changes nothing). The ``inference`` and ``evaluation`` sections are
  :data:`TEST_TIME`: they change the scores, never the trained weights.

:func:`weight_neutral_keys` (run-time keys + the test-time sections) is what resuming
(model/checkpoint.py) and the ablation training key (experiments/ablate.py) build on.

This module imports nothing from dpdiff but the bottom-layer ``dpdiff.choices``, ``dpdiff.config_checks`` (one
value against its declaration) and ``dpdiff.utils.errors``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from dpdiff.choices import (
    DENOISER_NAMES,
    ENSEMBLE_REDUCTIONS,
    FORMAT_CHOICES,
    IMAGE_SCORE_RULES,
    LOGGERS,
    LR_SCHEDULES,
    MASK_RESIZE_MODES,
    PREDICTION_TARGETS,
    RESIZE_MODES,
    SCORING_MODES,
)
from dpdiff.config_checks import check_relations, check_value, field_hints
from dpdiff.utils.errors import ConfigError, ConfigKeyError

#: Field role: where/how a computation runs; changes neither the trained weights nor the scores.
RUNTIME = "runtime"
#: Field role: where an input file or folder lives (the same files elsewhere give the same run).
LOCATION = "location"
#: Section role: test-time settings; they change the scores, never the trained weights.
TEST_TIME = "test_time"

#: Packaged presets (``<name>.yaml``) and ablation grids (``ablations/<name>.yaml``), shipped in the wheel.
PRESET_DIR = Path(__file__).resolve().parent / "configs"
GRID_DIR = PRESET_DIR / "ablations"
_YAML_SUFFIXES = (".yaml", ".yml")


def _setting(
    default: Any = MISSING,
    *,
    help: str,
    factory: Any = MISSING,
    choices: tuple[str, ...] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    role: str | None = None,
) -> Any:
    """A dataclass field (``default`` or ``factory``, as ``dataclasses.field``) whose metadata carries its
    ``help`` text, its allowed values (``choices``, bounds) and its ``role``."""
    limits = (("choices", choices), ("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("role", role))
    meta = {k: v for k, v in limits if v is not None} | {"help": help}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class BackboneConfig:
    name: str = _setting("tf_efficientnet_lite0", help="the backbone (backbones/registry.py)")
    layers: list[int] | None = _setting(
        None, help="feature layers averaged into tokens; null: the backbone's default (ViT-B: blocks 6-11; Lite0: 2, 3)"
    )
    weights: str | None = _setting(
        None, role=LOCATION, help="local weights file; null: the installed package's weights (Lite), required (DINOv2)"
    )
    image_size: int | list[int] = _setting(
        256,
        ge=1,
        help="model input in pixels: one int (a square side) or [height, width], each a multiple of the feature "
        "stride (16 for the EfficientNet-Lite presets, 14 for DINOv2); token grid = H/stride x W/stride "
        "(docs/datasets.md, Image geometry)",
    )
    feature_stride: int | None = _setting(
        None, ge=1, help="CNNs: token grid = image_size // feature_stride (per side); null: 16"
    )
    normalize_intensity: bool = _setting(
        False,
        help="beyond the paper: each image standardised to zero mean, unit std (one gain and offset per image) "
        "before the backbone, against exposure/gain shifts between units "
        "(backbones/base.py FeatureExtractor.set_intensity_normalization)",
    )


@dataclass
class ModelConfig:
    num_local_prototypes: int = _setting(8, ge=0, help="M (paper)")
    num_global_prototypes: int = _setting(2, ge=0, help="K (paper); 0 builds no global extractor")
    use_local_prototypes: bool = _setting(True, help="use the local prototypes")
    use_global_prototypes: bool = _setting(True, help="use the global prototypes")
    prototype_heads: int = _setting(4, ge=1, help="attention heads of the prototype extractors")
    hidden_dim: int = _setting(
        256, ge=4, help="DiT width (choice); divisible by num_heads and by 4 (2-D sincos position embedding)"
    )
    depth: int = _setting(4, ge=1, help="DiT blocks (choice)")
    num_heads: int = _setting(4, ge=1, help="attention heads of the denoiser")
    mlp_ratio: float = _setting(4.0, gt=0, help="MLP width / hidden_dim in the denoiser blocks")
    prototype_cross_attention: bool = _setting(
        True, help="false: diffusion-only ablation (Table 5 row 3), no cross-attention to the prototypes"
    )
    denoiser: str = _setting(
        "dit",
        choices=DENOISER_NAMES,
        help="dit (paper, Eq. 16-17) | unet | uvit: Table 9 variants (docs/method.md; model/denoisers.py DENOISERS)",
    )
    diffusion: bool = _setting(
        True,
        help="false: prototype-only ablation (Table 5 rows 1-2): no denoiser is built or trained; score with "
        "inference.scoring=prototype",
    )
    num_timesteps: int = _setting(1000, ge=1, help="T (paper)")
    beta_start: float = _setting(1e-4, gt=0, lt=1, help="paper; <= beta_end")
    beta_end: float = _setting(0.02, gt=0, lt=1, help="paper")
    standardize_tokens: bool = _setting(True, help="choice: per-channel z-score of tokens before diffusion")
    ot_epsilon: float = _setting(0.05, gt=0, help="choice: entropic regularisation of Eq. (13)")
    ot_iters: int = _setting(50, ge=1, help="Sinkhorn iterations of Eq. (13)")
    ot_cost_per_channel: bool = _setting(True, help="choice: cost / C so epsilon is width-independent")
    train_max_timestep: int | None = _setting(
        None, ge=0, help="choice: null = t uniform over all T (paper); else t ~ U[0, this] (clipped to T - 1)"
    )
    output_skip: bool = _setting(
        True,
        help="choice (issue #13): eps = denoiser(...) + W x_t with a learned CxC W (zero-init), so the noise head "
        "has full rank even when hidden_dim < C; W x_t is the exact Bayes noise predictor for Gaussian tokens",
    )
    prediction: str = _setting(
        "eps",
        choices=PREDICTION_TARGETS,
        help="what the network is trained to output: eps (paper, Eq. 18) | v = sqrt(abar) eps - sqrt(1-abar) x0 "
        "| x0; all are converted to eps for DDIM (model/dpdiff_ad.py DPDiffAD.predict_noise)",
    )


@dataclass
class LossConfig:
    lambda_local: float = _setting(0.2, ge=0, help="lambda_1 (paper): weight of the local prototype loss")
    lambda_global: float = _setting(0.001, ge=0, help="lambda_2 (paper): weight of the global prototype loss")


@dataclass
class TrainConfig:
    batch_size: int = _setting(32, ge=1, help="images per step (paper)")
    lr: float = _setting(1e-4, gt=0, help="learning rate (paper; Adam)")
    weight_decay: float = _setting(0.0, ge=0, help="Adam weight decay")
    steps: int = _setting(2000, ge=1, help="training steps")
    seed: int = _setting(0, ge=0, help="seed of the initial weights, the batches and the noise")
    device: str = _setting("auto", role=RUNTIME, help="auto | cpu | cuda | cuda:N")
    num_workers: int = _setting(0, ge=0, role=RUNTIME, help="data loader worker processes")
    log_every: int = _setting(25, ge=1, role=RUNTIME, help="log the losses every this many steps")
    checkpoint_every: int = _setting(500, ge=1, role=RUNTIME, help="write train_state.pt every this many steps")
    logger: str = _setting(
        "none",
        choices=LOGGERS,
        role=RUNTIME,
        help="training curves beside loss_history.csv: tensorboard = event files in RUN/tensorboard "
        "(training/loggers.py LOGGERS)",
    )
    validate_every: int = _setting(
        0,
        ge=0,
        role=RUNTIME,
        help="to watch a training only: every this many steps and at the last step, score a fixed sample of the "
        "data set's TEST images with the inference weights and log val/I-AUROC (and val/P-AUROC) to "
        "RUN/validation.csv and train.logger. These are test images: never pick a checkpoint or a setting by "
        "them when you report test metrics (training/validation.py); 0 = off",
    )
    validation_images: int = _setting(
        64,
        ge=1,
        role=RUNTIME,
        help="with train.validate_every: at most this many test images, drawn with train.seed, normal and "
        "defective in turn per category; their backbone features are computed once and kept in memory",
    )
    feature_batch_size: int = _setting(16, ge=1, role=RUNTIME, help="images per backbone batch")
    grad_clip: float | None = _setting(
        1.0, ge=0, help="choice: gradient norm clip, stabilises the noisy diffusion loss (null or 0 = off)"
    )
    ema_decay: float = _setting(
        0.999,
        ge=0,
        lt=1,
        help="choice: EMA of the weights, used at inference and saved as model.safetensors (0 = off); "
        "decay warms up as (1+n)/(10+n)",
    )
    lr_schedule: str = _setting(
        "cosine", choices=LR_SCHEDULES, help="choice: cosine decays to 0 at train.steps (training/trainer.py lr_factor)"
    )
    warmup_steps: int = _setting(100, ge=0, help="choice: linear lr warm-up (0 = off)")
    token_keep: float = _setting(
        1.0,
        gt=0,
        le=1,
        help="beyond the paper (Zheng et al. 2023, masked training): the DiT sees a random subset of this "
        "fraction of each image's tokens per step (loss on those; prototypes from all tokens); 1 = every token "
        "(the paper). Inference always uses every token",
    )
    full_token_steps: int = _setting(
        0,
        ge=0,
        help="with token_keep < 1: the last N steps use every token (the unmasked fine-tuning that closes the "
        "train/test gap)",
    )
    feature_cache: bool = _setting(
        False, role=RUNTIME, help="memory-mapped fp16 token cache reused across runs (features/cache.py)"
    )
    cache_dir: str | None = _setting(
        None, role=RUNTIME, help="folder of the feature cache; null: $DPDIFF_CACHE or ~/.cache/dpdiff/features"
    )
    calibration_fraction: float = _setting(
        0.0,
        ge=0,
        lt=1,
        help="hold out this fraction of each category's normal training images (seeded by train.seed) and "
        "calibrate the decision thresholds on them after training (inference/calibration.py); 0 = off",
    )
    calibration_fpr: float = _setting(
        0.01,
        gt=0,
        lt=1,
        help="target false-alarm rate of that calibration; needs >= 1/fpr - 1 held-out images (99 for 0.01)",
    )
    calibration_pixel_fpr: float = _setting(
        0.001,
        gt=0,
        lt=1,
        help="the pixel threshold's own rate: share of a normal image's map pixels above it "
        "(inference/calibration.py DEFAULT_PIXEL_FPR)",
    )
    init_from: str | None = _setting(
        None,
        role=LOCATION,
        help="add categories to a trained run: start from this run folder's weights (its EMA weights) and train "
        "on data.categories (new ones only) mixed with a replay of the run's own training images; the new run "
        "knows the union (training/init_from.py, docs/guides/add-category.md); null = a fresh model",
    )
    replay: int | None = _setting(
        None,
        ge=1,
        help="with train.init_from: at most this many training images per old category are replayed (drawn with "
        "train.seed); null = all of them (their tokens come from the feature cache when train.feature_cache)",
    )
    replay_fraction: float = _setting(
        0.5,
        gt=0,
        lt=1,
        help="with train.init_from: the share of every batch drawn from the replayed images of the old "
        "categories (the rest from the new ones)",
    )


@dataclass
class InferenceConfig:
    noise_step: int = _setting(100, ge=0, help='choice (paper: "moderate"): 0-based index of t in 0..T-1')
    ddim_steps: int = _setting(3, ge=1, help="DDIM steps back to t = 0 (paper: 3 is best, Fig. 6)")
    ensemble: int = _setting(2, ge=1, help="choice: noise draws per image (the paper: 1)")
    antithetic: bool = _setting(
        True,
        help="choice: draws come in pairs (eps, -eps) for tokens and prototypes; an odd ensemble leaves the last "
        "draw unpaired (issue #13: one pair ~ 16 independent draws)",
    )
    ensemble_reduce: str = _setting(
        "error_of_mean",
        choices=ENSEMBLE_REDUCTIONS,
        help="error_of_mean (score the mean reconstruction) | mean_error (the mean of the draws' errors)",
    )
    common_noise: bool = _setting(
        True,
        help="choice: every image gets the same noise draws (seeded with inference.seed): a score depends on the "
        "image alone, not its batch",
    )
    scoring: str = _setting(
        "reconstruction",
        choices=SCORING_MODES,
        help="reconstruction (Eq. 22) | prototype (Table 5 rows 1-2: per token 1 - max cosine similarity to the "
        "image's own prototypes, no diffusion)",
    )
    seed: int = _setting(0, ge=0, help="seed of the noise draws")
    smoothing_sigma: float = _setting(4.0, ge=0, help="choice: Gaussian sigma in pixels after upsampling (0 = off)")
    pool_size: int = _setting(16, ge=1, help="choice: AvgPool kernel (pixels) of Eq. (24)")
    image_score: str = _setting(
        "pooled_max", choices=IMAGE_SCORE_RULES, help="pooled_max (Eq. 24, paper/ADer) | top_percent_mean (Dinomaly)"
    )
    top_percent: float = _setting(1.0, gt=0, le=100, help="top_percent_mean: mean of the highest this-% pixels")
    batch_size: int = _setting(16, ge=1, help="images per inference batch")
    knn_weight: float = _setting(
        0.0,
        ge=0,
        help="beyond the paper: add this times the z-scored distance to a coreset bank of normal training tokens "
        "to the z-scored reconstruction error (scoring/token_bank.py); 0 = the paper. The bank is built by "
        "`dpdiff train` when this is > 0 at training time",
    )
    image_gaussian_weight: float = _setting(
        0.0,
        ge=0,
        help="beyond the paper: add this times the z-scored Mahalanobis distance of the image's mean backbone "
        "token to a Gaussian of normal training images to the z-scored image score (scoring/image_gaussian.py; "
        "catches image-wide shifts, e.g. darker or flatter images, that a token reconstruction calls normal); "
        "0 = the paper. Built by `dpdiff train` when this is > 0 at training time; not with data.tiling",
    )


@dataclass
class EvaluationConfig:
    resolution: int | list[int] | None = _setting(
        None,
        ge=1,
        help="maps and masks compared at this size: one int (the side of a square input; with a non-square "
        "image_size the long side, the short one following the input's aspect) or [height, width]; null: "
        "backbone.image_size (Dinomaly: 256)",
    )
    mask_threshold: float = _setting(0.0, ge=0, lt=1, help="mask value in [0, 1] must be > this (Dinomaly 0, ADer 0.5)")
    mask_resize: str = _setting(
        "nearest", choices=MASK_RESIZE_MODES, help="resampling of the mask before thresholding (data/images.py)"
    )


@dataclass
class DataConfig:
    root: str | None = _setting(None, role=LOCATION, help="the dataset folder")
    categories: list[str] | None = _setting(None, help="categories to use; null: all categories found under root")
    format: str = _setting(
        "mvtec",
        choices=FORMAT_CHOICES,
        help="dataset layout: a reader of dpdiff.data FORMATS (docs/datasets.md), or auto (detected from root)",
    )
    options: dict = _setting(factory=dict, help="reader options (docs/datasets.md), e.g. Real-IAD {resolution: 512}")
    resize: str = _setting(
        "stretch",
        choices=RESIZE_MODES,
        help="stretch: each image resized directly to backbone.image_size (aspect not kept) | keep_aspect: "
        "letterboxed, fitted inside it with its aspect kept and padded (for images of differing aspect; a camera "
        "of fixed aspect sets image_size to [H, W] of that aspect instead); docs/datasets.md, Image geometry",
    )
    roi: list[float] | None = _setting(
        None,
        help="region of interest [x0, y0, x1, y1] cut out of every image before anything else (training, test, "
        "predict, serve): integers = pixels, otherwise fractions of the image in [0, 1]; maps are 0 outside it",
    )
    tiling: dict | None = _setting(
        None,
        help="tiles for images much larger than the model input: null (the whole image is one input) | {tile: [h, "
        "w], overlap: 0.25} (tiles of h x w pixels of the region of interest) | {grid: [rows, cols], overlap: 0.25}; "
        "training learns on the tiles of the normal images, scoring cuts every image into tiles, scores them in "
        "batches of inference.batch_size and stitches their maps (cosine window); docs/guides/high-resolution.md",
    )


@dataclass
class Config:
    backbone: BackboneConfig = _setting(factory=BackboneConfig, help="the frozen feature extractor")
    model: ModelConfig = _setting(factory=ModelConfig, help="the DPDiff-AD network: prototypes and denoiser")
    loss: LossConfig = _setting(factory=LossConfig, help="the weights of the training loss, Eq. (19)")
    train: TrainConfig = _setting(factory=TrainConfig, help="training: optimisation, run-time, calibration")
    inference: InferenceConfig = _setting(
        factory=InferenceConfig, role=TEST_TIME, help="scoring: noise, DDIM reconstruction, maps and image scores"
    )
    evaluation: EvaluationConfig = _setting(
        factory=EvaluationConfig, role=TEST_TIME, help="the evaluation protocol, recorded in every results file"
    )
    data: DataConfig = _setting(factory=DataConfig, help="the dataset: where, which layout, which categories")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> Config:
        """Build and :meth:`validate` a configuration; keys not given take their defaults."""
        return _from_dict(cls, d or {}, source).validate(source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        """Read a YAML file (resolving its ``base:`` chain) and validate it."""
        path = Path(path)
        return cls.from_dict(read_config_yaml(path), source=str(path))

    def override(self, dotted: dict[str, Any]) -> Config:
        """Apply {"train.steps": 100, ...} overrides (CLI); returns a new, validated Config.

        Unknown keys raise :class:`ConfigKeyError` (a ``KeyError``), invalid values :class:`ConfigError`."""
        d = self.to_dict()
        for key, value in dotted.items():
            section, _, name = str(key).partition(".")
            if section not in d or not isinstance(d[section], dict) or name not in d[section]:
                raise ConfigKeyError(
                    f"unknown config key {key!r}; known keys look like 'train.steps' (sections: {', '.join(d)})"
                )
            d[section][name] = value
        return _from_dict(Config, d, "overrides").validate()

    def validate(self, source: str | None = None) -> Config:
        """Check every value's type (from the annotations), enumerated values, bounds and the relations
        between keys; raise :class:`ConfigError` naming the key, the value and what is allowed. Returns self."""
        where = f"{source}: " if source and source not in ("<dict>", "overrides") else ""
        for sec in fields(self):
            section = getattr(self, sec.name)
            hints = field_hints(type(section))
            for f in fields(section):
                check_value(f"{sec.name}.{f.name}", getattr(section, f.name), hints[f.name], f.metadata, where)
        check_relations(self, where)
        return self


# ----------------------------------------------------------------------------- building from a mapping


def _from_dict(cls, d: dict[str, Any], source: str):
    if not isinstance(d, Mapping):
        raise ConfigError(f"{source}: expected a mapping for {cls.__name__}, got {type(d).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)} for {cls.__name__}; known: {sorted(known)}")
    kwargs = {}
    for name, f in known.items():
        if name not in d:
            continue
        value = d[name]
        ftype = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if ftype is not None and is_dataclass(ftype):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: section {name!r} must be a mapping, got {value!r}")
            value = _from_dict(ftype, value, f"{source}:{name}")
        kwargs[name] = value
    return cls(**kwargs)


# ----------------------------------------------------------------------------- keys and their roles


def flatten_config(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"depth": 4}}`` -> ``{"model.depth": 4}``: the sections are flattened into dotted keys,
    values that are mappings themselves (``data.options``) stay whole."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and not prefix:
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = v
    return out


def _sections() -> dict[str, tuple[dataclasses.Field, type]]:
    return {f.name: (f, f.default_factory) for f in fields(Config)}  # type: ignore[misc]


def config_keys() -> list[str]:
    """Every dotted key, in declaration order."""
    return [f"{name}.{f.name}" for name, (_, cls) in _sections().items() for f in fields(cls)]


def key_metadata(key: str) -> Mapping[str, Any]:
    """The metadata (choices, bounds, role) of a dotted key; ``KeyError`` if there is no such key."""
    section, _, name = key.partition(".")
    sections = _sections()
    if section in sections:
        for f in fields(sections[section][1]):
            if f.name == name:
                return f.metadata
    raise ConfigKeyError(f"unknown config key {key!r}")


def allowed_values(key: str) -> tuple:
    """The choices of an enumerated key, e.g. ``allowed_values("model.denoiser")``."""
    choices = key_metadata(key).get("choices")
    if choices is None:
        raise ConfigKeyError(f"config key {key!r} is not an enumerated setting")
    return tuple(choices)


def sections_with_role(role: str) -> tuple[str, ...]:
    """The sections tagged ``role``: :data:`TEST_TIME` gives ``("inference", "evaluation")``, the sections that
    change the scores, never the trained weights."""
    return tuple(name for name, (f, _) in _sections().items() if f.metadata.get("role") == role)


def keys_with_role(role: str) -> frozenset[str]:
    """The dotted keys tagged ``role`` (:data:`RUNTIME`, :data:`LOCATION`); :data:`TEST_TIME` gives every key
    of the test-time sections."""
    out = set()
    for name, (sec, cls) in _sections().items():
        for f in fields(cls):
            if f.metadata.get("role") == role or sec.metadata.get("role") == role:
                out.add(f"{name}.{f.name}")
    return frozenset(out)


def weight_neutral_keys() -> frozenset[str]:
    """Keys whose value never changes the trained weights: the run-time keys and the test-time sections."""
    return keys_with_role(RUNTIME) | keys_with_role(TEST_TIME)


def is_weight_neutral(key: str) -> bool:
    """True for a key of :func:`weight_neutral_keys`, and for any key under a test-time section."""
    return key in weight_neutral_keys() or key.split(".", 1)[0] in sections_with_role(TEST_TIME)


# ----------------------------------------------------------------------------- presets


def _is_name(text: str) -> bool:
    """A preset name (``lite0_cpu``) rather than a path: no folder, no YAML suffix."""
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text)) and not text.lower().endswith(_YAML_SUFFIXES)


def _yaml_names(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.iterdir() if p.is_file() and p.suffix in _YAML_SUFFIXES)


def preset_names() -> list[str]:
    """The packaged presets (``dpdiff/configs/*.yaml``)."""
    return _yaml_names(PRESET_DIR)


def grid_names() -> list[str]:
    """The packaged ablation grids (``dpdiff/configs/ablations/*.yaml``)."""
    return _yaml_names(GRID_DIR)


def find_yaml(name_or_path: str | Path, folder: Path | None = None, what: str = "preset") -> Path:
    """The file of a packaged ``what`` by name (a file in ``folder``, default :data:`PRESET_DIR`) or of a YAML
    path.

    A plain name (no folder, no ``.yaml``) names a packaged file; anything else is a path. An unknown name
    lists the available ones; a missing path that looks like an old ``configs/<preset>.yaml`` says to use the
    name."""
    text = str(name_or_path)
    folder = PRESET_DIR if folder is None else folder
    names = _yaml_names(folder)
    if not isinstance(name_or_path, Path) and _is_name(text):
        if text in names:
            return next(folder / f"{text}{s}" for s in _YAML_SUFFIXES if (folder / f"{text}{s}").is_file())
        if not Path(text).is_file():
            listed = ", ".join(names) if names else f"none: {folder} holds no YAML files (incomplete installation?)"
            raise FileNotFoundError(
                f"unknown {what} {text!r}; available {what}s: {listed} (or give the path of a YAML file)"
            )
    path = Path(text).expanduser()
    if not path.is_file():
        moved = (
            f"; the shipped {what}s are packaged with dpdiff now: use the name {path.stem!r}"
            if path.stem in names
            else ""
        )
        raise FileNotFoundError(f"{what} file not found: {path}{moved}")
    return path


def _read_mapping(path: Path) -> dict:
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if d is not None and not isinstance(d, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(d).__name__}")
    return d or {}


def _merge(base: dict, child: dict) -> dict:
    """``child`` over ``base``: sections (mappings) merged key by key, anything else replaced."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in child.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The mapping of a config YAML with its ``base:`` chain resolved (not yet validated)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    d = _read_mapping(path)
    base = d.pop("base", None)
    if base is None:
        return d
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base must be a preset name or a YAML path, got {base!r}")
    if _is_name(base) and base in preset_names():
        base_path = find_yaml(base)
    else:
        base_path = Path(base).expanduser()
        if not base_path.is_absolute():
            base_path = path.resolve().parent / base_path
        if not base_path.is_file():
            raise FileNotFoundError(
                f"{path}: base {base!r} not found (not a packaged preset: "
                f"{', '.join(preset_names())}; nor a file: {base_path})"
            )
    chain = _chain + (path.resolve(),)
    if base_path.resolve() in chain:
        raise ConfigError(f"{path}: base chain loops: {' -> '.join(str(p) for p in chain + (base_path,))}")
    return _merge(read_config_yaml(base_path, chain), d)


def load_config(name_or_path: str | Path, overrides: Mapping[str, Any] | None = None, **more: Any) -> Config:
    """A packaged preset by name (``load_config("lite0_cpu")``, see :func:`preset_names`) or a YAML file,
    with dotted ``overrides`` (``{"train.steps": 500}``; keyword form ``train__steps=500``) applied on top.

    An unknown name raises ``FileNotFoundError`` listing the available presets; never a silent default."""
    path = find_yaml(name_or_path, PRESET_DIR, "preset")
    cfg = Config.from_yaml(path)
    dotted = dict(overrides or {}) | {k.replace("__", "."): v for k, v in more.items()}
    return cfg.override(dotted) if dotted else cfg


__all__ = [
    "Config",
    "BackboneConfig",
    "ModelConfig",
    "LossConfig",
    "TrainConfig",
    "InferenceConfig",
    "EvaluationConfig",
    "DataConfig",
    "ConfigError",
    "ConfigKeyError",
    "RUNTIME",
    "LOCATION",
    "TEST_TIME",
    "PRESET_DIR",
    "GRID_DIR",
    "load_config",
    "preset_names",
    "grid_names",
    "find_yaml",
    "read_config_yaml",
    "flatten_config",
    "config_keys",
    "key_metadata",
    "allowed_values",
    "sections_with_role",
    "keys_with_role",
    "weight_neutral_keys",
    "is_weight_neutral",
]
