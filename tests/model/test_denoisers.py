"""The denoiser variants of Table 9 (DiT, U-Net, U-ViT), the factory, prototype-only scoring and old checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from dpdiff.config import Config, ModelConfig
from dpdiff.model.denoisers import DENOISERS, build_denoiser
from dpdiff.model.dit import PrototypeDiT
from dpdiff.model.dpdiff_ad import DPDiffAD
from dpdiff.model.prototypes import prototype_similarity_maps
from dpdiff.model.unet import PrototypeUNet
from dpdiff.model.uvit import PrototypeUViT
from dpdiff.scoring.noise import IndependentNoise
from dpdiff.scoring.scorer import Scorer, ScoringSettings

NAMES = ("dit", "unet", "uvit")
C = 12


def _scores(model, tokens, noise_step, ddim_steps, ensemble=1, generator=None, **settings) -> torch.Tensor:
    """The scorer's per-token scores of ``model`` (independent draws from ``generator``)."""
    scorer = Scorer(model, ScoringSettings(noise_step, ddim_steps, ensemble, **settings))
    return scorer.token_scores(tokens, IndependentNoise(generator))


def _cfg(name: str, cross: bool = True, **kw) -> ModelConfig:
    base = dict(hidden_dim=32, depth=2, num_heads=2, prototype_heads=2)
    base.update(kw)
    return ModelConfig(denoiser=name, prototype_cross_attention=cross, **base)


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Zero-initialised output layers/gates make every variant start as 'predict 0': perturb all weights so
    gradients and prototype effects are visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return module


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_factory_builds_each_variant_and_rejects_unknown():
    assert set(DENOISERS) == set(NAMES)
    kinds = {"dit": PrototypeDiT, "unet": PrototypeUNet, "uvit": PrototypeUViT}
    for name in NAMES:
        assert isinstance(build_denoiser(_cfg(name), C, (4, 4)), kinds[name])
    with pytest.raises(ValueError, match="model.denoiser"):
        build_denoiser(_cfg("resnet"), C, (4, 4))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_output_shape(name, grid):
    net = build_denoiser(_cfg(name, depth=4), C, grid)
    n = grid[0] * grid[1]
    x, t = torch.randn(2, n, C), torch.tensor([3, 700])
    protos, types = torch.randn(2, 5, C), torch.tensor([0, 0, 0, 1, 1])
    assert net(x, t, protos, types).shape == (2, n, C)
    assert net(x, t, None, None).shape == (2, n, C)
    with pytest.raises(ValueError):
        net(torch.randn(2, n + 1, C), t, protos, types)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_cross_attention(name):
    torch.manual_seed(0)
    net = _randomize(build_denoiser(_cfg(name), C, (4, 4)))
    out = net(torch.randn(2, 16, C), torch.tensor([10, 500]), torch.randn(2, 3, C), torch.tensor([0, 0, 1]))
    out.pow(2).mean().backward()
    cross = {n: p for n, p in net.named_parameters() if ".cross." in n}
    assert cross, "no cross-attention parameters found"
    for n, p in cross.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert net.proto_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_prototypes_change_the_output_only_with_cross_attention(name):
    x, t = torch.randn(2, 16, C), torch.tensor([50, 200])
    types = torch.tensor([0, 0, 1])
    p1, p2 = torch.randn(2, 3, C), torch.randn(2, 3, C)
    on = _randomize(build_denoiser(_cfg(name, cross=True), C, (4, 4)))
    with torch.no_grad():
        assert (on(x, t, p1, types) - on(x, t, p2, types)).abs().max() > 1e-4
        # the timestep matters too
        assert (on(x, t, p1, types) - on(x, t + 300, p1, types)).abs().max() > 1e-4
    off = _randomize(build_denoiser(_cfg(name, cross=False), C, (4, 4)))
    assert not any(".cross." in n for n, _ in off.named_parameters())
    with torch.no_grad():
        assert torch.equal(off(x, t, p1, types), off(x, t, p2, types))
        assert torch.equal(off(x, t, p1, types), off(x, t, None, None))


