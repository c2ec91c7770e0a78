"""DINOv2 ViT patch features, eq. (8)-(9) of the paper.

Architecture
    ``dinov2_vit{s,b,l}14`` -> timm ``vit_{small,base,large}_patch14_dinov2`` and the
    ``_reg`` variants (4 register tokens) -> ``vit_*_patch14_reg4_dinov2``, built with
    ``pretrained=False`` and ``img_size=image_size`` (must be a multiple of the patch size
    14; the grid is ``image_size // 14``, e.g. 32x32 at the paper's 448 px).

Features (eq. 8-9)
    The outputs of the selected transformer blocks (0-based indices, *before* the final
    LayerNorm) are averaged (cross-layer mean pooling, eq. 9); class and register tokens
    are dropped and the patch tokens reshaped to ``(B, C, h, w)``.  Defaults: blocks 6..11
    for ViT-S and ViT-B (12 blocks; the paper's setting, Sec. 5.1.3), and the same relative
    depth, blocks 12..23, for ViT-L (24 blocks).  Blocks after the deepest selected one
    (and the final norm/head) are removed, so they cost nothing.  If ``feature_stride`` is
    given and differs from 14 the averaged map is resized to ``image_size // feature_stride``
    (adaptive average pooling down / bilinear up).

Weights (required - nothing is downloaded, never random-initialised)
    ``weights=PATH`` accepts
      (a) official facebookresearch checkpoints (``dinov2_vitb14[_reg4]_pretrain.pth``:
          ``cls_token``, ``pos_embed`` ``(1, 1+37*37, C)``, ``register_tokens``,
          ``mask_token``, ``blocks.N.ls1.gamma`` ...),
      (b) timm-layout ``.safetensors``/``.bin``/``.pth`` (``reg_token``, pos embed without
          class position for the reg4 models), e.g. the HF-hub ``timm/...`` files,
    optionally wrapped in ``{"model": ...}``, ``{"state_dict": ...}`` or
    ``{"teacher": {"backbone.<...>": ...}}``.  Conversion is timm's
    ``vision_transformer.checkpoint_filter_fn``: for the official layout it drops
    ``mask_token``, renames ``register_tokens`` -> ``reg_token`` and, for register models
    (timm ``no_embed_class=True``), folds the class position embedding into ``cls_token``;
    it then resamples ``pos_embed`` bicubically to the model grid (518 px -> 37x37 ->
    ``image_size // 14``).  As in the official hub models, antialiasing is used for the
    register models and not for the plain ones (the official 0.1 interpolation offset of the
    plain models is not reproduced, a negligible difference).  Loading is strict: missing
    keys, unexpected keys (other than a classifier ``head``) or shape mismatches (a checkpoint
    for another model size) raise :class:`~dpdiff.backbones.base.CheckpointError` naming
    the file.

Preprocessing
    ImageNet mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from dpdiff.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FeatureExtractor,
    check_and_load,
    check_layers,
    check_stride_multiple,
    read_checkpoint,
    resize_map,
)
from dpdiff.backbones.registry import register_variants
from dpdiff.utils.errors import CheckpointError, ConfigError
from dpdiff.utils.sizes import as_hw, hw_json

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

PATCH = 14
# dpdiff name -> (timm name, default block indices)
DINOV2_MODELS: dict[str, tuple[str, list]] = {
    "dinov2_vits14": ("vit_small_patch14_dinov2", list(range(6, 12))),
    "dinov2_vitb14": ("vit_base_patch14_dinov2", list(range(6, 12))),
    "dinov2_vitl14": ("vit_large_patch14_dinov2", list(range(12, 24))),
    "dinov2_vits14_reg": ("vit_small_patch14_reg4_dinov2", list(range(6, 12))),
    "dinov2_vitb14_reg": ("vit_base_patch14_reg4_dinov2", list(range(6, 12))),
    "dinov2_vitl14_reg": ("vit_large_patch14_reg4_dinov2", list(range(12, 24))),
}
#: embedding width of ViT-S/B/L
VIT_DIMS = {"s": 384, "b": 768, "l": 1024}
NO_WEIGHTS_MSG = (
    "DINOv2 weights must be given with --weights PATH (official .pth or timm/HF .safetensors); nothing is downloaded"
)


def _default_layers(depth: int) -> list:
    """Paper default 6..11 of 12 blocks, i.e. the second half of the network."""
    return list(range(depth // 2, depth))


def _prepare_state_dict(
    sd: dict[str, Tensor], model: VisionTransformer, path: str, antialias: bool
) -> dict[str, Tensor]:
    from timm.models.vision_transformer import checkpoint_filter_fn

    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in sd):
        raise CheckpointError(
            f"{path}: HuggingFace-transformers Dinov2Model layout is not supported; use the official "
            f".pth or a timm-layout file (e.g. HF hub timm/vit_base_patch14_dinov2.lvd142m)"
        )
    sd = dict(sd)  # checkpoint_filter_fn pops from its input
    if "register_tokens" in sd and "mask_token" not in sd:
        sd["mask_token"] = torch.zeros(1, sd["register_tokens"].shape[-1])  # triggers conversion
    try:
        sd = checkpoint_filter_fn(sd, model, interpolation="bicubic", antialias=antialias)
    except Exception as e:
        raise CheckpointError(
            f"{path}: could not convert checkpoint to {type(model).__name__} "
            f"({type(e).__name__}: {e}); checkpoint for a different DINOv2 variant?"
        ) from e
    return dict(sd)


class DinoV2Extractor(FeatureExtractor):
    """Frozen DINOv2 patch-token extractor with cross-layer mean pooling (eq. 9)."""

    def __init__(
        self,
        model: VisionTransformer,
        layers: Sequence[int],
        weights: str,
        name: str,
        image_size: int | Sequence[int],
        feature_stride: int | None = None,
    ):
        super().__init__()
        depth = len(model.blocks)
        self.layers = check_layers(layers, depth, name)
        hw = as_hw(image_size, "backbone.image_size")
        self.name, self.image_size = name, hw_json(hw)
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.feature_stride = self.patch_size if feature_stride is None else int(feature_stride)
        if self.feature_stride < 1 or min(hw) // self.feature_stride < 1:
            raise ConfigError(f"feature_stride={feature_stride} invalid for image_size={image_size}")
        path = str(weights)
        sd = read_checkpoint(path)
        sd = _prepare_state_dict(sd, model, path, antialias=model.reg_token is not None)
        on_meta = any(p.is_meta for p in model.parameters())
        if on_meta:
            own = model.state_dict()
            # same checks as check_and_load, then materialise by assignment
            check_and_load(_ShapeOnly(own), sd, path, ignore_unexpected=("head.",))
            model.load_state_dict({k: sd[k].to(own[k].dtype) for k in own}, strict=True, assign=True)
            left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
            if left:  # pragma: no cover - defensive
                raise CheckpointError(f"{path}: tensors not filled by the checkpoint: {left[:5]}")
        else:
            check_and_load(model, sd, path, ignore_unexpected=("head.",))
        self.weights_path = path
        model.prune_intermediate_layers(indices=self.layers, prune_norm=True, prune_head=True)
        self.vit = model
        self.out_channels = int(model.embed_dim)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self._freeze()

    def grid_size(self, image_size: int | Sequence[int]) -> tuple[int, int]:
        h, w = as_hw(image_size)
        return (h // self.feature_stride, w // self.feature_stride)

    def forward(self, images: Tensor) -> Tensor:
        # intermediates_only=True: timm returns the list of block outputs alone (no final features)
        feats = cast(
            list[Tensor],
            self.vit.forward_intermediates(
                images, indices=self.layers, norm=False, stop_early=True, output_fmt="NCHW", intermediates_only=True
            ),
        )
        x = torch.stack(feats, 0).float().mean(0)
        if self.feature_stride != self.patch_size:
            x = resize_map(x, (images.shape[-2] // self.feature_stride, images.shape[-1] // self.feature_stride))
        return x.contiguous()


class _ShapeOnly(nn.Module):
    """Adapter so :func:`check_and_load` can validate against a (meta) state dict."""

    def __init__(self, own: dict[str, Tensor]):
        super().__init__()
        self._own = own

    def state_dict(self, *a, **k):
        return self._own

    def load_state_dict(self, *a, **k):
        return None


def create_vit(arch: str | dict, image_size: int | Sequence[int]) -> VisionTransformer:
    """The timm ``VisionTransformer`` of ``arch`` (a timm model name, or ``VisionTransformer`` kwargs) for
    ``image_size`` inputs, without a classifier head, as initialised by timm (no weights are loaded here)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    h, w = as_hw(image_size, "backbone.image_size")
    # timm takes (H, W) for a non-square input; one int keeps the square models exactly as they were built
    kw: dict[str, Any] = dict(img_size=h if h == w else (h, w), num_classes=0)
    model = (
        timm.create_model(arch, pretrained=False, **kw)
        if isinstance(arch, str)
        else VisionTransformer(**{**arch, **kw})
    )
    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"timm builds a {type(model).__name__} for {arch!r}, not a VisionTransformer (DINOv2)")
    return model


