"""Adding a category to a trained run (``train.init_from``, ``dpdiff train --init-from``): the new run starts from
RUN's weights, knows the union of the categories and scores all of them, keeps RUN's held-out images held out,
refuses a run it cannot continue, resumes exactly and trains data-parallel like one process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dpdiff.cli import main
from dpdiff.model.checkpoint import CONFIG_FILE, MODEL_FILE, load_model, load_train_state, read_run_config
from dpdiff.training import distributed as D
from dpdiff.training.init_from import add_category_config, replay_batch_rows, replay_subset
from dpdiff.training.inputs import image_ids, split_samples
from dpdiff.training.trainer import Trainer
from dpdiff.utils.errors import ConfigError, UsageError
from dpdiff.workflows.evaluate import evaluate
from dpdiff.workflows.predict import predict
from dpdiff.workflows.train import train

TINY_DATA_CHANGES = {"num_categories": 3}  # read by tiny_data: synth_stripes, synth_nut (old), synth_leather (new)
OLD, NEW = ["synth_nut", "synth_stripes"], ["synth_leather"]
#: half of each category's 6 normal images held out, thresholds at a 25 % false-alarm rate (>= 3 held-out images)
CALIBRATION = {"train.calibration_fraction": 0.5, "train.calibration_fpr": 0.25}
TORCHRUN = Path(sys.executable).parent / "torchrun"
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("single_thread")


def _digest(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.iterdir()) if p.is_file()}


def _history(run: Path) -> str:
    return (run / "loss_history.csv").read_text()


def _same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    wa, wb = load_file(str(a / MODEL_FILE)), load_file(str(b / MODEL_FILE))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol, rtol=0), (k, float((wa[k] - wb[k]).abs().max()))


@pytest.fixture(scope="module")
def old_run(tiny_data, tmp_path_factory, tiny_config) -> Path:
    run = tmp_path_factory.mktemp("old") / "run"
    train(tiny_config(tiny_data).override({"data.categories": OLD, **CALIBRATION}), run)
    return run


@pytest.fixture(scope="module")
def added(old_run, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(the run that adds NEW to old_run with 3 steps, old_run's files' digests before it)."""
    before = _digest(old_run)
    run = tmp_path_factory.mktemp("added") / "run"
    train(add_category_config(old_run, steps=3, overrides={"data.categories": NEW}), run)
    return run, before


@pytest.mark.integration
def test_added_run_knows_the_union_and_scores_every_category(old_run, added, tiny_data, tmp_path):
    run, before = added
    meta = json.loads((run / CONFIG_FILE).read_text())
    assert meta["categories"] == sorted(OLD + NEW) and meta["step"] == 3
    assert meta["init_from"]["run"] == str(old_run) and meta["init_from"]["new_categories"] == NEW
    assert meta["init_from"]["old_categories"] == OLD and meta["init_from"]["replay_rows_per_batch"] == 2
    assert _digest(old_run) == before  # RUN is only read
    # it scores all three categories (the run's recorded union, from data.root) ...
    result = evaluate(run, output_dir=tmp_path / "eval", overlays_per_category=0, report=False)
    assert set(result["per_category"]) == set(OLD + NEW)
    # ... and predicts on images of an old and of the new category, with the union's calibrated thresholds
    calibration = json.loads((run / "calibration.json").read_text())
    assert calibration != json.loads((old_run / "calibration.json").read_text())
    for category in (OLD[0], NEW[0]):
        folder = tiny_data / category / "test" / "good"
        lines = predict(run, folder, tmp_path / f"pred_{category}").scores_csv.read_text().strip().splitlines()
        assert len(lines) == 1 + len(list(folder.glob("*.png")))


@pytest.mark.integration
def test_old_held_out_images_stay_held_out(old_run, added):
    run, _ = added
    old_cfg, new_cfg = read_run_config(old_run)[0], read_run_config(run)[0]
    old_kept, old_held = split_samples(old_cfg)
    kept, held = split_samples(new_cfg)
    trained = set(load_train_state(run)["data"]["images"])
    assert trained == set(image_ids(kept, new_cfg.data.root))
    assert not trained & set(image_ids(old_held, new_cfg.data.root))  # never trained on by either run
    assert {str(s.image_path) for s in old_held} <= {str(s.image_path) for s in held}  # and calibrated on
    assert {str(s.image_path) for s in old_kept} <= {str(s.image_path) for s in kept}  # replay: all of them
    assert {s.category for s in held} == set(OLD + NEW)