@pytest.mark.parametrize(
    "hidden,depth,in_dim,grid", [(32, 2, C, (4, 4)), (128, 4, 152, (16, 16)), (256, 6, 768, (32, 32))]
)
def test_parameter_counts_within_2x_of_the_dit(hidden, depth, in_dim, grid):
    kw = dict(hidden_dim=hidden, depth=depth, num_heads=4 if hidden > 32 else 2)
    counts = {n: _n_params(build_denoiser(_cfg(n, **kw), in_dim, grid)) for n in NAMES}
    # `pytest -s` shows the numbers quoted in docs/method.md
    print(
        f"\nparams hidden={hidden} depth={depth} in_dim={in_dim}: "
        + ", ".join(f"{n} {c / 1e6:.3f}M ({c / counts['dit']:.2f}x)" for n, c in counts.items())
    )
    for n in ("unet", "uvit"):
        assert 0.5 <= counts[n] / counts["dit"] <= 2.0, (n, counts)


@pytest.mark.parametrize("name", NAMES)
def test_dpdiffad_trains_and_scores_with_each_denoiser(name):
    torch.manual_seed(0)
    model = DPDiffAD(C, (4, 4), _cfg(name))
    assert type(model.denoiser) is type(build_denoiser(_cfg(name), C, (4, 4)))
    losses = model.training_losses(torch.randn(3, 16, C), torch.Generator().manual_seed(0))
    losses["loss"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("denoiser.out"))
    model.eval()
    s = _scores(model, torch.randn(2, 16, C), 100, 3, 2, torch.Generator().manual_seed(1))
    assert s.shape == (2, 4, 4) and torch.isfinite(s).all()


def test_prototype_scoring_is_one_minus_max_cosine():
    torch.manual_seed(0)
    model = DPDiffAD(C, (4, 4), _cfg("dit")).eval()
    tokens = torch.randn(2, 16, C) * 3 + 1
    got = _scores(model, tokens, 100, 3, scoring="prototype")
    x0 = model.standardize(tokens)
    p_local, p_global = model.prototypes(x0)
    sims = prototype_similarity_maps(x0, torch.cat([p_local, p_global], 1))
    assert torch.allclose(got, (1 - sims.max(1).values).view(2, 4, 4), atol=1e-6)
    assert (got >= 0).all() and (got <= 2).all()
    # deterministic (no noise) and independent of the diffusion arguments
    assert torch.equal(got, _scores(model, tokens, 5, 1, 4, scoring="prototype"))
    # only the local prototypes when the global ones are off
    local_only = DPDiffAD(C, (4, 4), _cfg("dit", use_global_prototypes=False)).eval()
    x0 = local_only.standardize(tokens)
    ref = 1 - prototype_similarity_maps(x0, local_only.prototypes(x0)[0]).max(1).values
    assert torch.allclose(_scores(local_only, tokens, 100, 3, scoring="prototype"), ref.view(2, 4, 4), atol=1e-6)
    with pytest.raises(ValueError, match="scoring"):
        _scores(model, tokens, 100, 3, scoring="knn")
    bare = DPDiffAD(C, (4, 4), _cfg("dit", use_local_prototypes=False, use_global_prototypes=False)).eval()
    with pytest.raises(ValueError, match="prototypes"):
        _scores(bare, tokens, 100, 3, scoring="prototype")


def test_prototype_only_model_has_no_denoiser():
    torch.manual_seed(0)
    model = DPDiffAD(C, (4, 4), _cfg("dit", diffusion=False, use_global_prototypes=False))
    assert model.denoiser is None
    assert not any(n.startswith("denoiser") for n in model.state_dict())
    losses = model.training_losses(torch.randn(3, 16, C))
    assert losses["diff"].item() == 0 and losses["local"].item() > 0
    losses["loss"].backward()
    assert model.local_extractor.queries.grad.abs().sum() > 0
    model.eval()
    assert _scores(model, torch.randn(2, 16, C), 100, 3, scoring="prototype").shape == (2, 4, 4)
    with pytest.raises(ValueError, match="scoring=prototype"):
        _scores(model, torch.randn(2, 16, C), 100, 3)
    with pytest.raises(ValueError, match="needs local or global"):
        DPDiffAD(C, (4, 4), _cfg("dit", diffusion=False, use_local_prototypes=False, use_global_prototypes=False))


