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

NAMES = ("dit", "unet", "uvit")
C = 12


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


@pytest.mark.parametrize("hidden,depth,in_dim,grid", [(32, 2, C, (4, 4)), (128, 4, 152, (16, 16)),
                                                      (256, 6, 768, (32, 32))])
def test_parameter_counts_within_2x_of_the_dit(hidden, depth, in_dim, grid):
    kw = dict(hidden_dim=hidden, depth=depth, num_heads=4 if hidden > 32 else 2)
    counts = {n: _n_params(build_denoiser(_cfg(n, **kw), in_dim, grid)) for n in NAMES}
    # `pytest -s` shows the numbers quoted in docs/method.md
    print(f"\nparams hidden={hidden} depth={depth} in_dim={in_dim}: "
          + ", ".join(f"{n} {c / 1e6:.3f}M ({c / counts['dit']:.2f}x)" for n, c in counts.items()))
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
    s = model.token_scores(torch.randn(2, 16, C), 100, 3, 2, torch.Generator().manual_seed(1))
    assert s.shape == (2, 4, 4) and torch.isfinite(s).all()


def test_prototype_scoring_is_one_minus_max_cosine():
    torch.manual_seed(0)
    model = DPDiffAD(C, (4, 4), _cfg("dit")).eval()
    tokens = torch.randn(2, 16, C) * 3 + 1
    got = model.token_scores(tokens, 100, 3, scoring="prototype")
    x0 = model.standardize(tokens)
    p_local, p_global = model.prototypes(x0)
    sims = prototype_similarity_maps(x0, torch.cat([p_local, p_global], 1))
    assert torch.allclose(got, (1 - sims.max(1).values).view(2, 4, 4), atol=1e-6)
    assert (got >= 0).all() and (got <= 2).all()
    # deterministic (no noise) and independent of the diffusion arguments
    assert torch.equal(got, model.token_scores(tokens, 5, 1, 4, scoring="prototype"))
    # only the local prototypes when the global ones are off
    local_only = DPDiffAD(C, (4, 4), _cfg("dit", use_global_prototypes=False)).eval()
    x0 = local_only.standardize(tokens)
    ref = 1 - prototype_similarity_maps(x0, local_only.prototypes(x0)[0]).max(1).values
    assert torch.allclose(local_only.prototype_token_scores(tokens), ref.view(2, 4, 4), atol=1e-6)
    with pytest.raises(ValueError, match="scoring"):
        model.token_scores(tokens, 100, 3, scoring="knn")
    bare = DPDiffAD(C, (4, 4), _cfg("dit", use_local_prototypes=False, use_global_prototypes=False)).eval()
    with pytest.raises(ValueError, match="prototypes"):
        bare.token_scores(tokens, 100, 3, scoring="prototype")


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
    assert model.token_scores(torch.randn(2, 16, C), 100, 3, scoring="prototype").shape == (2, 4, 4)
    with pytest.raises(ValueError, match="scoring=prototype"):
        model.token_scores(torch.randn(2, 16, C), 100, 3)
    with pytest.raises(ValueError, match="needs local or global"):
        DPDiffAD(C, (4, 4), _cfg("dit", diffusion=False, use_local_prototypes=False, use_global_prototypes=False))


def test_old_checkpoint_without_the_new_keys_loads_and_resumes(tmp_path):
    from dpdiff.engine.checkpoint import (CONFIG_FILE, check_resume_config, load_model, save_checkpoint)
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
    assert loaded_cfg.model.denoiser == "dit" and loaded_cfg.model.diffusion and loaded_cfg.inference.scoring == "reconstruction"
    assert isinstance(loaded.denoiser, PrototypeDiT)
    assert set(loaded.state_dict()) == set(model.state_dict())
    check_resume_config(tmp_path, {"config": old}, loaded_cfg)  # missing keys = defaults: no difference
    changed = Config.from_dict(loaded_cfg.to_dict())
    changed.model.denoiser = "unet"
    with pytest.raises(ValueError, match="model.denoiser"):
        check_resume_config(tmp_path, {"config": old}, changed)
