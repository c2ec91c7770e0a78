"""Training you can watch: `dpdiff train --logger tensorboard` writes event files TensorBoard's own reader loads."""

from __future__ import annotations

import pytest

from dpdiff.cli import main
from dpdiff.training.loggers import TENSORBOARD_DIR, build_logger


def test_no_logger_by_default_and_unknown_names_are_refused(tmp_path):
    assert build_logger("none", tmp_path) is None
    with pytest.raises(ValueError, match="train.logger"):
        build_logger("wandb", tmp_path)


@pytest.mark.integration
def test_tensorboard_events_hold_the_loss_lr_and_speed(tiny_data, tmp_path, tiny_set_args):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="the tensorboard package is not installed"
    )
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_data), "--output", str(run), "--logger", "tensorboard", "--set", *tiny_set_args]
    assert main(args) == 0
    acc = event_accumulator.EventAccumulator(str(run / TENSORBOARD_DIR))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/total", "loss/diff", "loss/local", "loss/global", "train/lr", "train/steps_per_s"} <= tags
    steps = [e.step for e in acc.Scalars("loss/total")]
    assert steps == [2, 4, 6]  # every logged step (train.log_every=2 of 6)
    history = (run / "loss_history.csv").read_text().splitlines()[1:]
    first_loss = float(history[0].split(",")[1])
    assert acc.Scalars("loss/total")[0].value == pytest.approx(first_loss, rel=1e-5)  # the same numbers as the CSV
    assert all(e.value > 0 for e in acc.Scalars("train/lr"))