def test_old_checkpoint_without_the_new_keys_loads_and_resumes(tmp_path):
    from dpdiff.model.checkpoint import CONFIG_FILE, check_resume_config, load_model, save_checkpoint

    cfg = Config()
    cfg.model = _cfg("dit")
    model = DPDiffAD(C, (4, 4), cfg.model)
    save_checkpoint(tmp_path, model, cfg, {"step": 1})
    payload = json.loads((tmp_path / CONFIG_FILE).read_text())
    old = payload["config"]
    for section, key in (("model", "denoiser"), ("model", "diffusion"), ("inference", "scoring")):
        del old[section][key]  # a config.json written before these switches existed
    (tmp_path / CONFIG_FILE).write_text(json.dumps(payload))
    loaded, loaded_cfg, _ = load_model(tmp_path)
    assert (
        loaded_cfg.model.denoiser == "dit"
        and loaded_cfg.model.diffusion
        and loaded_cfg.inference.scoring == "reconstruction"
    )
    assert isinstance(loaded.denoiser, PrototypeDiT)
    assert set(loaded.state_dict()) == set(model.state_dict())
    check_resume_config(tmp_path, {"config": old}, loaded_cfg)  # missing keys = defaults: no difference
    changed = Config.from_dict(loaded_cfg.to_dict())
    changed.model.denoiser = "unet"
    with pytest.raises(ValueError, match="model.denoiser"):
        check_resume_config(tmp_path, {"config": old}, changed)


# ----------------------------------------------------------------------------- the shared prototype embedding
# State-dict keys and, for a fixed seed, initial weights and outputs of each denoiser as they were before the
# prototype projection + type embedding moved to dpdiff/model/prototype_embedding.py (values recorded from
# that code): existing checkpoints load, resume states keep their parameter order, and no number changes.

