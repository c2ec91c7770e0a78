"""Prototype-aware U-ViT denoiser (paper Table 9, "U-ViT" row; U-ViT of Bao et al. 2023 [56]).

Same interface as :class:`~dpdiff.model.dit.PrototypeDiT`: tokens (B, N, C) + timesteps (B,) + noised
prototypes (B, P, C) -> predicted noise (B, N, C) of Eq. (18).

As in U-ViT, "all are worth words": the timestep enters as one extra token (sinusoidal embedding through
an MLP) that every block attends to, instead of the DiT's adaLN; and long skip connections join shallow
and deep blocks: with ``depth`` = L there are L // 2 in-blocks, one mid-block and L // 2 out-blocks (U-ViT's
own convention, 2 (L // 2) + 1 blocks), and out-block j first maps concat(h, skip from in-block L//2 - 1 - j)
through a linear layer 2D -> D. Blocks are pre-LayerNorm transformer blocks; the paper's prototype-aware
attention (Eq. 16-17) sits between self-attention and the MLP of every block:

    h = h + SelfAttn(LN(h));   h = h + CrossAttn(LN(h), LN(P_t), LN(P_t));   h = h + MLP(LN(h))

Choices (not fixed by the paper): fixed 2-D sin-cos positions for the grid tokens (as our DiT) plus a learned
position for the time token; no final 3x3 convolution (U-ViT's optional ``conv`` head: tokens are not pixels
here); a zero-initialised output projection (the denoiser starts by predicting zero noise, like the DiT).
Per block 16 D^2 parameters (+ 2 D^2 per skip) vs 25 D^2 per DiT block, with one block more than L when L is
even (docs/method.md lists the counts).
"""

from __future__ import annotations

import torch
from torch import nn

from dpdiff.model.denoiser_base import DenoiserSize, PrototypeDenoiser
from dpdiff.model.dit import Attention, sincos_pos_embed_2d, timestep_embedding
from dpdiff.utils.errors import ConfigError


class UViTBlock(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, cross_attention: bool = True, skip: bool = False
    ):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.cross = None
        if cross_attention:
            self.norm_x = nn.LayerNorm(dim, eps=1e-6)
            self.norm_p = nn.LayerNorm(dim, eps=1e-6)
            self.cross = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, protos: torch.Tensor | None, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            if skip is None:
                raise ValueError(
                    "this U-ViT block has a long skip connection: pass skip (the matching early block's output)"
                )
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # U-ViT long skip connection
        x = x + self.attn(self.norm1(x))
        if self.cross is not None and protos is not None:
            x = x + self.cross(self.norm_x(x), self.norm_p(protos))  # Eq. (16): tokens attend to P_t
        return x + self.mlp(self.norm2(x))


class PrototypeUViT(PrototypeDenoiser):
    """eps_theta(x_t, P_t, t) of Eq. (18) as a U-ViT; same forward as PrototypeDiT."""

    pos_embed: torch.Tensor  # buffer (register_buffer), declared for the type checker

    def build(self, size: DenoiserSize) -> None:
        if size.depth < 1:
            raise ConfigError(f"U-ViT depth must be >= 1, got {size.depth} (model.depth)")
        in_dim, hidden_dim = size.in_dim, size.hidden_dim
        num_heads, mlp_ratio, cross_attention = size.num_heads, size.mlp_ratio, size.cross_attention
        half = size.depth // 2
        self.in_proj = nn.Linear(in_dim, hidden_dim)
        self.init_prototype_embedding(in_dim, hidden_dim, size.num_prototype_types)  # proto_proj, proto_type
        self.t_embed = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim))
        self.time_pos = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        nn.init.trunc_normal_(self.time_pos, std=0.02)
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(hidden_dim, *self.grid_size).unsqueeze(0), persistent=False
        )
        self.in_blocks = nn.ModuleList(
            UViTBlock(hidden_dim, num_heads, mlp_ratio, cross_attention) for _ in range(half)
        )
        self.mid_block = UViTBlock(hidden_dim, num_heads, mlp_ratio, cross_attention)
        self.out_blocks = nn.ModuleList(
            UViTBlock(hidden_dim, num_heads, mlp_ratio, cross_attention, skip=True) for _ in range(half)
        )
        self.final_norm = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.out_proj = nn.Linear(hidden_dim, in_dim)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, protos: torch.Tensor | None) -> torch.Tensor:
        if x_t.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(f"U-ViT built for {self.pos_embed.shape[1]} tokens {self.grid_size}, got {x_t.shape[1]}")
        tokens = self.in_proj(x_t) + self.pos_embed
        time_token = self.t_embed(timestep_embedding(t, self.hidden_dim)).unsqueeze(1) + self.time_pos
        h = torch.cat([time_token, tokens], dim=1)  # the timestep is a token
        skips = []
        for block in self.in_blocks:
            h = block(h, protos)
            skips.append(h)
        h = self.mid_block(h, protos)
        for block in self.out_blocks:
            h = block(h, protos, skips.pop())
        return self.out_proj(self.final_norm(h))[:, 1:]  # drop the time token
