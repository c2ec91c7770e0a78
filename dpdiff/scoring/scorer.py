"""The reconstruction protocol of test time (paper Eq. 20-24), apart from the network.

:class:`~dpdiff.model.dpdiff_ad.DPDiffAD` holds the modules (prototype extractors, denoiser), the noise schedule
and the training loss; :class:`Scorer` scores with it (as facebookresearch/DiT keeps ``models.py`` apart from
``diffusion/``): it noises the standardised tokens to ``noise_step`` with draws from a noise source
(:mod:`dpdiff.scoring.noise`), denoises them back with ``ddim_steps`` DDIM steps (Eq. 20-21; ``ensemble`` draws,
optionally antithetic pairs), reduces the draws to a per-token error (Eq. 22, ``ensemble_reduce``), adds the
token bank's distance when ``knn_weight`` > 0 (:mod:`dpdiff.scoring.token_bank`), post-processes the token
maps to pixel maps and image scores (upsampling, smoothing, the image score rule, Eq. 23-24) and adds the image
Gaussian's distance to the image score when ``image_gaussian_weight`` > 0 (:mod:`dpdiff.scoring.image_gaussian`).

What the protocol is lives in :class:`ScoringSettings` (from ``inference.*``); how the rows run is the runtime's
choice, given to the scorer by the PyTorch :class:`~dpdiff.inference.detector.Detector`: ``max_rows`` (image x
draw rows per denoiser call; the noise is drawn up front, so chunking never changes a result),
``autocast_dtype`` and ``compile`` (speed options that change results at rounding level only).

The scorer's methods run without autograd (``torch.no_grad``); the runtime adds ``torch.inference_mode`` and the
ONNX export traces them as they are.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from dpdiff.choices import ENSEMBLE_REDUCTIONS, SCORING_MODES
from dpdiff.config import Config, InferenceConfig
from dpdiff.data.geometry import evaluation_size
from dpdiff.features import tokens_from_maps
from dpdiff.model.diffusion import ddim_reconstruct, q_sample
from dpdiff.model.dpdiff_ad import DPDiffAD
from dpdiff.model.postprocess import postprocess
from dpdiff.model.prototypes import prototype_similarity_maps
from dpdiff.scoring.noise import CommonNoise, IndependentNoise, NoiseSource
from dpdiff.utils.errors import CheckpointError, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from dpdiff.scoring.image_gaussian import ImageGaussian
    from dpdiff.scoring.token_bank import TokenBank

__all__ = ["Scorer", "ScoringSettings", "map_size", "postprocess_maps", "resolve_autocast_dtype"]


def map_size(cfg: Config) -> tuple[int, int]:
    """Size ``(Hm, Wm)`` of the pixel maps (and of the masks they are scored against): ``evaluation.resolution``,
    by default the input size ``backbone.image_size``
    (:func:`dpdiff.data.geometry.evaluation_size`, the one place this rule lives)."""
    return evaluation_size(cfg.backbone.image_size, cfg.evaluation.resolution)


def postprocess_maps(token_maps: torch.Tensor, cfg: Config, inference: InferenceConfig | None = None):
    """Token maps (B, h, w) -> (pixel maps (B, Hm, Wm), image scores (B,)) with the config's post-processing:
    bilinear upsampling to :func:`map_size`, Gaussian smoothing, the image-score rule (Eq. 23-24). For token
    maps of other scorers (the kNN baseline); DPDiff-AD's go through :meth:`Scorer.postprocess`, the same."""
    inf = inference or cfg.inference
    return postprocess(
        token_maps,
        map_size(cfg),
        inf.smoothing_sigma,
        inf.pool_size,
        image_score=inf.image_score,
        top_percent=inf.top_percent,
    )


@dataclass(frozen=True)
class ScoringSettings:
    """The protocol of test time (``inference.*``, module docstring). ``common_noise``/``seed`` choose the
    default noise source (:meth:`Scorer.noise_source`); ``map_size`` and the last four fields are the
    post-processing (Eq. 23-24), needed by :meth:`Scorer.postprocess` only."""

    noise_step: int
    ddim_steps: int
    ensemble: int = 1
    antithetic: bool = False
    ensemble_reduce: str = "error_of_mean"
    scoring: str = "reconstruction"
    common_noise: bool = False
    seed: int = 0
    knn_weight: float = 0.0
    image_gaussian_weight: float = 0.0
    map_size: int | tuple[int, int] | None = None
    smoothing_sigma: float = 4.0
    pool_size: int = 16
    image_score: str = "pooled_max"
    top_percent: float = 1.0

    @classmethod
    def from_config(cls, cfg: Config, inference: InferenceConfig | None = None) -> ScoringSettings:
        """The settings of ``cfg`` (``inference``: other inference options than its own)."""
        inf = inference or cfg.inference
        return cls(
            noise_step=inf.noise_step,
            ddim_steps=inf.ddim_steps,
            ensemble=inf.ensemble,
            antithetic=inf.antithetic,
            ensemble_reduce=inf.ensemble_reduce,
            scoring=inf.scoring,
            common_noise=inf.common_noise,
            seed=inf.seed,
            knn_weight=inf.knn_weight,
            image_gaussian_weight=inf.image_gaussian_weight,
            map_size=map_size(cfg),
            smoothing_sigma=inf.smoothing_sigma,
            pool_size=inf.pool_size,
            image_score=inf.image_score,
            top_percent=inf.top_percent,
        )


