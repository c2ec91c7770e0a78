"""The Trainer (training/trainer.py): what a step draws depends on (seed, step) alone, and ``fit`` writes the run."""

from __future__ import annotations

import torch

from dpdiff.model.checkpoint import CONFIG_FILE, MODEL_FILE, STATE_FILE, load_train_state
from dpdiff.training.distributed import DistInfo
from dpdiff.training.trainer import HISTORY_FILE, Trainer, load_history

CPU = DistInfo(device=torch.device("cpu"))


def _features(n: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 12, 4, 4, generator=torch.Generator().manual_seed(seed))


def _cfg(tiny_config, steps: int = 4):
    cfg = tiny_config()
    cfg.train.steps, cfg.train.log_every, cfg.train.checkpoint_every = steps, 2, 2
    cfg.train.device = "cpu"
    return cfg


def test_a_step_draws_the_same_batch_whatever_came_before(tmp_path, tiny_config):
    feats = _features()
    fresh = Trainer(_cfg(tiny_config), tmp_path / "a", CPU).setup(features=feats)
    trained = Trainer(_cfg(tiny_config), tmp_path / "b", CPU).setup(features=feats)
    for step in range(3):
        trained.step(step)
    torch.randn(100)  # the global RNG is not what the draws use
    tokens_a, noise_a = fresh._draw_batch(3)
    tokens_b, noise_b = trained._draw_batch(3)
    assert torch.equal(tokens_a, tokens_b)
    assert noise_a.keys() == noise_b.keys()
    for k in noise_a:
        assert (noise_a[k] is None) == (noise_b[k] is None), k
        assert noise_a[k] is None or torch.equal(noise_a[k], noise_b[k]), k
    other_step, _ = fresh._draw_batch(4)
    assert not torch.equal(tokens_a, other_step)


def test_fit_writes_history_and_checkpoint_and_resume_continues_from_it(tmp_path, tiny_config):
    feats = _features()
    run = tmp_path / "run"
    first = Trainer(_cfg(tiny_config, steps=2), run, CPU).setup(features=feats)
    assert first.fit() == run
    assert (run / MODEL_FILE).is_file() and (run / CONFIG_FILE).is_file() and (run / HISTORY_FILE).is_file()
    assert [r["step"] for r in load_history(run)] == [2.0]
    assert load_train_state(run)["step"] == 2

    resumed = Trainer(_cfg(tiny_config, steps=4), run, CPU).setup(resume=True, features=feats)
    assert resumed.start_step == 2 and [r["step"] for r in resumed.history] == [2]
    resumed.fit()
    assert [r["step"] for r in load_history(run)] == [2.0, 4.0]
    assert load_train_state(run)["step"] == 4 and (run / STATE_FILE).is_file()
