"""The anomaly score as an estimator (issue #13): antithetic noise pairs, the full-rank noise head, the
projected-error fallback for rank-deficient checkpoints, and a tiny trained model that tells an
off-distribution token from in-distribution ones."""

import itertools

import pytest
import torch
from sklearn.metrics import roc_auc_score

from dpdiff.config import LossConfig, ModelConfig
from dpdiff.model.dpdiff_ad import DPDiffAD
from dpdiff.scoring.noise import CommonNoise, IndependentNoise
from dpdiff.scoring.scorer import Scorer, ScoringSettings
from dpdiff.training.trainer import build_ema, lr_factor

torch.set_num_threads(min(2, torch.get_num_threads()))
C, GRID = 12, (4, 4)


def model_with_weights(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(hidden_dim=8, depth=1, num_heads=2, prototype_heads=2, **kw)
    m = DPDiffAD(in_dim=C, grid_size=GRID, cfg=cfg).eval()
    with torch.no_grad():  # zero-initialised layers (adaLN-Zero, output, skip) get non-zero weights
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def token_scores(model, tokens, noise_step, ddim_steps, ensemble, generator, antithetic=False, common_noise_seed=None):
    """The scorer's per-token scores; ``common_noise_seed``: common draws from that seed, else independent ones
    from ``generator``."""
    noise = CommonNoise(common_noise_seed) if common_noise_seed is not None else IndependentNoise(generator)
    settings = ScoringSettings(noise_step, ddim_steps, ensemble, antithetic=antithetic)
    return Scorer(model, settings).token_scores(tokens, noise)


def test_antithetic_pairs_sum_to_zero_exactly_for_tokens_and_prototypes():
    model = model_with_weights()
    x0 = torch.randn(3, 16, C)
    p0 = torch.randn(3, model.num_prototypes, C)
    eps_x, eps_p = IndependentNoise(torch.Generator().manual_seed(0)).draw(x0, p0, 5, antithetic=True)
    assert eps_p is not None
    b = x0.shape[0]
    for e in (0, 2):
        assert torch.equal(eps_x[e * b : (e + 1) * b] + eps_x[(e + 1) * b : (e + 2) * b], torch.zeros_like(x0))
        assert torch.equal(eps_p[e * b : (e + 1) * b] + eps_p[(e + 1) * b : (e + 2) * b], torch.zeros_like(p0))
    assert not torch.equal(eps_x[:b], eps_x[2 * b : 3 * b])  # pairs are independent of each other
    assert not torch.equal(eps_x[4 * b :], -eps_x[3 * b : 4 * b])  # an odd last draw is a fresh one
    plain, _ = IndependentNoise(torch.Generator().manual_seed(0)).draw(x0, p0, 2, antithetic=False)
    assert not torch.equal(plain[:b] + plain[b:], torch.zeros_like(x0))


def _noise_jacobian_rank(model: DPDiffAD) -> int:
    """Rank of d eps / d x_t for one token (its C x C block), at a random point."""
    x_t = torch.randn(1, 16, C)
    t = torch.tensor([50])

    def eps_of_token(v):
        x = x_t.clone()
        x[0, 5] = v
        return model.predict_noise(model.denoiser, x, t, None, None)[0, 5]

    jac = torch.autograd.functional.jacobian(eps_of_token, x_t[0, 5].clone())
    return int(torch.linalg.matrix_rank(jac))


def test_noise_head_has_full_rank_with_the_skip_and_not_without_it():
    narrow = dict(use_local_prototypes=False, use_global_prototypes=False)  # hidden 8 < 12 channels
    assert _noise_jacobian_rank(model_with_weights(output_skip=True, **narrow)) == C
    assert _noise_jacobian_rank(model_with_weights(output_skip=False, **narrow)) <= 8
    assert model_with_weights(output_skip=True).noise_head_basis() is None
    basis = model_with_weights(output_skip=False).noise_head_basis()
    assert basis.shape == (C, 8)
    torch.testing.assert_close(basis.T @ basis, torch.eye(8), atol=1e-5, rtol=0)


def test_projected_error_fallback_scores_the_range_of_the_output_layer_only():
    model = model_with_weights(output_skip=False)
    tokens = torch.randn(2, 16, C)
    got = token_scores(model, tokens, 100, 1, 2, torch.Generator().manual_seed(3), antithetic=True)
    x0, x0_hat = Scorer(model, ScoringSettings(100, 1, 2, antithetic=True)).reconstruct(
        tokens, IndependentNoise(torch.Generator().manual_seed(3))
    )
    q = model.noise_head_basis()
    err = (x0_hat.mean(0) - x0) @ q
    torch.testing.assert_close(got, err.pow(2).sum(-1).view(2, *GRID))
    # at one DDIM step the pair cancels the injected noise in the null space exactly: what is left there is
    # the head's constant bias, the same for every token of a batch (so it cannot rank tokens)
    null = torch.eye(C) - q @ q.T
    resid = (x0_hat.mean(0) - x0) @ null
    torch.testing.assert_close(resid, resid[:1, :1].expand_as(resid), atol=1e-4, rtol=0)


def _train_tiny(steps=300, seed=0, **model_kw):
    torch.manual_seed(seed)
    spectrum = torch.linspace(2.0, 0.05, C)  # a few strong directions, several weak ones (like real tokens)
    cfg = ModelConfig(hidden_dim=32, depth=2, num_heads=2, prototype_heads=2, train_max_timestep=300, **model_kw)
    model = DPDiffAD(C, GRID, cfg, LossConfig())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ema = build_ema(model, 0.99)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        tokens = torch.randn(16, 16, C, generator=g) * spectrum
        loss = model.training_losses(tokens, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = 3e-3 * lr_factor(step, steps, "cosine", 20)
        opt.step()
        ema.update_parameters(model)
    return ema.module.eval(), spectrum


def test_tiny_trained_model_scores_an_off_distribution_token_higher():
    model, spectrum = _train_tiny()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(24, 16, C, generator=g) * spectrum
    shift = torch.zeros(C)
    shift[-3:] = 1.0  # 1.0 along the weakest directions: about 20 of their standard deviations
    tokens[:12, 5] += shift  # one anomalous token in each of the first 12 images
    scores = token_scores(model, tokens, 100, 1, 2, torch.Generator().manual_seed(2), antithetic=True)
    flat = scores.view(24, -1)
    labels = torch.zeros_like(flat, dtype=torch.long)
    labels[:12, 5] = 1
    auroc = roc_auc_score(labels.flatten().numpy(), flat.flatten().numpy())
    assert auroc >= 0.95, auroc
    assert flat[:12, 5].mean() > 3 * flat[12:].mean()


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_lr_factor_warms_up_then_follows_the_schedule(schedule):
    f = [lr_factor(s, 100, schedule, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    if schedule == "constant":
        assert all(v == 1.0 for v in f[10:])
    else:
        assert f[10] == pytest.approx(1.0) and all(a >= b for a, b in itertools.pairwise(f[10:])) and f[-1] < 0.01
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor(0, 10, "step")


def test_ema_warms_up_and_tracks_the_weights():
    lin = torch.nn.Linear(2, 2)
    ema = build_ema(lin, 0.999)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update_parameters(lin)  # first update copies
    with torch.no_grad():
        lin.weight.fill_(2.0)
    ema.update_parameters(lin)  # decay min(0.999, 2/11): mostly the new value
    w = ema.module.weight
    assert torch.allclose(w, torch.full_like(w, 1.0 + 9 / 11), atol=1e-6)
    assert build_ema(lin, 0.0) is None
    with pytest.raises(ValueError, match="ema_decay"):
        build_ema(lin, 1.0)


def test_common_noise_makes_a_score_independent_of_its_batch():
    model = model_with_weights()
    tokens = torch.randn(5, 16, C)
    kw = dict(antithetic=True, common_noise_seed=7)
    batch = token_scores(model, tokens, 100, 1, 4, torch.Generator().manual_seed(0), **kw)
    for i in range(5):  # alone, with another running generator: the same score
        alone = token_scores(model, tokens[i : i + 1], 100, 1, 4, torch.Generator().manual_seed(i + 1), **kw)
        torch.testing.assert_close(alone[0], batch[i], rtol=1e-5, atol=1e-6)
    reordered = token_scores(model, tokens.flip(0), 100, 1, 4, None, **kw)
    torch.testing.assert_close(reordered.flip(0), batch, rtol=1e-5, atol=1e-6)
    other_seed = token_scores(model, tokens, 100, 1, 4, None, antithetic=True, common_noise_seed=8)
    assert not torch.allclose(other_seed, batch, rtol=1e-3)
    # without it, the same image scores differently in another batch position (independent draws)
    free = token_scores(model, tokens, 100, 1, 4, torch.Generator().manual_seed(0), antithetic=True)
    free_alone = token_scores(model, tokens[3:4], 100, 1, 4, torch.Generator().manual_seed(0), antithetic=True)
    assert not torch.allclose(free[3], free_alone[0], rtol=1e-3)