def build_vit(
    arch: str | dict,
    layers: Sequence[int] | None = None,
    weights: str | None = None,
    image_size: int | Sequence[int] = 448,
    feature_stride: int | None = None,
    name: str | None = None,
) -> DinoV2Extractor:
    """Build a DINOv2-style extractor from a timm model name or ``VisionTransformer`` kwargs.

    ``arch`` as a dict (e.g. ``dict(patch_size=14, embed_dim=64, depth=4, num_heads=2,
    init_values=1e-5, reg_tokens=4, no_embed_class=True)``) allows small test models;
    ``img_size`` and ``num_classes`` are set here.  ``layers=None`` -> second half of the
    blocks (6..11 for 12 blocks).
    """
    name = name or (arch if isinstance(arch, str) else "custom_vit")
    if weights is None:
        raise ConfigError(NO_WEIGHTS_MSG)
    patch = PATCH if isinstance(arch, str) else int(arch.get("patch_size", 16))
    check_stride_multiple(image_size, patch, name, square_too=True)
    if not os.path.isfile(os.fspath(weights)):
        raise FileNotFoundError(f"weights file not found: {weights}")
    # build on the meta device (no slow random init), then materialise from the checkpoint
    with torch.device("meta"):
        model = create_vit(arch, image_size)
    if layers is None:
        layers = _default_layers(len(model.blocks))
    return DinoV2Extractor(model, layers, weights, name, image_size, feature_stride)