_ATTN = ["q.weight", "q.bias", "kv.weight", "kv.bias", "proj.weight", "proj.bias"]
_HEAD = [
    "proto_proj.weight",
    "proto_proj.bias",
    "proto_type.weight",
    "t_embed.0.weight",
    "t_embed.0.bias",
    "t_embed.2.weight",
    "t_embed.2.bias",
]
_DIT_BLOCK = (
    [f"attn.{k}" for k in _ATTN]
    + ["norm_p.weight", "norm_p.bias"]
    + [f"cross.{k}" for k in _ATTN]
    + ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "adaLN.1.weight", "adaLN.1.bias"]
)
_UNET_UNIT = [
    "res.norm1.weight",
    "res.norm1.bias",
    "res.conv1.weight",
    "res.conv1.bias",
    "res.emb.1.weight",
    "res.emb.1.bias",
    "res.norm2.weight",
    "res.norm2.bias",
    "res.conv2.weight",
    "res.conv2.bias",
    "cross.norm_x.weight",
    "cross.norm_x.bias",
    "cross.norm_p.weight",
    "cross.norm_p.bias",
] + [f"cross.cross.{k}" for k in _ATTN]
_UVIT_BLOCK = (
    ["norm1.weight", "norm1.bias"]
    + [f"attn.{k}" for k in _ATTN]
    + ["norm_x.weight", "norm_x.bias", "norm_p.weight", "norm_p.bias"]
    + [f"cross.{k}" for k in _ATTN]
    + ["norm2.weight", "norm2.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
)
EXPECTED_KEYS = {  # depth 2, cross-attention on
    "dit": (
        ["in_proj.weight", "in_proj.bias"]
        + _HEAD
        + [f"blocks.{i}.{k}" for i in (0, 1) for k in _DIT_BLOCK]
        + ["final_adaLN.1.weight", "final_adaLN.1.bias", "out_proj.weight", "out_proj.bias"]
    ),
    "unet": (
        ["in_conv.weight", "in_conv.bias"]
        + _HEAD
        + [f"enc.0.{k}" for k in _UNET_UNIT]
        + [f"mid.{k}" for k in _UNET_UNIT]
        + ["merge.0.weight", "merge.0.bias"]
        + [f"dec.0.{k}" for k in _UNET_UNIT]
        + ["out_norm.weight", "out_norm.bias", "out_conv.weight", "out_conv.bias"]
    ),
    "uvit": (
        ["time_pos", "in_proj.weight", "in_proj.bias"]
        + _HEAD
        + [f"in_blocks.0.{k}" for k in _UVIT_BLOCK]
        + [f"mid_block.{k}" for k in _UVIT_BLOCK]
        + [f"out_blocks.0.{k}" for k in ["skip_linear.weight", "skip_linear.bias"] + _UVIT_BLOCK]
        + ["final_norm.weight", "final_norm.bias", "out_proj.weight", "out_proj.bias"]
    ),
}
#: (sum over parameters i of (i + 1) * sum(p_i) right after the seeded init, out[0, 0] and out.sum() after the
#: perturbation below), recorded from the denoisers before the refactor
GOLDEN = {
    "dit": (202.37614284988376, [-0.120486, 0.289006, 0.235845, 0.673706, 0.309828, 0.327777], 10.667070955969393),
    "unet": (3819.243434637334, [0.083374, -0.113691, -0.006121, -0.182437, -0.062102, 0.003898], 0.08341435343027115),
    "uvit": (4231.516138118881, [-0.150755, -0.724913, -0.40919, 0.105401, 0.443953, -0.347445], -12.082724383100867),
}


def _golden_net(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return DENOISERS[name](6, (2, 3), hidden_dim=8, depth=2, num_heads=2)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_and_parameter_order_are_unchanged(name):
    net = _golden_net(name)
    assert list(net.state_dict()) == EXPECTED_KEYS[name]
    assert [n for n, _ in net.named_parameters()] == EXPECTED_KEYS[name]  # the optimizer state's order


@pytest.mark.parametrize("name", NAMES)
def test_seeded_weights_and_outputs_are_unchanged(name):
    net = _golden_net(name)
    init_sig, first_row, total = GOLDEN[name]
    with torch.no_grad():
        got_sig = sum(float(p.double().sum()) * (i + 1) for i, p in enumerate(net.parameters()))
        assert got_sig == pytest.approx(init_sig, rel=1e-9)
        g = torch.Generator().manual_seed(1)
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        x, t = torch.randn(2, 6, 6, generator=g), torch.tensor([3, 700])
        protos, types = torch.randn(2, 3, 6, generator=g), torch.tensor([0, 0, 1])
        out = net(x, t, protos, types)
    assert out[0, 0].tolist() == pytest.approx(first_row, abs=2e-6)
    assert float(out.double().sum()) == pytest.approx(total, rel=1e-5, abs=1e-5)


def test_prototype_embedding_is_projection_plus_type_vector():
    from dpdiff.model.prototype_embedding import PrototypeEmbedding

    class Host(PrototypeEmbedding, torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.init_prototype_embedding(5, 7, 2)

    torch.manual_seed(0)
    host = Host()
    assert list(host.state_dict()) == ["proto_proj.weight", "proto_proj.bias", "proto_type.weight"]
    protos, types = torch.randn(3, 4, 5), torch.tensor([0, 0, 1, 1])
    w, b, e = host.proto_proj.weight, host.proto_proj.bias, host.proto_type.weight
    # P' = P W^T + b + E[type]   (local prototypes: type 0, global: type 1)
    expected = torch.einsum("bpc,dc->bpd", protos, w) + b + e[types].unsqueeze(0)
    assert torch.allclose(host.embed_prototypes(protos, types), expected, atol=1e-6)
    assert torch.allclose(host.embed_prototypes(protos, None), protos @ w.T + b, atol=1e-6)
    assert not torch.allclose(e[0], e[1])  # the two kinds are told apart
    assert host.embed_prototypes(None, types) is None
    assert host.embed_prototypes(torch.randn(3, 0, 5), types[:0]) is None
    for name in NAMES:
        assert isinstance(_golden_net(name), PrototypeEmbedding)