@pytest.mark.integration
def test_weights_start_from_the_run(old_run, tiny_data, tmp_path, tiny_config):
    cfg = add_category_config(old_run, overrides={"data.categories": NEW})
    trainer = Trainer(cfg, tmp_path / "a", D.DistInfo()).setup()
    start = trainer.model.state_dict()
    served = load_model(old_run)[0].state_dict()  # RUN's EMA weights and token statistics
    assert all(torch.equal(start[k], served[k]) for k in served)
    assert all(torch.equal(trainer.ema.module.state_dict()[k], served[k]) for k in served)  # the EMA too
    fresh = Trainer(tiny_config(tiny_data).override({"data.categories": NEW}), tmp_path / "b", D.DistInfo()).setup()
    assert not all(torch.equal(fresh.model.state_dict()[k], served[k]) for k in served)
    # every batch: 2 rows of RUN's categories, 2 of the new one
    old_rows, new_rows = trainer.replay
    categories = [trainer.samples[i].category for i in range(trainer.num_images)]
    assert {categories[i] for i in old_rows.tolist()} == set(OLD) and {categories[i] for i in new_rows.tolist()} == set(
        NEW
    )
    assert trainer.replay_batch == 2 and trainer.batch_size == 4


def test_replay_subset_and_batch_rows():
    class S:
        def __init__(self, category: str, i: int):
            self.category, self.i = category, i

    samples = [S(c, i) for i in range(5) for c in ("a", "b")]
    chosen = replay_subset(samples, 2, seed=0)
    assert [s.category for s in chosen].count("a") == 2 and [s.category for s in chosen].count("b") == 2
    assert chosen == sorted(chosen, key=samples.index)  # in their order
    assert replay_subset(samples, 2, seed=0) == chosen and replay_subset(samples, None, seed=0) == samples
    assert [replay_batch_rows(b, 0.5) for b in (1, 2, 4, 5, 16)] == [0, 1, 2, 2, 8]
    assert replay_batch_rows(16, 0.01) == 1 and replay_batch_rows(16, 0.99) == 15  # both kinds in every batch


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"model.hidden_dim": 64}, "model.hidden_dim: RUN 32, now 64"),
        ({"model.num_local_prototypes": 4}, "model.num_local_prototypes"),
        ({"model.prediction": "v"}, "model.prediction"),
        ({"backbone.image_size": 32}, "backbone.image_size"),
        ({"backbone.layers": [2]}, "backbone.layers"),
        ({"data.categories": [OLD[0], *NEW]}, f"'{OLD[0]}' already in"),
        ({"data.categories": None}, "--categories with the new ones"),
    ],
)
def test_an_incompatible_add_is_refused_before_training(old_run, tmp_path, overrides, match):
    cfg = add_category_config(old_run, overrides={"data.categories": NEW}).override(overrides)
    before = _digest(old_run)
    with pytest.raises(ConfigError, match=match):
        train(cfg, tmp_path / "new")
    assert not (tmp_path / "new").exists() and _digest(old_run) == before


