"""DPDiff-AD: dual prototypes + prototype-conditioned diffusion reconstruction (paper Sec. 4).

``DPDiffAD`` holds every trainable part (prototype extractors, DiT) and the fixed buffers (noise
schedule, token statistics). The frozen backbone lives outside, so a checkpoint is small and the
model works on cached tokens. Tokens enter as (B, N, C) in backbone space.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LossConfig, ModelConfig
from .diffusion import NoiseSchedule, ddim_reconstruct, q_sample
from .dit import PrototypeDiT
from .prototypes import PrototypeExtractor, global_prototype_loss, local_prototype_loss

LOCAL, GLOBAL = 0, 1


class DPDiffAD(nn.Module):
    def __init__(self, in_dim: int, grid_size: tuple[int, int], cfg: ModelConfig | None = None,
                 loss_cfg: LossConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ModelConfig()
        self.loss_cfg = loss_cfg or LossConfig()
        self.in_dim = in_dim
        self.grid_size = tuple(grid_size)
        self.local_extractor = (PrototypeExtractor(in_dim, cfg.num_local_prototypes, cfg.prototype_heads)
                                if cfg.use_local_prototypes and cfg.num_local_prototypes > 0 else None)
        self.global_extractor = (PrototypeExtractor(in_dim, cfg.num_global_prototypes, cfg.prototype_heads)
                                 if cfg.use_global_prototypes and cfg.num_global_prototypes > 0 else None)
        self.denoiser = PrototypeDiT(in_dim, self.grid_size, cfg.hidden_dim, cfg.depth, cfg.num_heads,
                                     cfg.mlp_ratio, cross_attention=cfg.prototype_cross_attention)
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

    def _stack_prototypes(self, p_local, p_global):
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
    def training_losses(self, tokens: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        x0 = self.standardize(tokens)
        bsz = x0.shape[0]
        p_local, p_global = self.prototypes(x0)
        zero = x0.new_zeros(())
        l_local = local_prototype_loss(x0, p_local) if p_local is not None else zero
        l_global = zero
        if p_global is not None:
            scale = 1.0 / self.in_dim if self.cfg.ot_cost_per_channel else 1.0
            l_global = global_prototype_loss(x0, p_global, self.cfg.ot_epsilon, self.cfg.ot_iters, scale)
        p0, types = self._stack_prototypes(p_local, p_global)

        t_max = self.cfg.train_max_timestep
        t_high = self.cfg.num_timesteps if t_max is None else min(int(t_max) + 1, self.cfg.num_timesteps)
        t = torch.randint(0, t_high, (bsz,), device=x0.device, generator=generator)
        eps_x = torch.randn(x0.shape, device=x0.device, generator=generator)
        x_t = q_sample(x0, t, eps_x, self.alphas_cumprod)  # Eq. (14)
        p_t = None
        if p0 is not None:
            eps_p = torch.randn(p0.shape, device=x0.device, generator=generator)
            p_t = q_sample(p0, t, eps_p, self.alphas_cumprod)  # Eq. (15)
        eps_pred = self.denoiser(x_t, t, p_t, types)
        l_diff = F.mse_loss(eps_pred, eps_x)  # Eq. (18)
        total = l_diff + self.loss_cfg.lambda_local * l_local + self.loss_cfg.lambda_global * l_global  # Eq. (19)
        return {"loss": total, "diff": l_diff, "local": l_local, "global": l_global}

    # ---------------------------------------------------------------- inference (Eq. 20-22)
    @torch.no_grad()
    def reconstruct(self, tokens: torch.Tensor, noise_step: int, ddim_steps: int,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise standardised tokens to ``noise_step``, denoise with DDIM; returns (x0, x0_hat)."""
        if not 0 <= noise_step < self.cfg.num_timesteps:
            raise ValueError(f"noise_step must be in [0, {self.cfg.num_timesteps - 1}], got {noise_step}")
        x0 = self.standardize(tokens)
        p_local, p_global = self.prototypes(x0)
        p0, types = self._stack_prototypes(p_local, p_global)
        eps_x = torch.randn(x0.shape, device=x0.device, generator=generator)
        t0 = torch.full((x0.shape[0],), noise_step, dtype=torch.long, device=x0.device)
        x_t = q_sample(x0, t0, eps_x, self.alphas_cumprod)
        eps_p = torch.randn(p0.shape, device=x0.device, generator=generator) if p0 is not None else None

        def eps_fn(x_s: torch.Tensor, t_batch: torch.Tensor, s: int) -> torch.Tensor:
            # Eq. (20): P_s is P_0 perturbed to the same step s (one fixed noise draw for the run)
            p_s = q_sample(p0, t_batch, eps_p, self.alphas_cumprod) if p0 is not None else None
            return self.denoiser(x_s, t_batch, p_s, types)

        x0_hat = ddim_reconstruct(x_t, noise_step, ddim_steps, eps_fn, self.alphas_cumprod)
        return x0, x0_hat

    @torch.no_grad()
    def token_scores(self, tokens: torch.Tensor, noise_step: int, ddim_steps: int, ensemble: int = 1,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Eq. (22)-(23): per-token squared L2 reconstruction error, reshaped to (B, h, w)."""
        total = None
        for _ in range(max(1, ensemble)):
            x0, x0_hat = self.reconstruct(tokens, noise_step, ddim_steps, generator)
            s = (x0_hat - x0).pow(2).sum(-1)
            total = s if total is None else total + s
        return (total / max(1, ensemble)).view(tokens.shape[0], *self.grid_size)
