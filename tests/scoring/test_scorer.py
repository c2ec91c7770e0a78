"""The scorer (dpdiff/scoring/scorer.py) and its noise sources (dpdiff/scoring/noise.py): ensemble draws as one
batch, row chunking, the ensemble reductions, the autocast/compile options of the runtime, and the three noise
sources (independent, common, fixed)."""

import pytest
import torch

from dpdiff.config import ModelConfig
from dpdiff.model.dpdiff_ad import DPDiffAD
from dpdiff.scoring.noise import CommonNoise, FixedNoise, IndependentNoise
from dpdiff.scoring.scorer import Scorer, ScoringSettings

torch.set_num_threads(min(2, torch.get_num_threads()))


def model_with_weights(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(hidden_dim=32, depth=2, num_heads=2, prototype_heads=2, **kw)
    m = DPDiffAD(in_dim=12, grid_size=(4, 4), cfg=cfg).eval()
    with torch.no_grad():  # adaLN-Zero starts as the identity: give every layer non-zero weights
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def scorer(model, noise_step, ddim_steps, ensemble=1, *, runtime=None, **settings) -> Scorer:
    return Scorer(model, ScoringSettings(noise_step, ddim_steps, ensemble, **settings), **(runtime or {}))


def seeded(seed: int) -> IndependentNoise:
    return IndependentNoise(torch.Generator().manual_seed(seed))


def per_draw_loop(model, tokens, noise_step, ddim_steps, ensemble, generator):
    """The former token_scores: one single-draw reconstruction per draw, summed in draw order."""
    one_draw, noise = scorer(model, noise_step, ddim_steps), IndependentNoise(generator)
    total = None
    for _ in range(ensemble):
        x0, x0_hat = one_draw.reconstruct(tokens, noise)
        s = (x0_hat[0] - x0).pow(2).sum(-1)
        total = s if total is None else total + s
    return (total / ensemble).view(tokens.shape[0], *model.grid_size)


@pytest.mark.parametrize(
    "kw", [{}, {"use_local_prototypes": False, "use_global_prototypes": False}, {"prototype_cross_attention": False}]
)
def test_batched_ensemble_reproduces_the_per_draw_loop(kw):
    model = model_with_weights(**kw)
    tokens = torch.randn(3, 16, 12) * 2 + 1
    got = scorer(model, 150, 3, 4, ensemble_reduce="mean_error").token_scores(tokens, seeded(7))
    ref = per_draw_loop(model, tokens, 150, 3, 4, torch.Generator().manual_seed(7))
    assert got.shape == (3, 4, 4)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    # and it really depends on the draws: another seed gives other maps
    other = scorer(model, 150, 3, 4).token_scores(tokens, seeded(8))
    assert not torch.allclose(other, got, rtol=1e-3)


def test_single_draw_is_unchanged_and_chunking_never_changes_results():
    model = model_with_weights()
    tokens = torch.randn(5, 16, 12)
    one = scorer(model, 100, 3).token_scores(tokens, seeded(1))
    torch.testing.assert_close(
        one, per_draw_loop(model, tokens, 100, 3, 1, torch.Generator().manual_seed(1)), rtol=1e-5, atol=1e-6
    )
    full = scorer(model, 100, 3, 3).token_scores(tokens, seeded(2))
    for max_rows in (1, 4, 7):
        chunked = scorer(model, 100, 3, 3, runtime={"max_rows": max_rows}).token_scores(tokens, seeded(2))
        torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)
    x0, x0_hat = scorer(model, 100, 3).reconstruct(tokens, seeded(1))
    assert x0.shape == (5, 16, 12) and x0_hat.shape == (1, 5, 16, 12)


def test_autocast_option_runs_close_and_rejects_bad_dtypes():
    model = model_with_weights()
    tokens = torch.randn(2, 16, 12)
    ref = scorer(model, 100, 3, 2).token_scores(tokens, seeded(3))
    amp = scorer(model, 100, 3, 2, runtime={"autocast_dtype": "bf16"}).token_scores(tokens, seeded(3))
    assert amp.dtype == torch.float32 and amp.shape == ref.shape
    assert not torch.equal(amp, ref)  # bf16 really used
    assert ((amp - ref).abs().mean() / ref.abs().mean()).item() < 0.05
    with pytest.raises(ValueError, match="autocast_dtype"):
        scorer(model, 100, 3, runtime={"autocast_dtype": torch.float64}).token_scores(tokens, seeded(0))
    with pytest.raises(ValueError, match="autocast_dtype"):
        scorer(model, 100, 3, runtime={"autocast_dtype": "int8"}).token_scores(tokens, seeded(0))


