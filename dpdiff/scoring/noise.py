"""Where the :class:`~dpdiff.scoring.scorer.Scorer` takes its noise draws from (Eq. 14-15 at test time).

A noise source gives the draws of one batch: ``draw(x0, p0, ensemble, antithetic)`` -> ``(eps_x (E*B, N, C),
eps_p (E*B, P, C) or None)``, stacked draw-major (the ``E`` draws of the whole batch, draw after draw), for the
standardised tokens ``x0`` (B, N, C) and the stacked prototypes ``p0`` (B, P, C) (None when the denoiser attends
to none). Three sources:

* :class:`IndependentNoise`: every image its own draws, from a generator consumed batch after batch (a score
  then depends on the batch the image came in and its position);
* :class:`CommonNoise`: every image the SAME draws, from a generator seeded with ``seed`` at every batch (common
  random numbers): a score depends on the image alone, so batched, single-image, served and exported inference
  agree, and differences between images are not blurred by different noise;
* :class:`FixedNoise`: draws given by the caller, ``(E, 1, N, C)`` and ``(E, 1, P, C)``, broadcast over the batch
  (the ONNX export holds the common draws as constants of the graph).

``antithetic``: draws 2k+1 are the negatives of draws 2k (token AND prototype noise), so each pair sums to zero
exactly; an odd last draw stays independent. For a denoiser that is locally linear in the noise, the pair's mean
reconstruction cancels the noise-induced error entirely (issue #13).
"""

from __future__ import annotations

from typing import Protocol

import torch

__all__ = ["CommonNoise", "FixedNoise", "IndependentNoise", "NoiseSource"]


class NoiseSource(Protocol):
    """The draws of one batch (module docstring)."""

    def draw(
        self, x0: torch.Tensor, p0: torch.Tensor | None, ensemble: int, antithetic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def _draws(
    generator: torch.Generator | None,
    x_shape: tuple[int, ...],
    p_shape: tuple[int, ...] | None,
    ensemble: int,
    antithetic: bool,
    device: torch.device,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The ``ensemble`` draws, in the order of as many sequential single-draw runs (x-noise, then prototype
    noise, per draw), so a seeded batched run reproduces the former per-draw loop."""
    eps_x: list[torch.Tensor] = []
    eps_p: list[torch.Tensor] = []
    for e in range(ensemble):
        if antithetic and e % 2 == 1:
            eps_x.append(-eps_x[-1])
            if p_shape is not None:
                eps_p.append(-eps_p[-1])
            continue
        eps_x.append(torch.randn(x_shape, device=device, generator=generator))
        if p_shape is not None:
            eps_p.append(torch.randn(p_shape, device=device, generator=generator))
    return eps_x, eps_p


class IndependentNoise:
    """Every image its own draws from ``generator`` (None: torch's global generator), consumed in call order."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def draw(
        self, x0: torch.Tensor, p0: torch.Tensor | None, ensemble: int, antithetic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        p_shape = None if p0 is None else tuple(p0.shape)
        eps_x, eps_p = _draws(self.generator, tuple(x0.shape), p_shape, ensemble, antithetic, x0.device)
        return torch.cat(eps_x), (None if p0 is None else torch.cat(eps_p))


class CommonNoise:
    """Every image of a batch the same draws, of shape (1, ...), from a generator seeded with ``seed`` at every
    call (on the tokens' device): the same draws for every batch and every image."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def draw(
        self, x0: torch.Tensor, p0: torch.Tensor | None, ensemble: int, antithetic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        generator = torch.Generator(device=x0.device).manual_seed(self.seed)
        p_shape = None if p0 is None else (1, *p0.shape[1:])
        eps_x, eps_p = _draws(generator, (1, *x0.shape[1:]), p_shape, ensemble, antithetic, x0.device)
        x = torch.cat([e.expand_as(x0) for e in eps_x])
        return x, (None if p0 is None else torch.cat([e.expand_as(p0) for e in eps_p]))


class FixedNoise:
    """Draws given by the caller: ``noise_x`` (E, 1, N, C) and ``noise_p`` (E, 1, P, C) (any tensor when the
    denoiser attends to no prototypes), broadcast over the batch and stacked draw-major, exactly as the
    common draws :class:`CommonNoise` makes. ``antithetic`` is already in the given draws; ``ensemble`` must
    be ``E``."""

    def __init__(self, noise_x: torch.Tensor, noise_p: torch.Tensor):
        self.noise_x, self.noise_p = noise_x, noise_p

    def draw(
        self, x0: torch.Tensor, p0: torch.Tensor | None, ensemble: int, antithetic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        e, b = self.noise_x.shape[0], x0.shape[0]
        if e != ensemble:
            raise ValueError(f"fixed noise holds {e} draws, the scorer makes {ensemble}")
        eps_x = self.noise_x.expand(e, b, *x0.shape[1:]).reshape(e * b, *x0.shape[1:])
        eps_p = None if p0 is None else self.noise_p.expand(e, b, *p0.shape[1:]).reshape(e * b, *p0.shape[1:])
        return eps_x, eps_p

    @classmethod
    def common(
        cls, seed: int, n_tokens: int, n_prototypes: int, dim: int, ensemble: int, antithetic: bool
    ) -> FixedNoise:
        """The draws :class:`CommonNoise` makes on the CPU (token and prototype noise, antithetic pairs
        included) as fixed tensors ``(E, 1, N, C)``/``(E, 1, P, C)`` (empty without prototypes)."""
        x0 = torch.zeros(1, n_tokens, dim)
        p0 = torch.zeros(1, n_prototypes, dim) if n_prototypes else None
        eps_x, eps_p = CommonNoise(seed).draw(x0, p0, ensemble, antithetic)
        noise_p = eps_p.view(ensemble, 1, n_prototypes, -1) if eps_p is not None else x0.new_zeros(0)
        return cls(eps_x.reshape(ensemble, 1, n_tokens, -1).contiguous(), noise_p.contiguous())
