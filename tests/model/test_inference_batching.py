"""Batched inference of DPDiffAD: ensemble draws as one batch, chunking, autocast/compile flags."""

import pytest
import torch

from dpdiff.config import ModelConfig
from dpdiff.model.dpdiff_ad import DPDiffAD

torch.set_num_threads(min(2, torch.get_num_threads()))


def model_with_weights(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(hidden_dim=32, depth=2, num_heads=2, prototype_heads=2, **kw)
    m = DPDiffAD(in_dim=12, grid_size=(4, 4), cfg=cfg).eval()
    with torch.no_grad():  # adaLN-Zero starts as the identity: give every layer non-zero weights
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def per_draw_loop(model, tokens, noise_step, ddim_steps, ensemble, generator):
    """The former token_scores: one reconstruct() per draw, summed in draw order."""
    total = None
    for _ in range(ensemble):
        x0, x0_hat = model.reconstruct(tokens, noise_step, ddim_steps, generator)
        s = (x0_hat - x0).pow(2).sum(-1)
        total = s if total is None else total + s
    return (total / ensemble).view(tokens.shape[0], *model.grid_size)


@pytest.mark.parametrize(
    "kw", [{}, {"use_local_prototypes": False, "use_global_prototypes": False}, {"prototype_cross_attention": False}]
)
def test_batched_ensemble_reproduces_the_per_draw_loop(kw):
    model = model_with_weights(**kw)
    tokens = torch.randn(3, 16, 12) * 2 + 1
    got = model.token_scores(
        tokens, 150, 3, ensemble=4, generator=torch.Generator().manual_seed(7), ensemble_reduce="mean_error"
    )
    ref = per_draw_loop(model, tokens, 150, 3, 4, torch.Generator().manual_seed(7))
    assert got.shape == (3, 4, 4)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    # and it really depends on the draws: another seed gives other maps
    other = model.token_scores(tokens, 150, 3, ensemble=4, generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(other, got, rtol=1e-3)


def test_single_draw_is_unchanged_and_chunking_never_changes_results():
    model = model_with_weights()
    tokens = torch.randn(5, 16, 12)
    one = model.token_scores(tokens, 100, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        one, per_draw_loop(model, tokens, 100, 3, 1, torch.Generator().manual_seed(1)), rtol=1e-5, atol=1e-6
    )
    full = model.token_scores(tokens, 100, 3, 3, torch.Generator().manual_seed(2))
    for max_batch in (1, 4, 7):
        chunked = model.token_scores(tokens, 100, 3, 3, torch.Generator().manual_seed(2), max_batch=max_batch)
        torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)
    x0, x0_hat = model.reconstruct(tokens, 100, 3, torch.Generator().manual_seed(1))
    assert x0.shape == x0_hat.shape == (5, 16, 12)


def test_autocast_flag_runs_close_and_rejects_bad_dtypes():
    model = model_with_weights()
    tokens = torch.randn(2, 16, 12)
    ref = model.token_scores(tokens, 100, 3, 2, torch.Generator().manual_seed(3))
    amp = model.token_scores(tokens, 100, 3, 2, torch.Generator().manual_seed(3), autocast_dtype="bf16")
    assert amp.dtype == torch.float32 and amp.shape == ref.shape
    assert not torch.equal(amp, ref)  # bf16 really used
    assert ((amp - ref).abs().mean() / ref.abs().mean()).item() < 0.05
    with pytest.raises(ValueError, match="autocast_dtype"):
        model.token_scores(tokens, 100, 3, autocast_dtype=torch.float64)
    with pytest.raises(ValueError, match="autocast_dtype"):
        model.token_scores(tokens, 100, 3, autocast_dtype="int8")


@pytest.mark.slow
def test_compile_flag_matches_eager_and_keeps_the_state_dict():
    model = model_with_weights()
    keys = list(model.state_dict())
    tokens = torch.randn(2, 16, 12)
    ref = model.token_scores(tokens, 100, 3, 2, torch.Generator().manual_seed(4))
    got = model.token_scores(tokens, 100, 3, 2, torch.Generator().manual_seed(4), compile=True)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert list(model.state_dict()) == keys


def test_error_of_mean_scores_the_mean_reconstruction():
    model = model_with_weights()
    tokens = torch.randn(3, 16, 12)
    got = model.token_scores(tokens, 50, 2, 4, torch.Generator().manual_seed(1), ensemble_reduce="error_of_mean")
    g = torch.Generator().manual_seed(1)
    recs = [model.reconstruct(tokens, 50, 2, g) for _ in range(4)]
    x0 = recs[0][0]
    mean_rec = torch.stack([r[1] for r in recs]).mean(0)
    expected = (mean_rec - x0).pow(2).sum(-1).view(3, 4, 4)
    assert torch.allclose(got, expected, atol=1e-5)
    mean_err = model.token_scores(tokens, 50, 2, 4, torch.Generator().manual_seed(1), ensemble_reduce="mean_error")
    assert (mean_err >= got - 1e-6).all() and not torch.allclose(mean_err, got)  # Jensen: mean error >= error of mean
    with pytest.raises(ValueError, match="ensemble_reduce"):
        model.token_scores(tokens, 50, 2, 2, ensemble_reduce="median")
