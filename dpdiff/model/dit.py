"""Prototype-aware Diffusion Transformer (paper Sec. 4.2, Eq. 16-18; DiT of Peebles & Xie [44]).

Each block: adaLN-Zero modulated self-attention over tokens, cross-attention from tokens to the
noised prototypes (Eq. 16-17: x' = x + CrossAttn(x, P_t, P_t)), and an MLP. The timestep embedding
drives the adaLN shift/scale/gate of all three sub-layers; gates start at zero so each block begins
as the identity (adaLN-Zero).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dpdiff.model.denoiser_base import DenoiserSize, PrototypeDenoiser
from dpdiff.utils.errors import ConfigError


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float().unsqueeze(1) * freqs.unsqueeze(0)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def sincos_pos_embed_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (h*w, dim), as in DiT/MAE."""
    if dim % 4:
        raise ConfigError(f"hidden dim must be divisible by 4 for 2-D sincos embeddings, got {dim} (model.hidden_dim)")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    out = []
    for pos in (ys.reshape(-1), xs.reshape(-1)):
        args = pos.unsqueeze(1) * omega.unsqueeze(0)
        out += [torch.sin(args), torch.cos(args)]
    return torch.cat(out, dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    """Multi-head attention (self when ``context`` is None, else cross) on SDPA."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(
                f"hidden dim {dim} not divisible by {num_heads} heads (model.hidden_dim, model.num_heads)"
            )
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        ctx = x if context is None else context
        h = self.num_heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class PrototypeDiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, cross_attention: bool = True):
        super().__init__()
        self.cross_attention = cross_attention
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        n_mod = 6
        if cross_attention:
            self.norm_x = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.norm_p = nn.LayerNorm(dim, eps=1e-6)
            self.cross = Attention(dim, num_heads)
            n_mod = 9
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, n_mod * dim))
        for p in self.adaLN[-1].parameters():  # weight and bias
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor, c: torch.Tensor, protos: torch.Tensor | None) -> torch.Tensor:
        mods = self.adaLN(c).chunk(9 if self.cross_attention else 6, dim=-1)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods[:6]
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        if self.cross_attention and protos is not None:
            shift_c, scale_c, gate_c = mods[6:]
            # Eq. (16): tokens (queries) attend to the noised prototypes (keys/values)
            x = x + gate_c.unsqueeze(1) * self.cross(modulate(self.norm_x(x), shift_c, scale_c), self.norm_p(protos))
        x = x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class PrototypeDiT(PrototypeDenoiser):
    """eps_theta(x_t, P_t, t) of Eq. (18): tokens (B,N,C) + prototypes (B,P,C) + t (B,) -> noise (B,N,C)."""

    pos_embed: torch.Tensor  # buffer (register_buffer), declared for the type checker
    supports_token_subsets = True

    def build(self, size: DenoiserSize) -> None:
        in_dim, hidden_dim = size.in_dim, size.hidden_dim
        self.in_proj = nn.Linear(in_dim, hidden_dim)
        self.init_prototype_embedding(in_dim, hidden_dim, size.num_prototype_types)  # proto_proj, proto_type
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(hidden_dim, *self.grid_size).unsqueeze(0), persistent=False
        )
        self.t_embed = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim))
        self.blocks = nn.ModuleList(
            PrototypeDiTBlock(hidden_dim, size.num_heads, size.mlp_ratio, size.cross_attention)
            for _ in range(size.depth)
        )
        self.final_norm = nn.LayerNorm(hidden_dim, elementwise_affine=False, eps=1e-6)
        self.final_adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden_dim, 2 * hidden_dim))
        self.out_proj = nn.Linear(hidden_dim, in_dim)
        for m in (self.final_adaLN[-1], self.out_proj):
            for p in m.parameters():  # weight and bias
                nn.init.zeros_(p)

    def denoise(
        self, x_t: torch.Tensor, t: torch.Tensor, protos: torch.Tensor | None, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``keep`` (B, K): ``x_t`` holds these grid positions only, each with its own position embedding."""
        if keep is None:
            if x_t.shape[1] != self.pos_embed.shape[1]:
                raise ValueError(f"DiT built for {self.pos_embed.shape[1]} tokens {self.grid_size}, got {x_t.shape[1]}")
            pos = self.pos_embed
        else:
            pos = self.pos_embed[0][keep]  # (B, K, D)
        h = self.in_proj(x_t) + pos
        c = self.t_embed(timestep_embedding(t, self.hidden_dim))
        for block in self.blocks:
            h = block(h, c, protos)
        shift, scale = self.final_adaLN(c).chunk(2, dim=-1)
        return self.out_proj(modulate(self.final_norm(h), shift, scale))
