"""Dual-scale prototypes (paper Sec. 4.1).

* ``PrototypeExtractor``: Eq. (10), learnable queries that cross-attend to the tokens, then an FFN,
  both residual. The same architecture serves the local (M queries) and global (K queries)
  prototypes with independent parameters.
* ``local_prototype_loss``: Eq. (11), nearest-prototype cosine distance per token.
* ``global_prototype_loss``: Eq. (12)-(13), entropic OT between the uniform token distribution and the
  uniform prototype distribution with squared-L2 costs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpdiff.model.sinkhorn import entropic_ot_loss


class PrototypeExtractor(nn.Module):
    """Eq. (10): T' = CrossAttn(T, x, x) + T;  P = FFN(T') + T'.

    Choice (paper silent): LayerNorm on the queries and the tokens before attention and before the FFN
    (pre-norm, as in the DiT blocks), which keeps the layer well-conditioned at initialisation.
    """

    def __init__(self, dim: int, num_prototypes: int, num_heads: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        if dim % num_heads != 0:
            num_heads = 1
        self.queries = nn.Parameter(torch.randn(num_prototypes, dim) * 0.02)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    @property
    def num_prototypes(self) -> int:
        return int(self.queries.shape[0])

    def forward(self, tokens: torch.Tensor, return_attention: bool = False):
        """tokens (B, N, C) -> prototypes (B, M, C) [, attention (B, M, N)]."""
        q = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        kv = self.norm_kv(tokens)
        attn_out, attn_w = self.attn(self.norm_q(q), kv, kv, need_weights=return_attention, average_attn_weights=True)
        t_prime = q + attn_out
        protos = t_prime + self.ffn(self.norm_ffn(t_prime))
        return (protos, attn_w) if return_attention else protos


def local_prototype_loss(tokens: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Eq. (11): mean over tokens of min_m (1 - cos(x_i, p_m)); tokens (B,N,C), prototypes (B,M,C)."""
    cos = torch.einsum("bnc,bmc->bnm", F.normalize(tokens, dim=-1), F.normalize(prototypes, dim=-1))
    return (1.0 - cos.max(dim=-1).values).mean()


def squared_distance_cost(tokens: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """C_ik = ||x_i - p_k||^2 for (B,N,C) x (B,K,C) -> (B,N,K)."""
    return (tokens.unsqueeze(2) - prototypes.unsqueeze(1)).pow(2).sum(-1)


def global_prototype_loss(
    tokens: torch.Tensor, prototypes: torch.Tensor, epsilon: float, num_iters: int = 50, cost_scale: float = 1.0
) -> torch.Tensor:
    """Eq. (12)-(13): entropic OT between P_x (uniform over N tokens) and P_g (uniform over K).

    ``cost_scale`` multiplies the paper's squared-L2 cost; 1/C (mean squared difference per channel)
    makes one ``epsilon`` meaningful across backbones of different width. See docs/method.md.
    """
    cost = squared_distance_cost(tokens, prototypes) * cost_scale
    return entropic_ot_loss(cost, epsilon=epsilon, num_iters=num_iters)


def prototype_similarity_maps(tokens: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every token to every prototype (B, M, N), for Fig. 8-style maps and the
    prototype-only scoring ablation (Table 5 rows 1-2)."""
    return torch.einsum("bnc,bmc->bmn", F.normalize(tokens, dim=-1), F.normalize(prototypes, dim=-1))
