"""benchmarks/speed.py times the library's training step: its steps/s (sections 2 and 2b) come from a real
:class:`~dpdiff.training.trainer.Trainer`, set up as ``dpdiff train`` sets it up, calling ``Trainer.step`` itself
(batch draw, loss, backward, gradient clipping, lr schedule, Adam, EMA), never a copy of the step; as
tests/experiments/test_benchmark.py checks for the FPS benchmark and ``Detector``. Tiny sizes, nothing written
outside ``tmp_path``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from dpdiff.backbones import build_backbone
from dpdiff.training.trainer import Trainer, lr_factor, training_samples

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
#: the helper modules speed.py imports from its own folder
HELPERS = ("_common", "_speed_rss")

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def speed(monkeypatch):
    """benchmarks/speed.py as a module: a script, not a package, so it is loaded by path with its folder on
    ``sys.path`` (as ``python benchmarks/speed.py`` has it) for its ``_common`` helpers; they are unloaded after."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("dpdiff_speed_benchmark", BENCHMARKS / "speed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        for name in HELPERS:
            sys.modules.pop(name, None)


@pytest.fixture
def step_spy(monkeypatch):
    """Every ``Trainer.step`` call as (trainer, step), the real step run each time."""
    calls: list[tuple[Trainer, int]] = []
    real = Trainer.step

    def spy(self, step):
        calls.append((self, step))
        return real(self, step)

    monkeypatch.setattr(Trainer, "step", spy)
    return calls


def _train_cfg(tiny_config, root=None):
    cfg = tiny_config(root)
    cfg.train.steps, cfg.train.warmup_steps, cfg.train.lr_schedule = 20, 2, "cosine"
    cfg.train.ema_decay, cfg.train.grad_clip = 0.9, 1.0
    return cfg


def _check_library_steps(trainer: Trainer, steps: list[int]) -> None:
    """``trainer`` ran ``steps`` through the library's step: its EMA averaged each one, its optimiser holds the lr
    of the schedule at the last step and its running loss sums count every step."""
    cfg = trainer.cfg.train
    assert type(trainer) is Trainer and steps == list(range(len(steps)))
    assert trainer.ema is not None and int(trainer.ema.n_averaged) == len(steps)
    lr = cfg.lr * lr_factor(steps[-1], cfg.steps, cfg.lr_schedule, cfg.warmup_steps)
    assert all(group["lr"] == lr for group in trainer.optimizer.param_groups)
    assert int(trainer.optimizer.state_dict()["state"][0]["step"]) == len(steps)  # Adam stepped each time
    assert set(trainer.running) == {"loss", "diff", "local", "global"}


def test_trainer_step_section_times_the_library_step(speed, step_spy, tiny_config, tmp_path):
    """(2b): ``bench_trainer_step`` times ``Trainer.step`` of a real Trainer, per token_keep and thread count."""
    features = torch.randn(8, 12, 4, 4, generator=torch.Generator().manual_seed(0)).half()
    out = speed.bench_trainer_step(
        _train_cfg(tiny_config), features, None, tmp_path, torch.device("cpu"), warmup=1, steps=2
    )
    assert list(out) == [f"token_keep={k:g}, threads={t}" for k in (1.0, 0.5) for t in (1, 2)]
    assert all(r["rounds"] == 2 and r["steps_per_s"] > 0 and r["batch_size"] == 4 for r in out.values())
    # one Trainer per token_keep, each stepped (1 warm-up + 2 timed) x 2 thread counts, steps 0, 1, 2, ...
    assert len(step_spy) == 2 * 2 * 3
    trainers = list(dict.fromkeys(t for t, _ in step_spy))
    assert [t.cfg.train.token_keep for t in trainers] == [1.0, 0.5]
    for trainer in trainers:
        _check_library_steps(trainer, [s for t, s in step_spy if t is trainer])
        assert trainer.features is features and trainer.batch_size == 4


def test_training_section_steps_the_library_trainer_from_the_cache_and_through_the_backbone(
    speed, step_spy, tiny_config, tiny_data, tmp_path
):
    """(2): both timings (tokens from the feature cache; the batch's images through the backbone first) run
    ``Trainer.step`` of one real Trainer on the cached features."""
    cfg = _train_cfg(tiny_config, tiny_data)
    samples = training_samples(cfg)
    backbone = build_backbone("tf_efficientnet_lite0", image_size=cfg.backbone.image_size)
    out = speed.bench_training(
        cfg, backbone, samples, tmp_path / "cache", torch.device("cpu"), warmup=0, cached_steps=1, backbone_steps=1
    )
    assert out["cache"]["extracted_images"] == len(samples) == out["num_images"]
    assert out["from_cache"]["rounds"] == 1 and out["through_backbone"]["rounds"] == 1
    # 1 step from the cache, then 1 warm-up + 1 timed step through the backbone, all on the same Trainer
    assert len(step_spy) == 3 and len({id(t) for t, _ in step_spy}) == 1
    trainer = step_spy[0][0]
    _check_library_steps(trainer, [s for _, s in step_spy])
    assert tuple(trainer.features.shape) == tuple(out["cache"]["shape"])
