"""Data-parallel training: ``torchrun --nproc-per-node 2`` on CPU (gloo) gives the weights of one process."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dpdiff.cli import main
from dpdiff.model.checkpoint import CONFIG_FILE, MODEL_FILE, load_train_state
from dpdiff.training.distributed import shard_range
from dpdiff.workflows.train import train

TORCHRUN = Path(sys.executable).parent / "torchrun"


pytestmark = pytest.mark.usefixtures("single_thread")


def test_shard_range_covers_everything_once():
    for n in (0, 1, 5, 12, 13):
        for world in (1, 2, 3, 8):
            parts = [shard_range(n, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
            assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1


@pytest.mark.parametrize("kw", [{}, {"prototype_cross_attention": False}, {"use_local_prototypes": False}])
def test_weighted_shard_losses_equal_the_global_batch_loss(kw, tiny_model_config):
    """What makes N ranks equal one process: with each rank's slice of the global noise draw, the losses
    are per-sample means, so shard losses weighted by shard size sum to the global-batch loss."""
    from dpdiff.model.dpdiff_ad import DPDiffAD

    torch.manual_seed(0)
    model = DPDiffAD(12, (4, 4), tiny_model_config(**kw))
    for p in model.denoiser.parameters():  # adaLN-Zero starts at zero output: make the DiT matter
        p.data.add_(torch.randn_like(p) * 0.05)
    tokens = torch.randn(5, 16, 12)
    noise = model.draw_training_noise(5, torch.Generator().manual_seed(3))
    given = model.training_losses(tokens, noise=noise)
    parts = [(0, 3), (3, 5)]
    sliced = [
        model.training_losses(tokens[lo:hi], noise={k: v[lo:hi] if v is not None else None for k, v in noise.items()})
        for lo, hi in parts
    ]
    for k in given:
        total = sum(s[k] * (hi - lo) / 5 for s, (lo, hi) in zip(sliced, parts, strict=True))
        assert torch.allclose(total, given[k], atol=1e-5), k


@pytest.mark.integration
@pytest.mark.skipif(not TORCHRUN.exists(), reason=f"torchrun not found at {TORCHRUN}")
def test_torchrun_two_processes_match_one_process(tiny_data, tmp_path, tiny_config, loss_history, subprocess_env):
    cfg = tiny_config(tiny_data)
    cfg.train.steps = 6
    cfg.train.batch_size = 5  # global batch; uneven 3 + 2 split across the ranks
    cfg.train.checkpoint_every = 3
    cfg.train.device = "cpu"
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    run = tmp_path / "ddp"
    res = subprocess.run(
        [
            str(TORCHRUN),
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "dpdiff.cli",
            "train",
            "--config",
            str(cfg_path),
            "--output",
            str(run),
        ],
        env=subprocess_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert res.stdout.count("checkpoint written to") == 1  # rank 0 reports, rank 1 stays quiet
    meta = json.loads((run / CONFIG_FILE).read_text())
    assert meta["world_size"] == 2 and meta["step"] == 6 and meta["num_train_images"] == 12
    assert not list(run.glob(".*.tmp"))

    single = tmp_path / "single"
    train(cfg, single)  # single-threaded (fixture), as the subprocesses
    a, b = load_file(str(single / MODEL_FILE)), load_file(str(run / MODEL_FILE))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4, rtol=0), (k, float((a[k] - b[k]).abs().max()))
    # the logged losses are the global-batch means, as in one process
    for ra, rb in zip(loss_history(single), loss_history(run), strict=True):
        assert all(abs(ra[k] - rb[k]) < 1e-4 for k in ra), (ra, rb)
    assert load_train_state(run)["step"] == 6


def test_evaluation_runs_on_rank_0_only(tmp_path, monkeypatch):
    # a torchrun worker (rank 1) must neither evaluate nor write: here it would fail on the missing run
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["test", str(tmp_path / "no_run"), "-o", str(tmp_path / "eval")]) == 0
    assert main(["predict", str(tmp_path / "no_run"), str(tmp_path), "-o", str(tmp_path / "pred")]) == 0
    assert not (tmp_path / "eval").exists() and not (tmp_path / "pred").exists()
    monkeypatch.setenv("RANK", "0")
    assert main(["test", str(tmp_path / "no_run"), "-o", str(tmp_path / "eval")]) == 2
