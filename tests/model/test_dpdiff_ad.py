import pytest
import torch

from dpdiff.config import ModelConfig
from dpdiff.model.dpdiff_ad import DPDiffAD
from dpdiff.model.prototypes import local_prototype_loss
from dpdiff.scoring.noise import IndependentNoise
from dpdiff.scoring.scorer import Scorer, ScoringSettings


def small_model(**kw):
    cfg = ModelConfig(hidden_dim=32, depth=2, num_heads=2, prototype_heads=2, **kw)
    return DPDiffAD(in_dim=12, grid_size=(4, 4), cfg=cfg)


def _grads(model, loss):
    model.zero_grad()
    loss.backward(retain_graph=True)
    return {n: (p.grad is not None and p.grad.abs().sum().item() > 0) for n, p in model.named_parameters()}


def test_losses_reach_the_parameters_they_should_train():
    torch.manual_seed(0)
    model = small_model()
    # give the DiT non-zero output layers so gradients flow everywhere (adaLN-Zero starts at zero)
    for p in model.denoiser.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    tokens = torch.randn(3, 16, 12)
    losses = model.training_losses(tokens)
    g_local = _grads(model, losses["local"])
    assert any(v for n, v in g_local.items() if n.startswith("local_extractor"))
    assert not any(v for n, v in g_local.items() if n.startswith(("global_extractor", "denoiser")))
    g_global = _grads(model, losses["global"])
    assert any(v for n, v in g_global.items() if n.startswith("global_extractor"))
    assert not any(v for n, v in g_global.items() if n.startswith(("local_extractor", "denoiser")))
    g_diff = _grads(model, losses["diff"])
    assert all(v for n, v in g_diff.items() if n.startswith("denoiser") and "proto_type" not in n)
    # the diffusion loss also trains both prototype extractors through the noised prototypes (Eq. 15-16)
    assert any(v for n, v in g_diff.items() if n.startswith("local_extractor"))
    assert any(v for n, v in g_diff.items() if n.startswith("global_extractor"))


def test_no_gradient_into_backbone(tiny_model_config):
    from dpdiff.backbones import build_backbone

    backbone = build_backbone("tf_efficientnet_lite0", image_size=64)
    model = DPDiffAD(backbone.out_channels, backbone.grid_size(64), tiny_model_config())
    feats = backbone(torch.randn(2, 3, 64, 64))
    tokens = feats.flatten(2).transpose(1, 2)
    model.training_losses(tokens)["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    assert any(p.grad is not None for p in model.parameters())


def test_ablation_switches_remove_modules():
    m = small_model(use_local_prototypes=False)
    assert m.local_extractor is None and m.global_extractor is not None
    m = small_model(use_global_prototypes=False, use_local_prototypes=False)
    out = m.training_losses(torch.randn(2, 16, 12))
    assert out["local"].item() == 0 and out["global"].item() == 0
    m = small_model(prototype_cross_attention=False)
    assert not hasattr(m.denoiser.blocks[0], "cross")


def test_local_loss_is_zero_when_tokens_match_prototypes():
    protos = torch.randn(1, 3, 5)
    tokens = protos[:, [0, 1, 2, 1]] * 2.0  # same directions
    assert local_prototype_loss(tokens, protos).item() == pytest.approx(0.0, abs=1e-6)
    single = protos[:, :1]
    assert local_prototype_loss(-single.expand(1, 4, 5), single).item() == pytest.approx(2.0, abs=1e-6)


def test_token_scores_shape_and_determinism():
    torch.manual_seed(0)
    model = small_model().eval()
    tokens = torch.randn(2, 16, 12)
    scorer = Scorer(model, ScoringSettings(100, 3))
    s1 = scorer.token_scores(tokens, IndependentNoise(torch.Generator().manual_seed(1)))
    s2 = scorer.token_scores(tokens, IndependentNoise(torch.Generator().manual_seed(1)))
    assert s1.shape == (2, 4, 4) and torch.equal(s1, s2)
    with pytest.raises(ValueError):
        Scorer(model, ScoringSettings(1000, 3)).token_scores(tokens, IndependentNoise())


def test_training_reduces_diffusion_loss_on_structured_tokens():
    torch.manual_seed(0)
    model = small_model(train_max_timestep=200)
    base = torch.randn(1, 16, 12)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(150):
        tokens = base + 0.05 * torch.randn(8, 16, 12)
        loss = model.training_losses(tokens, g)["diff"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    with torch.no_grad():
        final = (
            sum(model.training_losses(base + 0.05 * torch.randn(8, 16, 12), g)["diff"].item() for _ in range(10)) / 10
        )
    assert final < 0.5 * first


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_an_exact_network_of_any_prediction_type_reconstructs_the_clean_tokens(prediction):
    """The training target and the conversion to noise for DDIM agree: a network that outputs exactly the
    target of ``model.prediction`` (eps, v or x0) for the draws of the run gives zero training loss and denoises
    x_t back to x0 in one DDIM step."""
    torch.manual_seed(0)
    model = small_model(prediction=prediction, output_skip=False).eval()
    x0 = torch.randn(2, 16, 12)
    noise = model.draw_training_noise(2, torch.Generator().manual_seed(3))
    noise["t"] = torch.tensor([40, 250])
    abar = model.alphas_cumprod[noise["t"]].view(-1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise["eps_x"]
    target = {"eps": noise["eps_x"], "x0": x0, "v": abar.sqrt() * noise["eps_x"] - (1 - abar).sqrt() * x0}[prediction]
    model.denoiser.forward = lambda x, t, p, types: target  # the exact network for these draws
    assert model.training_losses(x0, noise=noise)["diff"].item() == pytest.approx(0.0, abs=1e-10)
    eps = model.predict_noise(model.denoiser, x_t, noise["t"], None, None)
    torch.testing.assert_close(eps, noise["eps_x"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close((x_t - (1 - abar).sqrt() * eps) / abar.sqrt(), x0, rtol=1e-4, atol=1e-4)
    # a network that outputs the eps target under another prediction type is wrong (the test can fail)
    if prediction != "eps":
        model.denoiser.forward = lambda x, t, p, types: noise["eps_x"]
        assert model.training_losses(x0, noise=noise)["diff"].item() > 0.1
