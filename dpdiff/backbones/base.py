"""Common pieces of the frozen backbones: the :class:`FeatureExtractor` base class,
checkpoint reading (``.pth``/``.pt``/``.bin``/``.safetensors``) and wrapper unwrapping,
and the map-resizing rule shared by the multi-scale extractors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpdiff.utils.errors import CheckpointError, ConfigError
from dpdiff.utils.sizes import as_hw

__all__ = [
    "CheckpointError",
    "FeatureExtractor",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "HALF_MEAN",
    "HALF_STD",
    "unwrap_state_dict",
    "read_checkpoint",
    "check_and_load",
    "resize_map",
    "check_layers",
    "check_stride_multiple",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)


class FeatureExtractor(nn.Module):
    """Frozen image -> patch-feature-map extractor.

    ``forward(images)`` takes ``(B, 3, H, W)`` images that are *already normalised* with
    :attr:`mean` / :attr:`std` and returns a float32 ``(B, out_channels, h, w)`` map with
    ``(h, w) == grid_size((H, W))``.

    All parameters have ``requires_grad=False`` and the module is pinned to eval mode:
    :meth:`train` ignores its argument, so calling ``.train()`` on a parent model keeps
    BatchNorm statistics / dropout of the backbone frozen.  Gradients are never needed,
    so callers may wrap the call in ``torch.no_grad()``/``torch.inference_mode()``.
    """

    out_channels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str
    layers: list[int]

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:  # noqa: D401 - always eval
        """Ignore ``mode``: the backbone always stays in eval mode."""
        return super().train(False)

    def set_intensity_normalization(self, on: bool) -> FeatureExtractor:
        """Beyond the paper (``backbone.normalize_intensity``): standardise each input image to zero mean and
        unit standard deviation over all its pixels and channels before the backbone (one gain and offset per
        image, so colour ratios stay), which removes exposure and gain differences between units, cameras or
        lighting. Done in ``forward`` (a pre-hook), so training, testing, serving and the ONNX graph share it."""
        hook = self.__dict__.get("_intensity_hook")
        if on and hook is None:
            self.__dict__["_intensity_hook"] = self.register_forward_pre_hook(_standardize_intensity)
        elif not on and hook is not None:
            hook.remove()
            self.__dict__["_intensity_hook"] = None
        return self

    def grid_size(self, image_size: int | Sequence[int]) -> tuple[int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"name={getattr(self, 'name', '?')}, layers={getattr(self, 'layers', '?')}, "
            f"out_channels={getattr(self, 'out_channels', '?')}"
        )


def _standardize_intensity(_module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of :meth:`FeatureExtractor.set_intensity_normalization`: (B, 3, H, W) -> per image
    ``(x - mean) / (std + 1e-6)`` over all its pixels and channels."""
    x = args[0]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.var(dim=(1, 2, 3), keepdim=True, unbiased=False).sqrt()
    return ((x - mean) / (std + 1e-6), *args[1:])


# ----------------------------------------------------------------------------------------
# checkpoint reading
# ----------------------------------------------------------------------------------------
_WRAPPER_KEYS = (
    "teacher",
    "model_ema",
    "state_dict_ema",
    "model",
    "state_dict",
    "model_state_dict",
    "module",
    "net",
    "params",
)
_STRIP_PREFIXES = ("module.", "_orig_mod.")


def _is_tensor_dict(d: Mapping) -> bool:
    return len(d) > 0 and all(isinstance(v, Tensor) for v in d.values())


