"""DPDiff-AD: dual prototypes + prototype-conditioned diffusion reconstruction (paper Sec. 4).

``DPDiffAD`` holds every trainable part (prototype extractors, DiT) and the fixed buffers (noise
schedule, token statistics). The frozen backbone lives outside, so a checkpoint is small and the
model works on cached tokens. Tokens enter as (B, N, C) in backbone space. Scoring at test time (the
reconstruction protocol of Eq. 20-24: noise step, DDIM steps, noise draws, the error and its reduction) is
:class:`dpdiff.scoring.scorer.Scorer`'s, with this model's networks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpdiff.config import LossConfig, ModelConfig
from dpdiff.model.denoisers import build_denoiser
from dpdiff.model.diffusion import NoiseSchedule, q_sample
from dpdiff.model.prototypes import PrototypeExtractor, global_prototype_loss, local_prototype_loss
from dpdiff.utils.errors import ConfigError

LOCAL, GLOBAL = 0, 1
# ``inference.scoring`` and ``inference.ensemble_reduce`` (dpdiff/choices.py): implemented by dpdiff/scoring/scorer.py


class DPDiffAD(nn.Module):
    # buffers (register_buffer), declared for the type checker
    alphas_cumprod: torch.Tensor
    token_mean: torch.Tensor
    token_std: torch.Tensor

    def __init__(
        self,
        in_dim: int,
        grid_size: tuple[int, int],
        cfg: ModelConfig | None = None,
        loss_cfg: LossConfig | None = None,
    ):
        super().__init__()
        self.cfg = cfg = cfg or ModelConfig()
        self.loss_cfg = loss_cfg or LossConfig()
        self.in_dim = in_dim
        h, w = grid_size
        self.grid_size = (h, w)
        self.local_extractor = (
            PrototypeExtractor(in_dim, cfg.num_local_prototypes, cfg.prototype_heads)
            if cfg.use_local_prototypes and cfg.num_local_prototypes > 0
            else None
        )
        self.global_extractor = (
            PrototypeExtractor(in_dim, cfg.num_global_prototypes, cfg.prototype_heads)
            if cfg.use_global_prototypes and cfg.num_global_prototypes > 0
            else None
        )
        if not cfg.diffusion and self.local_extractor is None and self.global_extractor is None:
            raise ConfigError("model.diffusion=false needs local or global prototypes (nothing to train otherwise)")
        # eps_theta of Eq. (18): DiT (paper), U-Net or U-ViT (Table 9); None = prototype-only (Table 5 rows 1-2)
        self.denoiser = build_denoiser(cfg, in_dim, self.grid_size) if cfg.diffusion else None
        # Full-rank noise head (issue #13): a network whose output layer is narrower than C predicts noise
        # in a subspace only, and the injected noise in the other directions is never removed. The linear
        # skip W x_t spans all C directions (and is the Bayes noise predictor for Gaussian tokens).
        self.noise_skip = None
        if self.denoiser is not None and cfg.output_skip:
            self.noise_skip = nn.Linear(in_dim, in_dim, bias=False)
            nn.init.zeros_(self.noise_skip.weight)
        schedule = NoiseSchedule.linear(cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.float())
        self.register_buffer("token_mean", torch.zeros(in_dim))
        self.register_buffer("token_std", torch.ones(in_dim))

    # ---------------------------------------------------------------- token space
    @torch.no_grad()
    def set_token_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel statistics of the training tokens; used when cfg.standardize_tokens."""
        self.token_mean.copy_(mean.to(self.token_mean))
        self.token_std.copy_(std.to(self.token_std).clamp_min(1e-6))

    def standardize(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.float()
        if self.cfg.standardize_tokens:
            tokens = (tokens - self.token_mean) / self.token_std
        return tokens

    # ---------------------------------------------------------------- prototypes (Sec. 4.1)
    def prototypes(self, x0: torch.Tensor):
        """Returns (P_l or None, P_g or None) for standardised tokens x0 (B,N,C)."""
        p_local = self.local_extractor(x0) if self.local_extractor is not None else None
        p_global = self.global_extractor(x0) if self.global_extractor is not None else None
        return p_local, p_global

    def stack_prototypes(self, p_local, p_global):
        """(P_0 (B, M+K, C), their types (M+K,) LOCAL/GLOBAL) of what the denoiser cross-attends to, or
        (None, None) when it attends to no prototypes."""
        parts, types = [], []
        if p_local is not None:
            parts.append(p_local)
            types += [LOCAL] * p_local.shape[1]
        if p_global is not None:
            parts.append(p_global)
            types += [GLOBAL] * p_global.shape[1]
        if not parts or not self.cfg.prototype_cross_attention:
            return None, None
        device = parts[0].device
        return torch.cat(parts, dim=1), torch.tensor(types, dtype=torch.long, device=device)

    # ---------------------------------------------------------------- training (Eq. 18-19)
    @property
    def num_prototypes(self) -> int:
        """Prototypes the DiT cross-attends to (0 when it attends to none)."""
        if not self.cfg.prototype_cross_attention:
            return 0
        return sum(e.num_prototypes for e in (self.local_extractor, self.global_extractor) if e is not None)

    def draw_training_noise(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        token_keep: float = 1.0,
    ) -> dict[str, torch.Tensor | None]:
        """The random draws of one training step, ``{"t", "eps_x", "eps_p"[, "keep"]}``, for ``batch_size``
        samples; ``token_keep`` < 1 adds ``keep`` (B, K) sorted token positions, ``K = round(token_keep * N)``
        per image (masked training), drawn after the others so that they do not change.

        Drawn in the order ``training_losses`` draws them itself, so passing the result (or a row
        slice of a larger draw, as each data-parallel rank does) gives the same numbers.
        """
        device = torch.device(device) if device is not None else self.alphas_cumprod.device
        t_max = self.cfg.train_max_timestep
        t_high = self.cfg.num_timesteps if t_max is None else min(int(t_max) + 1, self.cfg.num_timesteps)
        n_tokens = self.grid_size[0] * self.grid_size[1]
        t = torch.randint(0, t_high, (batch_size,), device=device, generator=generator)
        eps_x = torch.randn((batch_size, n_tokens, self.in_dim), device=device, generator=generator)
        m = self.num_prototypes
        eps_p = torch.randn((batch_size, m, self.in_dim), device=device, generator=generator) if m else None
        draws: dict[str, torch.Tensor | None] = {"t": t, "eps_x": eps_x, "eps_p": eps_p}
        if token_keep < 1.0:
            k = max(1, int(round(token_keep * n_tokens)))
            order = torch.rand((batch_size, n_tokens), device=device, generator=generator).argsort(dim=1)
            draws["keep"] = order[:, :k].sort(dim=1).values
        return draws

    def training_losses(
        self,
        tokens: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: dict[str, torch.Tensor | None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Eq. (19) on a batch of tokens. ``noise`` (from ``draw_training_noise``) replaces the draws
        from ``generator``."""
        x0 = self.standardize(tokens)
        bsz = x0.shape[0]
        if noise is None:
            noise = self.draw_training_noise(bsz, generator, x0.device)
        p_local, p_global = self.prototypes(x0)
        zero = x0.new_zeros(())
        l_local = local_prototype_loss(x0, p_local) if p_local is not None else zero
        l_global = zero
        if p_global is not None:
            scale = 1.0 / self.in_dim if self.cfg.ot_cost_per_channel else 1.0
            l_global = global_prototype_loss(x0, p_global, self.cfg.ot_epsilon, self.cfg.ot_iters, scale)
        if self.denoiser is None:  # prototype-only ablation: Eq. (19) without L_diff
            total = self.loss_cfg.lambda_local * l_local + self.loss_cfg.lambda_global * l_global
            return {"loss": total, "diff": zero, "local": l_local, "global": l_global}
        p0, types = self.stack_prototypes(p_local, p_global)

        t, eps_x = noise["t"], noise["eps_x"]
        if t is None or eps_x is None:
            raise ValueError("noise must hold the draws 't' and 'eps_x' (see draw_training_noise)")
        if t.shape[0] != bsz or eps_x.shape != x0.shape:
            raise ValueError(
                f"noise for {t.shape[0]} samples of shape {tuple(eps_x.shape[1:])} does not fit "
                f"tokens {tuple(x0.shape)}"
            )
        keep = noise.get("keep")
        if keep is not None:  # masked training: the DiT sees (and is scored on) these tokens only
            x0, eps_x = (v.gather(1, keep.unsqueeze(-1).expand(-1, -1, v.shape[-1])) for v in (x0, eps_x))
        x_t = q_sample(x0, t, eps_x, self.alphas_cumprod)  # Eq. (14)
        p_t = None
        if p0 is not None:
            eps_p = noise["eps_p"]
            if eps_p is None:
                raise ValueError("noise has no prototype draws 'eps_p', but the denoiser attends to prototypes")
            p_t = q_sample(p0, t, eps_p, self.alphas_cumprod)  # Eq. (15)
        out = self.network_output(self.denoiser, x_t, t, p_t, types, keep)
        l_diff = F.mse_loss(out, self._training_target(x0, eps_x, t))  # Eq. (18) for prediction=eps
        total = l_diff + self.loss_cfg.lambda_local * l_local + self.loss_cfg.lambda_global * l_global  # Eq. (19)
        return {"loss": total, "diff": l_diff, "local": l_local, "global": l_global}

    def network_output(
        self,
        denoiser,
        x_t: torch.Tensor,
        t: torch.Tensor,
        p_t: torch.Tensor | None,
        types: torch.Tensor | None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What the network predicts (``model.prediction``: eps, v or x0): the denoiser (or its compiled
        wrapper) plus the full-rank linear skip. ``keep``: the token positions ``x_t`` holds (masked training)."""
        out = denoiser(x_t, t, p_t, types) if keep is None else denoiser(x_t, t, p_t, types, keep=keep)
        if self.noise_skip is not None:
            out = out + self.noise_skip(x_t.to(out.dtype))
        return out

    def _training_target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.cfg.prediction == "eps":
            return eps
        if self.cfg.prediction == "x0":
            return x0
        abar = self.alphas_cumprod[t].view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * eps - (1.0 - abar).sqrt() * x0  # v (Salimans & Ho, 2022)

    def predict_noise(
        self, denoiser, x_t: torch.Tensor, t: torch.Tensor, p_t: torch.Tensor | None, types: torch.Tensor | None
    ) -> torch.Tensor:
        """eps_theta(x_t, P_t, t) of Eq. (18): the network output converted to noise for DDIM. With
        x_t = sqrt(abar) x0 + sqrt(1-abar) eps: v gives eps = sqrt(1-abar) x_t + sqrt(abar) v, x0 gives
        eps = (x_t - sqrt(abar) x0) / sqrt(1-abar)."""
        out = self.network_output(denoiser, x_t, t, p_t, types)
        if self.cfg.prediction == "eps":
            return out
        abar = self.alphas_cumprod[t].to(out.dtype).view(-1, *([1] * (out.dim() - 1)))
        if self.cfg.prediction == "v":
            return (1.0 - abar).sqrt() * x_t.to(out.dtype) + abar.sqrt() * out
        return (x_t.to(out.dtype) - abar.sqrt() * out) / (1.0 - abar).sqrt().clamp_min(1e-4)

    def noise_head_basis(self) -> torch.Tensor | None:
        """Orthonormal basis (C, r) of the directions the noise head can predict, or None at full rank.

        A head without the skip whose output layer has rank r < C (hidden_dim < C, checkpoints made before
        issue #13) leaves the injected noise untouched in the other C - r directions; scoring the error in
        this basis only (the projected-error fallback) drops that pure-noise part.
        """
        if self.denoiser is None or self.noise_skip is not None or self.cfg.prediction != "eps":
            return None
        weight = _output_weight(self.denoiser)
        if weight is None:
            return None
        key = (weight.data_ptr(), weight._version)  # recomputed after any change of the weights
        cached = self.__dict__.get("_noise_head_basis")
        if cached is not None and cached[0] == key:
            return cached[1]
        u, sv, _ = torch.linalg.svd(weight.detach().float().reshape(weight.shape[0], -1), full_matrices=False)
        rank = int((sv > sv.max() * 1e-6).sum()) if sv.numel() and float(sv.max()) > 0 else 0
        basis = None if rank >= self.in_dim or rank == 0 else u[:, :rank].contiguous()
        self.__dict__["_noise_head_basis"] = (key, basis)
        return basis


def _output_weight(denoiser: nn.Module) -> torch.Tensor | None:
    """The weight of the denoiser's last layer (C, hidden[, 1, 1]): DiT/U-ViT ``out_proj``, U-Net ``out_conv``."""
    for name in ("out_proj", "out_conv"):
        layer = getattr(denoiser, name, None)
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            return layer.weight
    return None