#: ``torch.compile`` of each denoiser, made once (kept off the model, so its ``state_dict`` is unchanged).
_COMPILED: weakref.WeakKeyDictionary[nn.Module, Callable] = weakref.WeakKeyDictionary()


class Scorer:
    """Scores tokens with ``model`` by the protocol ``settings`` (module docstring).

    ``bank``: the run's token bank (needed when ``settings.knn_weight`` > 0); ``image_gaussian``: the run's image
    Gaussian (needed when ``settings.image_gaussian_weight`` > 0); ``max_rows``, ``autocast_dtype``
    (``torch.bfloat16``/``torch.float16`` or "bf16"/"fp16"; None = off) and ``compile``: how the runtime runs
    the rows (module docstring)."""

    def __init__(
        self,
        model: DPDiffAD,
        settings: ScoringSettings,
        *,
        bank: TokenBank | None = None,
        image_gaussian: ImageGaussian | None = None,
        max_rows: int | None = None,
        autocast_dtype: torch.dtype | str | None = None,
        compile: bool = False,
    ):
        self.model, self.settings, self.bank, self.image_gaussian = model, settings, bank, image_gaussian
        self.max_rows, self.autocast_dtype, self.compile = max_rows, autocast_dtype, bool(compile)

    @classmethod
    def from_config(cls, model: DPDiffAD, cfg: Config, inference: InferenceConfig | None = None, **runtime) -> Scorer:
        """The scorer of ``cfg``'s inference settings (``inference``: other ones); ``runtime``: the keyword
        arguments of :class:`Scorer` (``bank``, ``image_gaussian``, ``max_rows``, ``autocast_dtype``, ``compile``)."""
        return cls(model, ScoringSettings.from_config(cfg, inference), **runtime)

    @property
    def device(self) -> torch.device:
        return self.model.alphas_cumprod.device

    def noise_source(self, generator: torch.Generator | None = None) -> NoiseSource:
        """The settings' noise: :class:`~dpdiff.scoring.noise.CommonNoise` seeded with ``seed`` when
        ``common_noise``, else :class:`~dpdiff.scoring.noise.IndependentNoise` from ``generator`` (None:
        torch's global generator)."""
        s = self.settings
        return CommonNoise(s.seed) if s.common_noise else IndependentNoise(generator)

    # ------------------------------------------------------------------------------------------ features in
    @torch.no_grad()
    def score_features(self, feats: torch.Tensor, noise: NoiseSource) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel maps (B, R, R), image scores (B,)) on the model's device, of backbone maps (B, C, h, w)."""
        return self.score_tokens(tokens_from_maps(feats.float().to(self.device)), noise)

    @torch.no_grad()
    def score_tokens(self, tokens: torch.Tensor, noise: NoiseSource) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel maps (B, R, R), image scores (B,)) of backbone tokens (B, N, C): :meth:`token_scores`,
        :meth:`postprocess` and, when ``image_gaussian_weight`` > 0, the image Gaussian's term."""
        maps, scores = self.postprocess(self.token_scores(tokens, noise))
        return maps, self.image_scores(scores, tokens)

    @torch.no_grad()
    def image_scores(self, scores: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The maps' image scores (B,) as they are, or with ``image_gaussian_weight`` > 0 the z-scored sum with
        the image Gaussian's distance of the images' backbone tokens (B, N, C)."""
        weight = self.settings.image_gaussian_weight
        if not weight:
            return scores
        if self.image_gaussian is None:
            raise CheckpointError(
                "inference.image_gaussian_weight > 0 needs the run's image Gaussian (Scorer(..., image_gaussian=...))"
            )
        return self.image_gaussian.combine(scores, tokens, weight)

    @torch.no_grad()
    def postprocess(self, token_maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token maps (B, h, w) -> (pixel maps (B, R, R), image scores (B,)) (Eq. 23-24)."""
        s = self.settings
        if s.map_size is None:
            raise ValueError("ScoringSettings.map_size is not set: post-processing needs the map size")
        return postprocess(
            token_maps, s.map_size, s.smoothing_sigma, s.pool_size, image_score=s.image_score, top_percent=s.top_percent
        )

    # ------------------------------------------------------------------------------------------ tokens in
    @torch.no_grad()
    def token_scores(self, tokens: torch.Tensor, noise: NoiseSource) -> torch.Tensor:
        """Per-token anomaly scores (B, h, w) of tokens (B, N, C) in backbone space: the reconstruction error
        (:meth:`reconstruction_errors`) or the prototype score (:meth:`prototype_scores`), as ``scoring``
        says, plus the token bank's z-scored distance when ``knn_weight`` > 0."""
        s = self.settings
        if s.scoring not in SCORING_MODES:
            raise ValueError(f"inference.scoring must be one of {SCORING_MODES}, got {s.scoring!r}")
        if s.scoring == "prototype":
            errors = self.prototype_scores(tokens)
        else:
            errors = self.reconstruction_errors(tokens, noise)
        if not s.knn_weight:
            return errors
        if self.bank is None:
            raise CheckpointError("inference.knn_weight > 0 needs the run's token bank (Scorer(..., bank=...))")
        return self.bank.combine(errors, self.model.standardize(tokens), s.knn_weight)

    @torch.no_grad()
    def reconstruction_errors(self, tokens: torch.Tensor, noise: NoiseSource) -> torch.Tensor:
        """Eq. (22): per-token squared L2 reconstruction error, (B, h, w).

        ``ensemble_reduce``: ``mean_error`` averages the E squared errors ||x0 - x0_hat_e||^2 (in draw order);
        ``error_of_mean`` scores ||x0 - mean_e x0_hat_e||^2, which divides the noise-induced variance of the
        reconstruction by E while keeping the anomaly's bias (measured on MTD, t=100, 16 draws: image AUROC
        75.4 -> 87.9, docs/method.md). A rank-deficient noise head (``DPDiffAD.noise_head_basis``) is scored in
        the span of its output layer."""
        s = self.settings
        ensemble = max(1, int(s.ensemble))
        if s.ensemble_reduce not in ENSEMBLE_REDUCTIONS:
            raise ValueError(
                f"inference.ensemble_reduce must be one of {ENSEMBLE_REDUCTIONS}, got {s.ensemble_reduce!r}"
            )
        x0, x0_hat = self.reconstruct(tokens, noise)
        basis = self.model.noise_head_basis()
        if basis is not None:  # projected-error fallback for a rank-deficient head
            basis = basis.to(x0.device)
            x0, x0_hat = x0 @ basis, x0_hat @ basis
        grid = (tokens.shape[0], *self.model.grid_size)
        if s.ensemble_reduce == "error_of_mean":
            return (x0_hat.mean(0) - x0).pow(2).sum(-1).view(grid)
        errors = (x0_hat - x0).pow(2).sum(-1)  # (E, B, N)
        total = errors[0]
        for e in range(1, ensemble):  # same summation order as the former per-draw loop
            total = total + errors[e]
        return (total / ensemble).view(grid)

    @torch.no_grad()
    def prototype_scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prototype-only scoring (Table 5 rows 1-2, no diffusion, no noise): per token 1 - max cosine
        similarity (``prototype_similarity_maps``) to the image's own prototypes (Eq. 10), local and/or global
        ones, whichever the model has, in standardised token space (where Eq. 11 trains them); (B, h, w)."""
        model = self.model
        x0 = model.standardize(tokens)
        parts = [p for p in model.prototypes(x0) if p is not None]
        if not parts:
            raise ConfigError(
                "inference.scoring=prototype needs local or global prototypes; this model has none "
                "(model.use_local_prototypes / model.use_global_prototypes are off)"
            )
        sims = prototype_similarity_maps(x0, torch.cat(parts, dim=1))  # (B, M+K, N)
        return (1.0 - sims.max(dim=1).values).view(tokens.shape[0], *model.grid_size)

    @torch.no_grad()
    def reconstruct(self, tokens: torch.Tensor, noise: NoiseSource) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 (B, N, C), x0_hat (E, B, N, C)): the standardised tokens, noised to ``noise_step`` with the
        ``ensemble`` draws of ``noise`` and denoised with DDIM (Eq. 20-21), all draws as one batch of E*B rows
        (or in chunks of ``max_rows``)."""
        model, s = self.model, self.settings
        if not 0 <= s.noise_step < model.cfg.num_timesteps:
            raise ConfigError(
                f"noise_step must be in [0, {model.cfg.num_timesteps - 1}], got {s.noise_step} (inference.noise_step)"
            )
        denoiser = self._denoiser()
        ensemble = max(1, int(s.ensemble))
        x0 = model.standardize(tokens)
        amp_dtype = resolve_autocast_dtype(x0.device, self.autocast_dtype)
        with _amp(x0.device, amp_dtype):
            p_local, p_global = model.prototypes(x0)
        if amp_dtype is not None:
            p_local = p_local.float() if p_local is not None else None
            p_global = p_global.float() if p_global is not None else None
        p0, types = model.stack_prototypes(p_local, p_global)
        eps_x, eps_p = noise.draw(x0, p0, ensemble, s.antithetic)
        if p0 is not None and eps_p is None:
            raise ValueError("the noise source drew no prototype noise, but the denoiser attends to prototypes")
        x0_all = x0.repeat(ensemble, 1, 1) if ensemble > 1 else x0
        p0_all = None if p0 is None else (p0.repeat(ensemble, 1, 1) if ensemble > 1 else p0)
        rows = x0_all.shape[0]
        step = rows if not self.max_rows else max(1, int(self.max_rows))
        outs = []
        for r in range(0, rows, step):
            sl = slice(r, r + step)
            p_rows = (p0_all[sl], eps_p[sl], types) if p0_all is not None and eps_p is not None else None
            outs.append(self._denoise_rows(denoiser, x0_all[sl], eps_x[sl], p_rows, amp_dtype))
        x0_hat = outs[0] if len(outs) == 1 else torch.cat(outs)
        return x0, x0_hat.view(ensemble, x0.shape[0], *x0.shape[1:])

    def _denoise_rows(
        self,
        denoiser,
        x0: torch.Tensor,
        eps_x: torch.Tensor,
        prototypes: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None,
        amp_dtype: torch.dtype | None,
    ) -> torch.Tensor:
        """DDIM from ``noise_step`` back to 0 for one chunk of rows; ``prototypes``: (P_0, their noise draw,
        the prototype types) of the rows, or None."""
        model, s = self.model, self.settings
        t0 = torch.full((x0.shape[0],), s.noise_step, dtype=torch.long, device=x0.device)
        x_t = q_sample(x0, t0, eps_x, model.alphas_cumprod)
        types = prototypes[2] if prototypes is not None else None

        def eps_fn(x_s: torch.Tensor, t_batch: torch.Tensor, step: int) -> torch.Tensor:
            # Eq. (20): P_s is P_0 perturbed to the same step s (one fixed noise draw for the run)
            p_s = None
            if prototypes is not None:
                p_s = q_sample(prototypes[0], t_batch, prototypes[1], model.alphas_cumprod)
            if amp_dtype is None:
                return model.predict_noise(denoiser, x_s, t_batch, p_s, types)
            with _amp(x_s.device, amp_dtype):
                return model.predict_noise(denoiser, x_s, t_batch, p_s, types).float()

        return ddim_reconstruct(x_t, s.noise_step, s.ddim_steps, eps_fn, model.alphas_cumprod)

    def _denoiser(self):
        """The denoiser, or (``compile``) a cached ``torch.compile`` of it."""
        denoiser = self.model.denoiser
        if denoiser is None:
            raise ConfigError(
                "this model has no denoiser (model.diffusion=false): score it with inference.scoring=prototype"
            )
        if not self.compile:
            return denoiser
        fn = _COMPILED.get(denoiser)
        if fn is None:
            fn = _COMPILED[denoiser] = torch.compile(denoiser, dynamic=False)
        return fn


def _amp(device: torch.device, dtype: torch.dtype | None):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


_AUTOCAST_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def resolve_autocast_dtype(device: torch.device, dtype: torch.dtype | str | None) -> torch.dtype | None:
    """Resolve an autocast dtype for ``device`` (``None`` = off); an unsupported combination is an
    error, never silently ignored."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype.lower() not in _AUTOCAST_NAMES:
            raise ValueError(f"autocast_dtype must be one of {sorted(_AUTOCAST_NAMES)}, got {dtype!r}")
        dtype = _AUTOCAST_NAMES[dtype.lower()]
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast_dtype must be torch.bfloat16 or torch.float16, got {dtype}")
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"autocast is not available on device type {device.type!r}")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError("this CUDA device does not support bfloat16; use autocast_dtype=torch.float16")
    return dtype
