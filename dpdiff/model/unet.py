"""Prototype-aware U-Net denoiser (paper Table 9, "U-Net" row; U-Net of Ronneberger et al. [42] in its
diffusion form, DDPM/ADM [43]).

A small convolutional U-Net on the token grid (h x w) with the same interface as
:class:`~dpdiff.model.dit.PrototypeDiT`: tokens (B, N, C) + timesteps (B,) + noised prototypes (B, P, C)
-> predicted noise (B, N, C) of Eq. (18).

Layout (``depth`` = L, ``levels`` = L // 2, every stage ``hidden_dim`` = D channels wide)::

    1x1 conv C -> D
    encoder  level i = 0 .. levels-1:  [ResBlock + prototype cross-attention] -> skip_i -> 2x2 average pool
    middle   (lowest resolution):       [ResBlock + prototype cross-attention]
    decoder  level i = levels-1 .. 0:  nearest upsample to skip_i's size, concat skip_i, 1x1 conv 2D -> D,
                                        [ResBlock + prototype cross-attention]
    GroupNorm, SiLU, 1x1 conv D -> C (zero-initialised)

* Timestep conditioning: the sinusoidal embedding of t through an MLP drives a scale/shift of each
  ResBlock's second normalisation (ADM's "scale-shift norm"), the U-Net counterpart of the DiT's adaLN.
* Prototype-aware attention (Eq. 16-17): after every ResBlock, each grid position (query) attends to the
  noised prototypes P_t (keys/values): x' = x + CrossAttn(x, P_t, P_t), at every resolution.
* Choices (the paper gives no U-Net details): constant width D at every resolution (no channel doubling)
  and parameter-free down/up-sampling, so that the parameter count stays close to a DiT of the same
  ``hidden_dim``/``depth`` (2L' + 1 units of ~24 D^2 parameters, L' = L // 2, vs 25 D^2 per DiT block; see
  docs/method.md for counts); no self-attention (the 3x3 convolutions over 1 + L // 2 resolutions mix space).
  Residual branches and the cross-attention output projections start at zero, so every unit starts as the
  identity (as adaLN-Zero does for the DiT). Odd grid sides are handled (ceil-mode pooling, upsampling to the
  skip's exact size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpdiff.model.denoiser_base import DenoiserSize, PrototypeDenoiser
from dpdiff.model.dit import Attention, timestep_embedding
from dpdiff.utils.errors import ConfigError


def _groups(channels: int) -> int:
    """GroupNorm groups: the largest of 32, 16, ... 1 that divides ``channels``."""
    for g in (32, 16, 8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3, timestep scale/shift, GroupNorm-SiLU-conv3x3, plus the input (residual)."""

    def __init__(self, channels: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(channels), channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * channels))
        self.norm2 = nn.GroupNorm(_groups(channels), channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        for p in self.conv2.parameters():  # weight and bias
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(c)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class GridCrossAttention(nn.Module):
    """Eq. (16)-(17) on a feature map (B, D, h, w): every position attends to the prototypes (B, P, D)."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.norm_x = nn.LayerNorm(channels, eps=1e-6)
        self.norm_p = nn.LayerNorm(channels, eps=1e-6)
        self.cross = Attention(channels, num_heads)
        nn.init.zeros_(self.cross.proj.weight)
        nn.init.zeros_(self.cross.proj.bias)

    def forward(self, x: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        b, d, h, w = x.shape
        seq = x.flatten(2).transpose(1, 2)
        seq = seq + self.cross(self.norm_x(seq), self.norm_p(protos))  # Eq. (16)
        return seq.transpose(1, 2).reshape(b, d, h, w)


class UNetUnit(nn.Module):
    """ResBlock (timestep-conditioned) followed by prototype cross-attention (when enabled)."""

    def __init__(self, channels: int, num_heads: int, cross_attention: bool):
        super().__init__()
        self.res = ResBlock(channels, channels)
        self.cross = GridCrossAttention(channels, num_heads) if cross_attention else None

    def forward(self, x: torch.Tensor, c: torch.Tensor, protos: torch.Tensor | None) -> torch.Tensor:
        x = self.res(x, c)
        if self.cross is not None and protos is not None:
            x = self.cross(x, protos)
        return x


def _downsample(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling, stride 2; ceil mode keeps the last row/column of odd sides (a side of 1 stays 1)."""
    kh, kw = (2 if x.shape[-2] > 1 else 1), (2 if x.shape[-1] > 1 else 1)
    return F.avg_pool2d(x, (kh, kw), stride=(kh, kw), ceil_mode=True)


class PrototypeUNet(PrototypeDenoiser):
    """eps_theta(x_t, P_t, t) of Eq. (18) as a U-Net on the token grid; same forward as PrototypeDiT."""

    def build(self, size: DenoiserSize) -> None:
        # size.mlp_ratio is not used: the U-Net has no MLP sub-layers
        if size.depth < 1:
            raise ConfigError(f"U-Net depth must be >= 1, got {size.depth} (model.depth)")
        in_dim, hidden_dim = size.in_dim, size.hidden_dim
        num_heads, cross_attention = size.num_heads, size.cross_attention
        self.levels = size.depth // 2
        self.in_conv = nn.Conv2d(in_dim, hidden_dim, 1)
        self.init_prototype_embedding(in_dim, hidden_dim, size.num_prototype_types)  # proto_proj, proto_type
        self.t_embed = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim))
        self.enc = nn.ModuleList(UNetUnit(hidden_dim, num_heads, cross_attention) for _ in range(self.levels))
        self.mid = UNetUnit(hidden_dim, num_heads, cross_attention)
        self.merge = nn.ModuleList(nn.Conv2d(2 * hidden_dim, hidden_dim, 1) for _ in range(self.levels))
        self.dec = nn.ModuleList(UNetUnit(hidden_dim, num_heads, cross_attention) for _ in range(self.levels))
        self.out_norm = nn.GroupNorm(_groups(hidden_dim), hidden_dim)
        self.out_conv = nn.Conv2d(hidden_dim, in_dim, 1)
        for p in self.out_conv.parameters():  # weight and bias
            nn.init.zeros_(p)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, protos: torch.Tensor | None) -> torch.Tensor:
        b, n, c_in = x_t.shape
        h, w = self.grid_size
        if n != h * w:
            raise ValueError(f"U-Net built for {h * w} tokens {self.grid_size}, got {n}")
        x = self.in_conv(x_t.transpose(1, 2).reshape(b, c_in, h, w))
        c = self.t_embed(timestep_embedding(t, self.hidden_dim))
        skips = []
        for unit in self.enc:
            x = unit(x, c, protos)
            skips.append(x)
            x = _downsample(x)
        x = self.mid(x, c, protos)
        for i in reversed(range(self.levels)):
            skip = skips[i]
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = self.dec[i](self.merge[i](torch.cat([x, skip], dim=1)), c, protos)
        out = self.out_conv(F.silu(self.out_norm(x)))
        return out.flatten(2).transpose(1, 2)