@pytest.mark.slow
def test_compile_option_matches_eager_and_keeps_the_state_dict():
    model = model_with_weights()
    keys = list(model.state_dict())
    tokens = torch.randn(2, 16, 12)
    ref = scorer(model, 100, 3, 2).token_scores(tokens, seeded(4))
    got = scorer(model, 100, 3, 2, runtime={"compile": True}).token_scores(tokens, seeded(4))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert list(model.state_dict()) == keys


def test_error_of_mean_scores_the_mean_reconstruction():
    model = model_with_weights()
    tokens = torch.randn(3, 16, 12)
    got = scorer(model, 50, 2, 4, ensemble_reduce="error_of_mean").token_scores(tokens, seeded(1))
    noise = seeded(1)
    recs = [scorer(model, 50, 2).reconstruct(tokens, noise) for _ in range(4)]
    x0 = recs[0][0]
    mean_rec = torch.stack([r[1][0] for r in recs]).mean(0)
    expected = (mean_rec - x0).pow(2).sum(-1).view(3, 4, 4)
    assert torch.allclose(got, expected, atol=1e-5)
    mean_err = scorer(model, 50, 2, 4, ensemble_reduce="mean_error").token_scores(tokens, seeded(1))
    assert (mean_err >= got - 1e-6).all() and not torch.allclose(mean_err, got)  # Jensen: mean error >= error of mean
    with pytest.raises(ValueError, match="ensemble_reduce"):
        scorer(model, 50, 2, 2, ensemble_reduce="median").token_scores(tokens, seeded(0))


def test_the_three_noise_sources():
    model = model_with_weights()
    x0 = torch.randn(3, 16, 12)
    p0 = torch.randn(3, model.num_prototypes, 12)
    # independent: every image its own draws, consumed from the generator
    eps_x, eps_p = seeded(0).draw(x0, p0, 2)
    assert eps_x.shape == (6, 16, 12) and eps_p is not None and eps_p.shape == (6, model.num_prototypes, 12)
    assert not torch.equal(eps_x[0], eps_x[1])
    # common: the same draws for every image and every call
    common = CommonNoise(5)
    c_x, c_p = common.draw(x0, p0, 3, antithetic=True)
    assert all(torch.equal(c_x[e * 3 + i], c_x[e * 3]) for e in range(3) for i in range(3))
    assert torch.equal(c_x[3], -c_x[0]) and c_p is not None and torch.equal(c_p[3], -c_p[0])
    again, _ = common.draw(x0[:1], p0[:1], 3, antithetic=True)
    assert torch.equal(again, c_x[::3])
    # fixed: the common draws as tensors (what the ONNX graph holds), broadcast over any batch
    fixed = FixedNoise.common(5, 16, model.num_prototypes, 12, 3, True)
    assert fixed.noise_x.shape == (3, 1, 16, 12) and fixed.noise_p.shape == (3, 1, model.num_prototypes, 12)
    f_x, f_p = fixed.draw(x0, p0, 3)
    assert torch.equal(f_x, c_x) and f_p is not None and c_p is not None and torch.equal(f_p, c_p)
    with pytest.raises(ValueError, match="3 draws"):
        fixed.draw(x0, p0, 2)
    # the settings choose the default source
    assert isinstance(scorer(model, 10, 1, common_noise=True, seed=4).noise_source(), CommonNoise)
    assert isinstance(scorer(model, 10, 1).noise_source(), IndependentNoise)


def test_scorer_checks_its_settings():
    model = model_with_weights()
    tokens = torch.randn(2, 16, 12)
    with pytest.raises(ValueError, match="inference.scoring"):
        scorer(model, 100, 3, scoring="knn").token_scores(tokens, seeded(0))
    with pytest.raises(ValueError, match="map size"):
        scorer(model, 100, 3).postprocess(torch.zeros(2, 4, 4))
    maps, scores = scorer(model, 100, 3, map_size=8, pool_size=2, smoothing_sigma=1.0).postprocess(torch.rand(2, 4, 4))
    assert maps.shape == (2, 8, 8) and scores.shape == (2,)
