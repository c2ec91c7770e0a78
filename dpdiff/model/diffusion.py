"""DDPM forward process and DDIM reverse sampling (paper Sec. 3.1 and 4.2-4.3).

Pure tensor functions plus a tiny ``NoiseSchedule`` holder so the maths can be tested without a
network. Timesteps are 0-based indices into the schedule (``t = 0 .. T-1``): index ``t`` has
``alpha_bar[t] = prod_{s<=t} (1 - beta_s)``. The paper's ``t`` (1-based) is ``index + 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def linear_beta_schedule(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear betas of DDPM (Ho et al.), as in paper Sec. 5.1.3: beta_1 = 1e-4 ... beta_T = 0.02."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


@dataclass
class NoiseSchedule:
    betas: torch.Tensor  # (T,) float64

    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        return cls(linear_beta_schedule(num_timesteps, beta_start, beta_end))

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(1.0 - self.betas, dim=0)


def _gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] reshaped to broadcast over ``like`` (batch first)."""
    out = values.to(like.device)[t].to(like.dtype)
    return out.view(-1, *([1] * (like.dim() - 1)))


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Eq. (2)/(14)/(15): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, with per-sample t (B,)."""
    abar = _gather(alphas_cumprod, t, x0)
    return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise


def ddim_timesteps(start_step: int, num_steps: int) -> list[int]:
    """Evaluation timesteps of a DDIM run that starts at ``start_step`` and ends at the clean sample.

    ``num_steps`` network evaluations at evenly spaced indices from ``start_step`` down (exclusive of
    the final clean state), e.g. start 100, 3 steps -> [100, 67, 33]; the last update jumps to x0.
    """
    if num_steps < 1:
        raise ValueError(f"DDIM needs at least one step, got {num_steps}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    if num_steps >= start_step + 1:
        return list(range(start_step, -1, -1))
    ts = torch.linspace(start_step, 0, num_steps + 1)[:-1].round().long().tolist()
    # keep strictly decreasing integers (rounding may merge neighbours for tiny start steps)
    out: list[int] = []
    for t in ts:
        if not out or t < out[-1]:
            out.append(int(t))
    return out


def ddim_step(
    x_t: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor, abar_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One deterministic DDIM update (eta = 0). Returns (x_prev, x0_pred)."""
    x0_pred = (x_t - (1.0 - abar_t).sqrt() * eps) / abar_t.sqrt()
    x_prev = abar_prev.sqrt() * x0_pred + (1.0 - abar_prev).sqrt() * eps
    return x_prev, x0_pred


EpsFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@torch.no_grad()
def ddim_reconstruct(
    x_start: torch.Tensor, start_step: int, num_steps: int, eps_fn: EpsFn, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Denoise ``x_start`` (already noised to ``start_step``) back to x0 with DDIM (Sec. 4.3, [46]).

    ``eps_fn(x_s, t_batch, s)`` predicts the noise at step ``s`` (Eq. 20); the caller supplies the
    matching noisy prototypes P_s. No noise is injected (eta = 0), so a perfect noise predictor gives
    x0 back exactly.
    """
    abar = alphas_cumprod.to(device=x_start.device, dtype=x_start.dtype)
    steps = ddim_timesteps(start_step, num_steps)
    x = x_start
    one = torch.ones((), dtype=x.dtype, device=x.device)
    for i, s in enumerate(steps):
        t_batch = torch.full((x.shape[0],), s, dtype=torch.long, device=x.device)
        eps = eps_fn(x, t_batch, s)
        abar_prev = abar[steps[i + 1]] if i + 1 < len(steps) else one
        x, _ = ddim_step(x, eps, abar[s], abar_prev)
    return x
