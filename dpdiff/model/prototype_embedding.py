"""The prototype input of every denoiser (DiT, U-Net, U-ViT): projection to the hidden width plus a learned
local/global type embedding.

The noised prototypes P_t (B, P, C) that the tokens attend to in Eq. (16)-(17) are mapped to the denoiser's
width D and told apart by kind:

    P' = P_t W_p + b_p + E[type],    type = 0 for the M local prototypes, 1 for the K global ones

(``proto_proj`` = W_p, b_p; ``proto_type`` = E, one learned D-vector per kind; a choice, the paper does not
say how the two kinds are marked).

:class:`PrototypeEmbedding` is a mixin: the two layers stay attributes of the denoiser itself, so the state
dict keys of every checkpoint are unchanged (``proto_proj.weight``, ``proto_proj.bias``, ``proto_type.weight``),
and :meth:`~PrototypeEmbedding.init_prototype_embedding` is called at the point of the constructor where
the layers were always created, so a seed gives the same initial weights as before.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PrototypeEmbedding"]


class PrototypeEmbedding:
    """Mixin for ``nn.Module`` denoisers: ``proto_proj`` (Linear C -> D) and ``proto_type`` (Embedding of
    the prototype kinds, D wide), and :meth:`embed_prototypes` applying them."""

    proto_proj: nn.Linear
    proto_type: nn.Embedding

    def init_prototype_embedding(self, in_dim: int, hidden_dim: int, num_prototype_types: int = 2) -> None:
        """Create the two layers (in this order: projection, then type embedding)."""
        self.proto_proj = nn.Linear(in_dim, hidden_dim)
        # learned embedding telling local (0) from global (1) prototypes apart
        self.proto_type = nn.Embedding(num_prototype_types, hidden_dim)

    def embed_prototypes(self, protos: torch.Tensor | None, proto_types: torch.Tensor | None) -> torch.Tensor | None:
        """``protos`` (B, P, C) -> (B, P, D): projection plus the type embedding of ``proto_types`` (P,) when given.

        ``None`` when there are no prototypes (``protos`` is None or has P = 0): the denoiser then skips its
        cross-attention.
        """
        if protos is None or protos.shape[1] == 0:
            return None
        p = self.proto_proj(protos)
        if proto_types is not None:
            p = p + self.proto_type(proto_types).unsqueeze(0)
        return p
