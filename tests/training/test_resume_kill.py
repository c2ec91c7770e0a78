"""Crash-safe training: SIGKILL mid-run, ``dpdiff train --resume RUN_DIR``, same weights as without the kill."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dpdiff.model.checkpoint import CONFIG_FILE, MODEL_FILE, STATE_FILE, load_train_state
from dpdiff.training.trainer import build_backbone_from_config, train_features
from dpdiff.workflows.train import train

pytestmark = pytest.mark.usefixtures("single_thread")


def _assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), (k, float((a[k] - b[k]).abs().max()))


@pytest.mark.integration
def test_sigkill_then_resume_matches_uninterrupted_run(tiny_data, tmp_path, tiny_config, loss_history, subprocess_env):
    cfg = tiny_config(tiny_data)
    cfg.train.steps = 40
    cfg.train.checkpoint_every = 4
    cfg.train.log_every = 3  # not a divisor of checkpoint_every: partial log sums are part of the state
    cfg.train.device = "cpu"
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dpdiff.cli", "train", "--config", str(cfg_path), "--output", str(run)]
    proc = subprocess.Popen(cmd, env=subprocess_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not (run / STATE_FILE).exists():
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = int(load_train_state(run)["step"])
    assert 0 < killed_at < cfg.train.steps, killed_at  # killed mid-run
    print(f"killed at step {killed_at}")

    # resume with nothing but the run folder (its own config) ...
    res = subprocess.run(
        [sys.executable, "-m", "dpdiff.cli", "train", "--resume", str(run)],
        env=subprocess_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # ... and compare with an uninterrupted run of the same seed
    full = tmp_path / "full"
    train(cfg, full)  # single-threaded (fixture), as the subprocesses: same float summation order
    _assert_same_weights(load_file(str(full / MODEL_FILE)), load_file(str(run / MODEL_FILE)), atol=1e-5)
    ha, hb = loss_history(full), loss_history(run)
    assert [r["step"] for r in ha] == [r["step"] for r in hb]
    for ra, rb in zip(ha, hb, strict=True):
        assert all(abs(ra[k] - rb[k]) < 1e-4 for k in ra), (ra, rb)
    assert load_train_state(run)["step"] == cfg.train.steps
    assert not list(run.glob(".*.tmp"))


@pytest.mark.integration
def test_resume_when_a_kill_left_files_from_different_steps(tiny_data, tmp_path, tiny_config):
    """A kill between the three checkpoint writes leaves model.safetensors/config.json one checkpoint
    behind train_state.pt (written first), plus a partial temp file; resuming must still be exact."""
    cfg = tiny_config(tiny_data)
    cfg.train.steps, cfg.train.checkpoint_every = 6, 2
    feats, samples = train_features(cfg, build_backbone_from_config(cfg), torch.device("cpu"))
    full = tmp_path / "full"
    train(cfg, full, features=feats, samples=samples)

    part = tmp_path / "part"
    cfg2 = tiny_config(tiny_data)
    cfg2.train.steps, cfg2.train.checkpoint_every = 2, 2
    train(cfg2, part, features=feats, samples=samples)
    old = {n: (part / n).read_bytes() for n in (MODEL_FILE, CONFIG_FILE)}
    cfg4 = tiny_config(tiny_data)
    cfg4.train.steps, cfg4.train.checkpoint_every = 4, 2
    train(cfg4, part, resume=True, features=feats, samples=samples)
    for n, b in old.items():  # killed after writing train_state.pt (step 4), before the other two
        (part / n).write_bytes(b)
    (part / f".{MODEL_FILE}.x1y2z3.tmp").write_bytes(old[MODEL_FILE][:1000])  # the interrupted write
    assert load_train_state(part)["step"] == 4
    train(cfg, part, resume=True, features=feats, samples=samples)
    _assert_same_weights(load_file(str(full / MODEL_FILE)), load_file(str(part / MODEL_FILE)), atol=1e-6)
    _assert_same_weights(load_train_state(full)["model"], load_train_state(part)["model"], atol=1e-6)
    assert not list(part.glob(".*.tmp"))
