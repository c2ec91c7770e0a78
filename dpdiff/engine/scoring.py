"""From token scores to pixel maps and image scores (paper Eq. 23-24)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, device=None) -> torch.Tensor:
    radius = max(1, int(math.ceil(4.0 * sigma)))  # truncate at 4 sigma, as scipy.ndimage does
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (B, H, W) maps with reflect padding, on the maps' device."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma, maps.device)
    r = k.numel() // 2
    x = maps.unsqueeze(1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return x.squeeze(1)


def upsample_maps(token_maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Eq. (23) S -> S_up: bilinear upsampling of (B, h, w) token maps to the image resolution."""
    if isinstance(size, int):
        size = (size, size)
    return F.interpolate(token_maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def image_scores(pixel_maps: torch.Tensor, pool_size: int) -> torch.Tensor:
    """Eq. (24): s_img = max(AvgPool(S_up)), stride 1."""
    if pool_size > 1:
        pooled = F.avg_pool2d(pixel_maps.unsqueeze(1), kernel_size=pool_size, stride=1)
    else:
        pooled = pixel_maps.unsqueeze(1)
    return pooled.flatten(1).max(dim=1).values


def postprocess(token_maps: torch.Tensor, image_size: int, smoothing_sigma: float, pool_size: int):
    """Token maps (B,h,w) -> (pixel maps (B,S,S), image scores (B,))."""
    maps = gaussian_blur(upsample_maps(token_maps.float(), image_size), smoothing_sigma)
    return maps, image_scores(maps, pool_size)
