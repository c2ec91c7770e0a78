"""Masked-token training (``train.token_keep``, Zheng et al. 2023): the DiT is trained on a random subset of each
image's tokens, each with its own position embedding; inference always sees every token."""

import pytest
import torch

from dpdiff.config import ModelConfig
from dpdiff.model.dpdiff_ad import DPDiffAD


def _model(denoiser: str = "dit") -> DPDiffAD:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_dim=32, depth=2, num_heads=2, prototype_heads=2, denoiser=denoiser, prediction="v")
    model = DPDiffAD(in_dim=12, grid_size=(4, 4), cfg=cfg)
    for p in model.parameters():  # non-zero output layers (adaLN-Zero starts at zero), so every token matters
        p.data.add_(torch.randn_like(p) * 0.05)
    return model


def test_keep_draws_come_after_the_others_and_are_sorted_distinct_positions():
    model = _model()
    full = model.draw_training_noise(3, torch.Generator().manual_seed(1))
    masked = model.draw_training_noise(3, torch.Generator().manual_seed(1), token_keep=0.5)
    assert "keep" not in full
    for k in ("t", "eps_x", "eps_p"):  # keep=1 runs draw exactly what they drew before the option existed
        assert torch.equal(full[k], masked[k])
    keep = masked["keep"]
    assert keep.shape == (3, 8) and bool((keep[:, 1:] > keep[:, :-1]).all()) and int(keep.max()) < 16
    assert not torch.equal(keep[0], keep[1])  # each image its own subset


def test_keeping_every_position_is_the_unmasked_loss():
    model = _model()
    tokens = torch.randn(2, 16, 12)
    noise = model.draw_training_noise(2, torch.Generator().manual_seed(3))
    full = model.training_losses(tokens, noise=noise)
    everything = model.training_losses(tokens, noise=noise | {"keep": torch.arange(16).expand(2, 16)})
    assert torch.allclose(full["diff"], everything["diff"], rtol=1e-5, atol=1e-6)


def test_a_subset_is_scored_with_its_own_positions():
    model = _model()
    tokens = torch.randn(2, 16, 12)
    noise = model.draw_training_noise(2, torch.Generator().manual_seed(3), token_keep=0.5)
    first = model.training_losses(tokens, noise=noise)["diff"]
    other = noise | {"keep": torch.stack([torch.arange(8, 16), torch.arange(0, 8)])}
    assert not torch.allclose(first, model.training_losses(tokens, noise=other)["diff"])
    # only the kept tokens count: changing a dropped token's noise changes nothing
    dropped = sorted(set(range(16)) - set(noise["keep"][0].tolist()))[0]
    eps = noise["eps_x"].clone()
    eps[0, dropped] += 5.0
    assert torch.allclose(first, model.training_losses(tokens, noise=noise | {"eps_x": eps})["diff"])
    first.backward()
    assert all(p.grad is not None for n, p in model.denoiser.named_parameters() if "proto_type" not in n)


def test_a_denoiser_without_positions_refuses_a_subset():
    model = _model("unet")
    noise = model.draw_training_noise(2, torch.Generator().manual_seed(0), token_keep=0.5)
    with pytest.raises(ValueError, match="train.token_keep=1"):
        model.training_losses(torch.randn(2, 16, 12), noise=noise)


@pytest.mark.integration
def test_training_with_masked_tokens_runs_and_uses_every_token_at_the_end(
    tiny_data, tmp_path, tiny_config, monkeypatch
):
    from dpdiff.training.trainer import Trainer
    from dpdiff.workflows.train import train

    cfg = tiny_config(tiny_data).override({"train.token_keep": 0.5, "train.full_token_steps": 2})
    run = train(cfg, tmp_path / "run")
    assert (run / "model.safetensors").is_file()
    # the schedule: masked draws before the last full_token_steps steps, every token in them
    seen = []
    original = Trainer._draw_batch

    def spy(self, step):
        tokens, noise = original(self, step)
        seen.append("keep" in noise)
        return tokens, noise

    monkeypatch.setattr(Trainer, "_draw_batch", spy)
    train(cfg, tmp_path / "run2")
    assert seen == [True] * 4 + [False] * 2
