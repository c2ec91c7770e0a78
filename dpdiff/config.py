"""Typed configuration (dataclasses), validated on every load and override, with packaged YAML presets.

Every value the paper states is the default here (Sec. 5.1.3); values the paper leaves open are
marked "choice" and documented in docs/method.md.

Presets ship as package data in ``dpdiff/configs/<name>.yaml``: :func:`load_config` takes a preset name
(``"lite0_cpu"``) or the path of a YAML file. A YAML file may start from another one with ``base: NAME``
(a packaged preset) or ``base: PATH`` (relative to the file) and give only what differs; sections are
merged key by key.

What a key means to the rest of the package is said once, on its field (``dataclasses.field`` metadata):

* ``choices``: the allowed values of an enumerated key;
* ``ge`` / ``gt`` / ``le`` / ``lt``: numeric bounds;
* ``role``: :data:`RUNTIME` for where and how a computation runs (device, workers, logging, checkpoint
  interval, feature cache): the same weights and the same scores whatever its value; :data:`LOCATION` for
  where an input lives (moving the files changes nothing). The ``inference`` and ``evaluation`` sections are
  :data:`TEST_TIME`: they change the scores, never the trained weights.

:func:`weight_neutral_keys` (run-time keys + the test-time sections) is what resuming
(model/checkpoint.py) and the ablation training key (experiments/ablate.py) build on.

This module imports nothing from dpdiff but the bottom-layer ``dpdiff.utils.errors``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

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
    factory: Any = MISSING,
    choices: tuple | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    role: str | None = None,
) -> Any:
    """A dataclass field carrying its allowed values (``choices``, bounds) and its ``role``."""
    meta = {
        k: v
        for k, v in (("choices", choices), ("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("role", role))
        if v is not None
    }
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class BackboneConfig:
    name: str = "tf_efficientnet_lite0"
    layers: list[int] | None = None  # None: the backbone's default (ViT-B: blocks 6-11; Lite0: stages 2,3)
    weights: str | None = _setting(None, role=LOCATION)  # local file; None = the installed package's weights
    # (Lite) / required (DINOv2)
    image_size: int = _setting(256, ge=1)
    feature_stride: int | None = _setting(None, ge=1)  # CNNs: token grid = image_size // feature_stride (default 16)
    normalize_intensity: bool = False  # beyond the paper: each image standardised to zero mean, unit std (one
    # gain and offset per image) before the backbone, against exposure/gain shifts between units
    # (backbones/base.py FeatureExtractor.set_intensity_normalization)


@dataclass
class ModelConfig:
    num_local_prototypes: int = _setting(8, ge=0)  # M (paper)
    num_global_prototypes: int = _setting(2, ge=0)  # K (paper); 0 builds no global extractor
    use_local_prototypes: bool = True
    use_global_prototypes: bool = True
    prototype_heads: int = _setting(4, ge=1)
    hidden_dim: int = _setting(256, ge=4)  # DiT width (choice); divisible by num_heads and by 4 (2-D sincos)
    depth: int = _setting(4, ge=1)  # DiT blocks (choice)
    num_heads: int = _setting(4, ge=1)
    mlp_ratio: float = _setting(4.0, gt=0)
    prototype_cross_attention: bool = True  # False = diffusion-only ablation (Table 5 row 3)
    denoiser: str = _setting("dit", choices=("dit", "unet", "uvit"))  # dit (paper, Eq. 16-17) | unet | uvit:
    # Table 9 variants (docs/method.md); model/denoisers.py DENOISERS
    diffusion: bool = True  # False = prototype-only ablation (Table 5 rows 1-2): no denoiser is
    # built or trained; score with inference.scoring=prototype
    num_timesteps: int = _setting(1000, ge=1)  # T (paper)
    beta_start: float = _setting(1e-4, gt=0, lt=1)  # paper; <= beta_end
    beta_end: float = _setting(0.02, gt=0, lt=1)  # paper
    standardize_tokens: bool = True  # choice: per-channel z-score of tokens before diffusion
    ot_epsilon: float = _setting(0.05, gt=0)  # choice: entropic regularisation of Eq. (13)
    ot_iters: int = _setting(50, ge=1)
    ot_cost_per_channel: bool = True  # choice: cost / C so epsilon is width-independent
    train_max_timestep: int | None = _setting(None, ge=0)  # choice: None = uniform over all T (paper);
    # else t ~ U[0, this] (clipped to T - 1)
    output_skip: bool = True  # choice (issue #13): eps = denoiser(...) + W x_t with a learned CxC W
    # (zero-init), so the noise head has full rank even when hidden_dim < C;
    # W x_t is the exact Bayes noise predictor for Gaussian tokens
    prediction: str = _setting("eps", choices=("eps", "v", "x0"))  # what the network is trained to output:
    # eps (paper, Eq. 18) | v = sqrt(abar) eps - sqrt(1-abar) x0 | x0; all are converted to eps for DDIM
    # (model/dpdiff_ad.py DPDiffAD.predict_noise)


@dataclass
class LossConfig:
    lambda_local: float = _setting(0.2, ge=0)  # lambda_1 (paper)
    lambda_global: float = _setting(0.001, ge=0)  # lambda_2 (paper)


@dataclass
class TrainConfig:
    batch_size: int = _setting(32, ge=1)  # paper
    lr: float = _setting(1e-4, gt=0)  # paper (Adam)
    weight_decay: float = _setting(0.0, ge=0)
    steps: int = _setting(2000, ge=1)
    seed: int = _setting(0, ge=0)
    device: str = _setting("auto", role=RUNTIME)  # auto | cpu | cuda | cuda:N
    num_workers: int = _setting(0, ge=0, role=RUNTIME)
    log_every: int = _setting(25, ge=1, role=RUNTIME)
    checkpoint_every: int = _setting(500, ge=1, role=RUNTIME)
    logger: str = _setting("none", choices=("none", "tensorboard"), role=RUNTIME)  # training curves beside
    # loss_history.csv: tensorboard = event files in RUN/tensorboard (training/loggers.py LOGGERS)
    feature_batch_size: int = _setting(16, ge=1, role=RUNTIME)  # images per backbone batch
    grad_clip: float | None = _setting(1.0, ge=0)  # choice: stabilises the noisy diffusion loss (None or 0 = off)
    ema_decay: float = _setting(0.999, ge=0, lt=1)  # choice: EMA of the weights, used at inference and saved as
    # model.safetensors (0 = off); decay warms up as (1+n)/(10+n)
    lr_schedule: str = _setting("cosine", choices=("constant", "cosine"))  # choice: cosine decays to 0 at
    # train.steps (training/trainer.py LR_SCHEDULES)
    warmup_steps: int = _setting(100, ge=0)  # choice: linear lr warm-up (0 = off)
    token_keep: float = _setting(1.0, gt=0, le=1)  # beyond the paper (Zheng et al. 2023, masked training): the
    # DiT sees a random subset of this fraction of each image's tokens per step (loss on those; prototypes
    # from all tokens); 1 = every token (the paper). Inference always uses every token
    full_token_steps: int = _setting(0, ge=0)  # with token_keep < 1: the last N steps use every token
    # (the unmasked fine-tuning that closes the train/test gap)
    feature_cache: bool = _setting(False, role=RUNTIME)  # memory-mapped fp16 token cache reused across runs
    # (features/cache.py)
    cache_dir: str | None = _setting(None, role=RUNTIME)  # default $DPDIFF_CACHE or ~/.cache/dpdiff/features
    calibration_fraction: float = _setting(0.0, ge=0, lt=1)  # hold out this fraction of each category's normal
    # training images (seeded by train.seed) and calibrate the decision
    # thresholds on them after training (inference/calibration.py); 0 = off
    calibration_fpr: float = _setting(0.01, gt=0, lt=1)  # target false-alarm rate of that
    # calibration; needs >= 1/fpr - 1 held-out images (99 for 0.01)
    calibration_pixel_fpr: float = _setting(0.001, gt=0, lt=1)  # the pixel threshold's own rate: share of a
    # normal image's map pixels above it (inference/calibration.py DEFAULT_PIXEL_FPR)


@dataclass
class InferenceConfig:
    noise_step: int = _setting(100, ge=0)  # choice (paper: "moderate"): 0-based index of t in 0..T-1
    ddim_steps: int = _setting(3, ge=1)  # paper: 3 is best (Fig. 6)
    ensemble: int = _setting(2, ge=1)  # choice: noise draws per image (the paper: 1)
    antithetic: bool = True  # choice: draws come in pairs (eps, -eps) for tokens and prototypes;
    # an odd ensemble leaves the last draw unpaired (issue #13: one pair
    # ~ 16 independent draws)
    ensemble_reduce: str = _setting("error_of_mean", choices=("mean_error", "error_of_mean"))
    # error_of_mean (score the mean reconstruction) | mean_error
    # (model/dpdiff_ad.py ENSEMBLE_REDUCTIONS)
    common_noise: bool = True  # choice: every image gets the same noise draws (seeded with
    # inference.seed): a score depends on the image alone, not its batch
    scoring: str = _setting("reconstruction", choices=("reconstruction", "prototype"))
    # reconstruction (Eq. 22) | prototype (Table 5 rows 1-2: per token
    # 1 - max cosine similarity to the image's own prototypes, no diffusion)
    seed: int = _setting(0, ge=0)
    smoothing_sigma: float = _setting(4.0, ge=0)  # choice: Gaussian sigma in pixels after upsampling (0 = off)
    pool_size: int = _setting(16, ge=1)  # choice: AvgPool kernel (pixels) of Eq. (24)
    image_score: str = _setting("pooled_max", choices=("pooled_max", "top_percent_mean"))
    # pooled_max (Eq. 24, paper/ADer) | top_percent_mean (Dinomaly)
    top_percent: float = _setting(1.0, gt=0, le=100)  # top_percent_mean: mean of the highest this-% pixels
    batch_size: int = _setting(16, ge=1)
    knn_weight: float = _setting(0.0, ge=0)  # beyond the paper: add this times the z-scored distance to a coreset
    # bank of normal training tokens to the z-scored reconstruction error (scoring/token_bank.py); 0 = the paper.
    # The bank is built by `dpdiff train` when this is > 0 at training time


@dataclass
class EvaluationConfig:
    """The evaluation protocol; every results file records it (docs/datasets.md, "Evaluation protocol")."""

    resolution: int | None = _setting(None, ge=1)  # maps and masks at this size; None = backbone.image_size
    # (Dinomaly: 256)
    mask_threshold: float = _setting(0.0, ge=0, lt=1)  # mask value in [0, 1] must be > this (Dinomaly 0, ADer 0.5)
    mask_resize: str = _setting("nearest", choices=("nearest", "bilinear"))  # resampling of the mask before
    # thresholding (data/dataset.py MASK_RESIZE_MODES)


@dataclass
class DataConfig:
    root: str | None = _setting(None, role=LOCATION)
    categories: list[str] | None = None  # None = all categories found under root
    format: str = _setting(
        "mvtec", choices=("mvtec", "mpdd", "visa", "realiad", "realiad_variety", "btad", "generic", "auto")
    )  # data/formats.py FORMATS, or auto
    options: dict = field(default_factory=dict)  # reader options, e.g. {resolution: 512} for Real-IAD
    # (docs/datasets.md)


@dataclass
class Config:
    backbone: BackboneConfig = _setting(factory=BackboneConfig)
    model: ModelConfig = _setting(factory=ModelConfig)
    loss: LossConfig = _setting(factory=LossConfig)
    train: TrainConfig = _setting(factory=TrainConfig)
    inference: InferenceConfig = _setting(factory=InferenceConfig, role=TEST_TIME)
    evaluation: EvaluationConfig = _setting(factory=EvaluationConfig, role=TEST_TIME)
    data: DataConfig = _setting(factory=DataConfig)

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
            hints = _hints(type(section))
            for f in fields(section):
                _check_value(f"{sec.name}.{f.name}", getattr(section, f.name), hints[f.name], f.metadata, where)
        _check_relations(self, where)
        return self


# ----------------------------------------------------------------------------- validation


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a config section class (computed once per class)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _type_text(hint: Any) -> str:
    """``list[int] | None`` -> ``"a list of int, or null"`` (YAML words: null, true/false)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        parts = [_type_text(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (", or null" if type(None) in args else "")
    origin = typing.get_origin(hint)
    if origin is list:
        return f"a list of {_type_text(args[0])}" if args else "a list"
    if hint is dict or origin is dict:
        return "a mapping"
    if hint is bool:
        return "bool (true/false)"
    return getattr(hint, "__name__", str(hint))


def _type_ok(value: Any, hint: Any) -> bool:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_type_ok(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # an int is a valid float (YAML `lr: 1`)
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, (list, tuple)) and (item is Any or all(_type_ok(v, item) for v in value))
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return isinstance(value, hint)


def _number_hint(value: Any, hint: Any) -> str:
    """How to write a value YAML read as the wrong type: text where a number belongs ('1e3': YAML 1.1 reads
    exponent numbers without a dot and a signed exponent as text), numbers where text belongs (BTAD's `01`)."""
    wants_text = hint is str or any(a is str or str in typing.get_args(a) for a in typing.get_args(hint))
    if wants_text and not isinstance(value, str):
        return "; quote text values in YAML, e.g. '01'"
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    wants_int = hint is int or int in typing.get_args(hint)
    if wants_int and number.is_integer():
        return f"; YAML reads {value!r} as text: write the integer {int(number)}"
    if not wants_int:
        return f"; YAML reads {value!r} as text: write {number!r}"
    return ""


def _bounds_text(meta: Mapping) -> str:
    lo = (">= " + _num(meta["ge"])) if "ge" in meta else ("> " + _num(meta["gt"])) if "gt" in meta else ""
    hi = ("<= " + _num(meta["le"])) if "le" in meta else ("< " + _num(meta["lt"])) if "lt" in meta else ""
    return " and ".join(p for p in (lo, hi) if p)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _in_bounds(value: float, meta: Mapping) -> bool:
    checks = (
        ("ge", lambda b: value >= b),
        ("gt", lambda b: value > b),
        ("le", lambda b: value <= b),
        ("lt", lambda b: value < b),
    )
    return all(test(meta[name]) for name, test in checks if name in meta)  # NaN fails every bound


def _check_value(key: str, value: Any, hint: Any, meta: Mapping, where: str) -> None:
    if not _type_ok(value, hint):
        raise ConfigError(
            f"{where}{key}: expected {_type_text(hint)}, got {value!r} ({type(value).__name__})"
            f"{_number_hint(value, hint)}"
        )
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}{key}: {value!r} is not allowed; choose one of {', '.join(choices)}")
    bounds = _bounds_text(meta)
    if bounds and not _in_bounds(value, meta):
        raise ConfigError(f"{where}{key}: must be {bounds}, got {value!r}")


def _check_relations(cfg: Config, where: str) -> None:
    m, inf = cfg.model, cfg.inference
    for divisor, why in ((m.num_heads, "model.num_heads (attention heads)"), (4, "4 (2-D sincos position embedding)")):
        if m.hidden_dim % divisor:
            raise ConfigError(
                f"{where}model.hidden_dim: {m.hidden_dim} is not divisible by {why}; "
                f"use a multiple of {math.lcm(m.num_heads, 4)}"
            )
    if m.beta_start > m.beta_end:
        raise ConfigError(f"{where}model.beta_start: {m.beta_start} is above model.beta_end {m.beta_end}")
    if inf.noise_step >= m.num_timesteps:
        raise ConfigError(
            f"{where}inference.noise_step: must be < model.num_timesteps ({m.num_timesteps}), "
            f"got {inf.noise_step} (0-based index of t)"
        )


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