# ----------------------------------------------------------------------------------------
# registration (dpdiff.backbones.registry)
# ----------------------------------------------------------------------------------------
def _dinov2_info(name: str) -> dict:
    """The registry entry (:data:`dpdiff.backbones.registry.BACKBONES`) of the DINOv2 model ``name``."""
    timm_name, layers = DINOV2_MODELS[name]
    size = name[len("dinov2_vit")]
    return dict(
        family="dinov2",
        timm_name=timm_name,
        default_layers=list(layers),
        layer_range=(0, 23 if size == "l" else 11),
        default_feature_stride=14,
        channels=VIT_DIMS[size],
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights_required=True,
        description=(
            f"{name}: DINOv2 ViT-{size.upper()}/14{' + 4 registers' if name.endswith('_reg') else ''}, "
            f"mean of blocks {layers[0]}..{layers[-1]} (eq. 9); needs --weights PATH; "
            f"image_size divisible by 14"
        ),
    )


def _build_dinov2(
    name: str,
    layers: Sequence[int] | None,
    weights: str | None,
    image_size: int | Sequence[int],
    feature_stride: int | None,
    local_aggregation: bool = True,  # CNN only: ignored here
) -> DinoV2Extractor:
    timm_name, default_layers = DINOV2_MODELS[name]
    return build_vit(
        timm_name,
        layers=list(default_layers) if layers is None else layers,
        weights=weights,
        image_size=image_size,
        feature_stride=feature_stride,
        name=name,
    )


register_variants(DINOV2_MODELS, _dinov2_info, _build_dinov2)
