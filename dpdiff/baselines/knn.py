"""PatchCore-style kNN memory-bank baseline (Roth et al., 2022) on the same backbone tokens.

Memory bank = training tokens (optionally greedy-coreset subsampled); a test token's score is its
L2 distance to the nearest bank token; maps are upsampled/smoothed and pooled exactly like DPDiff-AD
(model/postprocess.py), so the two differ only in how a token is scored.
"""

from __future__ import annotations

import torch

from dpdiff.utils.progress import progress


@torch.no_grad()
def greedy_coreset(
    bank: torch.Tensor,
    fraction: float,
    projection_dim: int = 128,
    seed: int = 0,
) -> torch.Tensor:
    """Indices of a greedy k-center coreset (PatchCore's approximate version with a random projection)."""
    n = bank.shape[0]
    k = max(1, int(round(n * fraction)))
    if k >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    x = bank.float()
    if x.shape[1] > projection_dim:
        proj = torch.randn(x.shape[1], projection_dim, generator=g) / projection_dim**0.5
        x = x @ proj
    x = x.contiguous()
    x_sq = x.pow(2).sum(1)
    selected = torch.empty(k, dtype=torch.long)
    selected[0] = int(torch.randint(0, n, (1,), generator=g))
    min_d = torch.full((n,), float("inf"))
    for i in progress(range(1, k + 1), desc="coreset", leave=False, mininterval=1.0):
        s = selected[i - 1]
        # ||x - s||^2 = ||x||^2 - 2 x.s + ||s||^2: one mat-vec, no (n, d) temporary per iteration
        d = x_sq - 2.0 * (x @ x[s]) + x_sq[s]
        torch.minimum(min_d, d, out=min_d)
        if i < k:
            selected[i] = int(torch.argmax(min_d))
    return selected


class KNNMemoryBank:
    def __init__(
        self, train_tokens: torch.Tensor, coreset_fraction: float = 0.1, seed: int = 0, standardize: bool = False
    ):
        """train_tokens (M, C) float. ``standardize``: distances in per-channel z-scored token space (the
        space DPDiff-AD scores in), with the mean and std of the training tokens; else raw backbone space."""
        bank = train_tokens.float()
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        if standardize:
            self.mean = bank.mean(0)
            self.std = bank.std(0).clamp_min(1e-6)
            bank = (bank - self.mean) / self.std
        if coreset_fraction < 1.0:
            bank = bank[greedy_coreset(bank, coreset_fraction, seed=seed)]
        self.bank = bank.contiguous()
        self.bank_sq = self.bank.pow(2).sum(1)

    @torch.no_grad()
    def token_distances(self, tokens: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """(Q, C) -> nearest-neighbour L2 distance (Q,)."""
        out = torch.empty(tokens.shape[0])
        for i in range(0, tokens.shape[0], chunk):
            q = tokens[i : i + chunk].float()
            if self.mean is not None and self.std is not None:
                q = (q - self.mean) / self.std
            d2 = q.pow(2).sum(1, keepdim=True) - 2 * q @ self.bank.T + self.bank_sq
            out[i : i + chunk] = d2.min(dim=1).values.clamp_min(0).sqrt()
        return out

    def score_maps(self, feature_maps: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> token maps (B, h, w)."""
        b, c, h, w = feature_maps.shape
        tokens = feature_maps.float().flatten(2).transpose(1, 2).reshape(-1, c)
        return self.token_distances(tokens).view(b, h, w)
