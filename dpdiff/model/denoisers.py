"""The denoiser eps_theta(x_t, P_t, t) of Eq. (18), chosen by ``model.denoiser`` (paper Table 9).

Every variant has the forward ``(x_t (B,N,C), t (B,), protos (B,P,C) | None, proto_types (P,) | None)
-> eps (B,N,C)``, timestep conditioning, and prototype-aware cross-attention from the tokens to the noised
prototypes (Eq. 16-17) unless ``model.prototype_cross_attention`` is false:

* ``dit``  (default, the paper): :class:`~dpdiff.model.dit.PrototypeDiT`, adaLN-Zero DiT blocks.
* ``unet``: :class:`~dpdiff.model.unet.PrototypeUNet`, a conv U-Net on the token grid.
* ``uvit``: :class:`~dpdiff.model.uvit.PrototypeUViT`, timestep as a token + long skip connections.
"""

from __future__ import annotations

from dpdiff.choices import DENOISER_NAMES, check_registry
from dpdiff.config import ModelConfig
from dpdiff.model.denoiser_base import PrototypeDenoiser
from dpdiff.model.dit import PrototypeDiT
from dpdiff.model.unet import PrototypeUNet
from dpdiff.model.uvit import PrototypeUViT

#: ``model.denoiser`` name -> network; the names are :data:`dpdiff.choices.DENOISER_NAMES` (checked on import).
DENOISERS: dict[str, type[PrototypeDenoiser]] = {"dit": PrototypeDiT, "unet": PrototypeUNet, "uvit": PrototypeUViT}
check_registry("model/denoisers.py DENOISERS", DENOISERS, DENOISER_NAMES)


def build_denoiser(cfg: ModelConfig, in_dim: int, grid: tuple[int, int]) -> PrototypeDenoiser:
    """The ``cfg.denoiser`` network for ``in_dim``-channel tokens on a ``grid`` = (h, w) token grid."""
    name = str(cfg.denoiser).lower()
    if name not in DENOISERS:
        raise ValueError(f"model.denoiser must be one of {sorted(DENOISERS)}, got {cfg.denoiser!r}")
    return DENOISERS[name](
        in_dim,
        grid,
        cfg.hidden_dim,
        cfg.depth,
        cfg.num_heads,
        cfg.mlp_ratio,
        cross_attention=cfg.prototype_cross_attention,
    )


__all__ = ["DENOISERS", "build_denoiser"]