def test_a_missing_run_or_not_a_run_is_refused(tmp_path, old_run):
    with pytest.raises(ConfigError, match="train.init_from: .*nope does not exist"):
        add_category_config(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a dpdiff run folder"):
        add_category_config(tmp_path / "empty")
    cfg = add_category_config(old_run, overrides={"data.categories": NEW})
    with pytest.raises(ConfigError, match="not a dpdiff run folder"):
        train(cfg.override({"train.init_from": str(tmp_path / "empty")}), tmp_path / "new")
    before = _digest(old_run)
    with pytest.raises(UsageError, match="never changes RUN"):  # not even with --overwrite
        train(cfg, old_run, overwrite=True)
    assert _digest(old_run) == before


@pytest.mark.integration
def test_interrupted_add_resumes_to_the_same_weights(old_run, tmp_path, monkeypatch):
    cfg = add_category_config(old_run, steps=6, overrides={"data.categories": NEW})  # checkpoints at 3 and 6
    train(cfg, tmp_path / "full")
    step = Trainer.step

    def interrupted(self, s):
        if s == 4:
            raise KeyboardInterrupt
        return step(self, s)

    monkeypatch.setattr(Trainer, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "part")
    assert load_train_state(tmp_path / "part")["step"] == 3
    monkeypatch.setattr(Trainer, "step", step)
    train(cfg, tmp_path / "part", resume=True)
    _same_weights(tmp_path / "full", tmp_path / "part")
    assert _history(tmp_path / "full") == _history(tmp_path / "part")


@pytest.mark.integration
def test_added_run_can_take_another_category(tiny_data, tmp_path, tiny_config):
    """A chain: RUN1 (one category) -> RUN2 (+1) -> RUN3 (+1); each keeps every earlier run's held-out images."""
    run1, run2, run3 = (tmp_path / f"run{i}" for i in (1, 2, 3))
    train(tiny_config(tiny_data).override({"data.categories": OLD[:1], **CALIBRATION, "train.steps": 2}), run1)
    train(add_category_config(run1, steps=2, overrides={"data.categories": OLD[1:]}), run2)
    train(add_category_config(run2, steps=2, overrides={"data.categories": NEW}), run3)
    assert json.loads((run3 / CONFIG_FILE).read_text())["categories"] == sorted(OLD + NEW)
    held1, held3 = (split_samples(read_run_config(r)[0])[1] for r in (run1, run3))
    trained3 = set(load_train_state(run3)["data"]["images"])
    assert trained3 and not trained3 & set(image_ids(held1, str(tiny_data)))
    assert {s.image_path for s in held1} <= {s.image_path for s in held3}


@pytest.mark.integration
def test_cli_adds_a_category(old_run, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--init-from", str(old_run), "--categories", *NEW, "--output", str(out)]) == 0
    meta = json.loads((out / CONFIG_FILE).read_text())
    old_steps = read_run_config(old_run)[0].train.steps
    assert meta["step"] == old_steps // 4 and meta["categories"] == sorted(OLD + NEW)  # RUN's config, 1/4 steps
    assert meta["config"]["train"]["init_from"] == str(old_run) and (out / "calibration.json").is_file()
    assert main(["train", "--resume", str(out)]) == 0  # finished: resuming changes nothing
    out2 = tmp_path / "cli2"
    argv = ["train", "--init-from", str(old_run), "--categories", *NEW, "--output", str(out2)]
    assert main([*argv, "--replay", "1", "--set", "train.steps=2"]) == 0
    meta2 = json.loads((out2 / CONFIG_FILE).read_text())
    assert meta2["step"] == 2 and meta2["init_from"]["replay_images"] == len(OLD)  # one per old category
    capsys.readouterr()
    assert main(["train", "--init-from", str(tmp_path / "nope"), "--categories", *NEW, "-o", str(tmp_path / "x")]) == 2
    assert "train.init_from" in capsys.readouterr().err
    assert main([*argv[:-1], str(tmp_path / "x"), "--set", "model.depth=2"]) == 2
    assert "model.depth: RUN 1, now 2" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.skipif(not TORCHRUN.exists(), reason=f"torchrun not found at {TORCHRUN}")
def test_torchrun_add_matches_one_process(old_run, tmp_path):
    """Under torchrun every rank starts from RUN's weights before DDP wraps the model: 2 processes give the weights
    of one."""
    cfg = add_category_config(old_run, steps=3, overrides={"data.categories": NEW, "train.device": "cpu"})
    cfg_path = tmp_path / "add.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    res = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "dpdiff.cli", "train", "--config", str(cfg_path)]
        + ["--set", "train.steps=3", "--output", str(tmp_path / "ddp")],
        env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert json.loads((tmp_path / "ddp" / CONFIG_FILE).read_text())["world_size"] == 2
    train(cfg, tmp_path / "single")
    _same_weights(tmp_path / "single", tmp_path / "ddp", atol=1e-4)