def unwrap_state_dict(obj, path: str = "<checkpoint>") -> dict[str, Tensor]:
    """Return the plain ``{name: tensor}`` state dict inside a loaded checkpoint.

    Handles the usual wrappers ``{"model": sd}``, ``{"state_dict": sd}``,
    ``{"teacher": {"backbone.<...>": ...}}`` (DINOv2 training checkpoints), ``module.``
    (DataParallel / DDP) and ``_orig_mod.`` (torch.compile) prefixes.  When some keys
    start with ``backbone.`` only those are kept (with the prefix removed), so DINO
    heads stored next to the backbone are dropped.
    """
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if _is_tensor_dict(obj):
            break
        for k in _WRAPPER_KEYS:
            if k in obj and isinstance(obj[k], (Mapping, nn.Module)):
                obj = obj[k].state_dict() if isinstance(obj[k], nn.Module) else obj[k]
                break
        else:
            # a dict mixing tensors with metadata (e.g. {"epoch": 3, ...tensors})
            tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
            if tensors:
                obj = tensors
            break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: no state dict (mapping of tensors) found in checkpoint")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not sd:
        raise CheckpointError(f"{path}: checkpoint contains no tensors")
    changed = True
    while changed:
        changed = False
        for pre in _STRIP_PREFIXES:
            if all(k.startswith(pre) for k in sd):
                sd = {k[len(pre) :]: v for k, v in sd.items()}
                changed = True
    if any(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    return sd


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a ``.safetensors`` or torch (``.pth``/``.pt``/``.bin``/``.ckpt``) file on CPU.

    Raises ``FileNotFoundError`` naming the path when it does not exist and
    :class:`CheckpointError` naming the path when the file is truncated/corrupt.
    Torch files are read with ``weights_only=True`` (no arbitrary pickles executed).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    is_st = path.endswith(".safetensors")
    if not is_st:  # sniff: safetensors starts with an 8-byte little-endian header length + '{'
        with open(path, "rb") as fh:
            head = fh.read(9)
        is_st = len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")
    try:
        if is_st:
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, bad header, ...
        raise CheckpointError(
            f"could not read weights file {path} ({type(e).__name__}: {e}); "
            f"is it truncated or not a PyTorch/safetensors checkpoint?"
        ) from e
    return unwrap_state_dict(obj, path)


def check_and_load(module: nn.Module, sd: dict[str, Tensor], path: str, ignore_unexpected: Iterable[str] = ()) -> None:
    """Strictly load ``sd`` into ``module`` with readable errors.

    Every key of ``module.state_dict()`` must be present with the right shape.  Keys of
    ``sd`` not in the module are an error unless they start with one of
    ``ignore_unexpected`` (e.g. a classifier head that the extractor does not use).
    """
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise CheckpointError(
            f"{path}: {len(missing)} parameter(s) of the model are missing from the checkpoint, "
            f"e.g. {missing[:5]} (wrong architecture or checkpoint layout?)"
        )
    ign = tuple(ignore_unexpected)
    unexpected = [k for k in sd if k not in own and not (ign and k.startswith(ign))]
    if unexpected:
        raise CheckpointError(
            f"{path}: {len(unexpected)} unexpected key(s) in the checkpoint, e.g. {unexpected[:5]} "
            f"(wrong architecture variant?)"
        )
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{path}: shape mismatch for '{k}': checkpoint {tuple(sd[k].shape)} vs model "
                f"{tuple(v.shape)} (checkpoint is for a different model size?)"
            )
    module.load_state_dict({k: sd[k] for k in own}, strict=True)


# ----------------------------------------------------------------------------------------
# map resizing
# ----------------------------------------------------------------------------------------
def resize_map(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bring a ``(B, C, h, w)`` map to ``size``: adaptive average pooling when shrinking
    (both sides), bilinear interpolation (``align_corners=False``) otherwise."""
    h, w = int(size[0]), int(size[1])
    if x.shape[-2] == h and x.shape[-1] == w:
        return x
    if x.shape[-2] >= h and x.shape[-1] >= w:
        return F.adaptive_avg_pool2d(x, (h, w))
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def check_stride_multiple(image_size: int | Sequence[int], stride: int, what: str, square_too: bool = False) -> None:
    """ConfigError naming ``backbone.image_size`` unless each side of an ``[height, width]`` size (and of a square
    one with ``square_too``: a ViT's patch grid) is a multiple of the feature ``stride``: the token grid is then
    exactly H/stride x W/stride and a token covers the same pixels on both axes. A square int keeps the CNNs'
    earlier behaviour (grid = side // stride)."""
    if isinstance(image_size, int) and not square_too:
        return
    hw = as_hw(image_size, "backbone.image_size")
    if any(side % stride for side in hw):
        nearest = [max(stride, round(side / stride) * stride) for side in hw]
        suggestion = nearest[0] if isinstance(image_size, int) else nearest
        raise ConfigError(
            f"{what}: backbone.image_size={image_size!r} must be divisible by the feature stride {stride} "
            f"(the patch size of a ViT) on each side; e.g. {suggestion}"
        )


def check_layers(layers: Sequence[int], n: int, what: str) -> list[int]:
    layers = [int(i) for i in layers]
    if not layers:
        raise ConfigError(f"{what}: at least one layer must be selected (backbone.layers)")
    bad = [i for i in layers if i < 0 or i >= n]
    if bad:
        raise ConfigError(f"{what}: layer indices {bad} out of range 0..{n - 1} (backbone.layers)")
    if len(set(layers)) != len(layers):
        raise ConfigError(f"{what}: duplicate layer indices in {layers} (backbone.layers)")
    return sorted(layers)
