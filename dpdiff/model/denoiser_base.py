"""What every denoiser eps_theta(x_t, P_t, t) of Eq. (18) shares (DiT, U-Net, U-ViT; paper Table 9).

:class:`PrototypeDenoiser` holds the one constructor signature (so :func:`~dpdiff.model.denoisers.build_denoiser`
builds any variant alike) and the one forward signature ``(x_t (B,N,C), t (B,), protos (B,P,C) | None,
proto_types (P,) | None) -> eps (B,N,C)``. A variant creates its layers in :meth:`~PrototypeDenoiser.build`
(called by the constructor, so the layers are created in the variant's own order and a seed gives the same
initial weights as before this base class existed) and maps the embedded prototypes in
:meth:`~PrototypeDenoiser.denoise`; the prototype input layers come from
:class:`~dpdiff.model.prototype_embedding.PrototypeEmbedding`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dpdiff.model.prototype_embedding import PrototypeEmbedding

__all__ = ["DenoiserSize", "PrototypeDenoiser"]


@dataclass(frozen=True)
class DenoiserSize:
    """The sizes a denoiser is built with (from the ``model`` section of the config)."""

    in_dim: int  # token channels C
    hidden_dim: int  # width D
    depth: int
    num_heads: int
    mlp_ratio: float
    cross_attention: bool  # tokens attend to the prototypes (Eq. 16-17)
    num_prototype_types: int  # local and global


class PrototypeDenoiser(PrototypeEmbedding, nn.Module):
    """Base of the denoisers: stores ``grid_size`` = (h, w) and ``hidden_dim``, then calls :meth:`build`."""

    def __init__(
        self,
        in_dim: int,
        grid_size: tuple[int, int],
        hidden_dim: int = 256,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        cross_attention: bool = True,
        num_prototype_types: int = 2,
    ):
        super().__init__()
        h, w = grid_size
        self.grid_size = (h, w)
        self.hidden_dim = hidden_dim
        self.build(DenoiserSize(in_dim, hidden_dim, depth, num_heads, mlp_ratio, cross_attention, num_prototype_types))

    #: Whether :meth:`denoise` takes ``keep`` (a subset of the token positions; masked training).
    supports_token_subsets = False

    def build(self, size: DenoiserSize) -> None:  # pragma: no cover - abstract
        """Create the layers (each variant in its own order)."""
        raise NotImplementedError

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        protos: torch.Tensor | None = None,
        proto_types: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``keep`` (B, K) long: ``x_t`` holds only these token positions of the grid (masked training)."""
        embedded = self.embed_prototypes(protos, proto_types)
        if keep is None:
            return self.denoise(x_t, t, embedded)
        if not self.supports_token_subsets:
            raise ValueError(f"{type(self).__name__} cannot train on token subsets: set train.token_keep=1")
        return self.denoise(x_t, t, embedded, keep=keep)  # type: ignore[call-arg]  # DiT's own signature

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, protos: torch.Tensor | None) -> torch.Tensor:
        """eps (B,N,C) from tokens x_t (B,N,C), timesteps t (B,) and the embedded prototypes (B,P,D) or None
        (no prototypes: the cross-attention is skipped)."""
        raise NotImplementedError  # pragma: no cover - abstract
