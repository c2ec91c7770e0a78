"""Validation while training (train.validate_every, training/validation.py): metrics on a fixed sample of test
images every N steps and at the last one, in RUN/validation.csv and the TensorBoard events, scored with the weights
inference uses; kept on resume; off by default; skipped with a warning where there is no labelled test split."""

from __future__ import annotations

import csv
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from dpdiff.cli import main
from dpdiff.data.readers import load_samples
from dpdiff.data.types import Sample
from dpdiff.inference.detector import Detector, score_dataset, scoring_dataset
from dpdiff.model.checkpoint import read_run_config
from dpdiff.training.validation import validation_metrics, validation_samples
from dpdiff.utils.run_files import MODEL_FILE, TENSORBOARD_DIR, VALIDATION_FILE

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("single_thread")]

STEPS = ("train.steps=20", "train.checkpoint_every=10", "train.log_every=5")


def _train(data: Path, run: Path, tiny_set_args, *settings: str, resume: bool = False) -> int:
    args = ["train", "--data", str(data), "--output", str(run), "--set", *tiny_set_args, *STEPS, *settings]
    return main([*args, "--resume"] if resume else args)


def _rows(run: Path) -> list[dict]:
    with open(run / VALIDATION_FILE, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory, tiny_set_args) -> dict[str, Path]:
    """The same 20-step training twice: with validation every 10 steps (and TensorBoard), and without."""
    root = tmp_path_factory.mktemp("validation")
    out = {"validated": root / "validated", "plain": root / "plain"}
    logger = "train.logger=tensorboard" if _has_tensorboard() else "train.logger=none"
    assert _train(tiny_data, out["validated"], tiny_set_args, "train.validate_every=10", logger) == 0
    assert _train(tiny_data, out["plain"], tiny_set_args) == 0
    return out


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def test_rows_at_every_interval_and_at_the_last_step(runs):
    rows = _rows(runs["validated"])
    assert [int(r["step"]) for r in rows] == [10, 20]
    for r in rows:
        assert 0.0 <= float(r["I-AUROC"]) <= 1.0
        assert 0.0 <= float(r["P-AUROC"]) <= 1.0  # the synthetic defects have masks
        assert int(r["images"]) == 8  # every test image of the tiny set (2 + 2 per category, under the 64 asked)


def test_off_by_default_and_the_weights_do_not_depend_on_it(runs):
    assert not (runs["plain"] / VALIDATION_FILE).exists()
    a, b = load_file(runs["validated"] / MODEL_FILE), load_file(runs["plain"] / MODEL_FILE)
    assert a.keys() == b.keys()
    for k in a:  # scoring the EMA weights in between steps neither moves them nor the training's random draws
        assert torch.equal(a[k], b[k]), k
    assert (runs["validated"] / "loss_history.csv").read_text() == (runs["plain"] / "loss_history.csv").read_text()


def test_tensorboard_events_hold_the_validation_metrics(runs):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="the tensorboard package is not installed"
    )
    acc = event_accumulator.EventAccumulator(str(runs["validated"] / TENSORBOARD_DIR))
    acc.Reload()
    assert {"val/I-AUROC", "val/P-AUROC", "loss/total"} <= set(acc.Tags()["scalars"])
    events = acc.Scalars("val/I-AUROC")
    rows = _rows(runs["validated"])
    assert [e.step for e in events] == [10, 20]
    assert [e.value for e in events] == pytest.approx([float(r["I-AUROC"]) for r in rows], abs=1e-6)


def test_the_last_row_is_what_the_saved_inference_model_scores(runs):
    """The trainer validates with the weights inference uses (the EMA's: train.ema_decay is on in the tiny set)
    and the run's inference settings: scoring the same images with the saved run gives the same metrics (P-AUROC
    over every pixel of 8 maps is fine-grained enough to tell other weights apart)."""
    run = runs["validated"]
    cfg, _ = read_run_config(run)
    assert cfg.train.ema_decay > 0
    test = load_samples(cfg.data.format, Path(cfg.data.root), cfg.data.categories, "test", **cfg.data.options)
    samples = validation_samples(test, cfg.train.validation_images, cfg.train.seed)
    detector = Detector.load(run, device="cpu")
    maps, scores, labels, masks, _ = score_dataset(
        detector, scoring_dataset(detector, samples), cfg.inference.batch_size, "validation", seed=cfg.inference.seed
    )
    known = [s.mask_known for s in samples]
    expected = validation_metrics([s.category for s in samples], labels, scores, maps, masks, known)
    last = _rows(run)[-1]
    assert float(last["I-AUROC"]) == pytest.approx(expected["I-AUROC"], abs=1e-6)
    assert float(last["P-AUROC"]) == pytest.approx(expected["P-AUROC"], abs=1e-6)


def test_resume_keeps_the_earlier_rows_and_drops_those_past_the_checkpoint(tiny_data, tmp_path, tiny_set_args):
    run = tmp_path / "run"
    assert _train(tiny_data, run, tiny_set_args, "train.validate_every=10", "train.steps=10") == 0
    first = (run / VALIDATION_FILE).read_text().splitlines()
    assert [line.split(",")[0] for line in first[1:]] == ["10"]
    # a validation written after the last checkpoint (the run stopped before the next one): made by weights the
    # resumed run trains again, so it goes
    (run / VALIDATION_FILE).write_text("\n".join([*first, "15,0.5,0.5,8,0.1"]) + "\n")
    assert _train(tiny_data, run, tiny_set_args, "train.validate_every=10", resume=True) == 0
    lines = (run / VALIDATION_FILE).read_text().splitlines()
    assert lines[:2] == first  # the step-10 row as it was written (its timing included: not scored again)
    assert [line.split(",")[0] for line in lines[1:]] == ["10", "20"]


def test_a_run_stopped_before_its_checkpoints_validation_scores_it_on_resume(tiny_data, tmp_path, tiny_set_args):
    run = tmp_path / "run"
    assert _train(tiny_data, run, tiny_set_args, "train.validate_every=10", "train.steps=10") == 0
    before = _rows(run)[0]
    (run / VALIDATION_FILE).unlink()  # stopped after the step-10 checkpoint, before its validation was written
    assert _train(tiny_data, run, tiny_set_args, "train.validate_every=10", resume=True) == 0
    rows = _rows(run)
    assert [int(r["step"]) for r in rows] == [10, 20]
    for key in ("I-AUROC", "P-AUROC"):  # the same weights, images and noise draws: the same numbers
        assert float(rows[0][key]) == pytest.approx(float(before[key]), abs=1e-9)


def test_a_data_set_without_test_images_warns_once_and_trains(tiny_data, tmp_path, tiny_set_args, caplog):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    for test_dir in data.glob("*/test"):
        shutil.rmtree(test_dir)
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="dpdiff"):
        assert _train(data, run, tiny_set_args, "train.validate_every=10") == 0
    warnings = [r for r in caplog.records if r.name == "dpdiff.training.validation" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "test" in warnings[0].getMessage()
    assert (run / MODEL_FILE).is_file() and not (run / VALIDATION_FILE).exists()


# ------------------------------------------------------------------ the sample and the metrics (no training)


def _sample(category: str, label: int, i: int) -> Sample:
    return Sample(Path(f"/d/{category}/{label}/{i:03d}.png"), None, label, "good" if label == 0 else "bad", category)


def test_the_sample_alternates_normal_and_defective_per_category_and_depends_on_the_seed():
    pool = [_sample(c, label, i) for c in ("a", "b", "c") for label in (0, 1) for i in range(10 if label else 30)]
    picked = validation_samples(pool, 12, seed=0)
    assert len(picked) == 12
    for c in ("a", "b", "c"):
        labels = [s.label for s in picked if s.category == c]
        assert sorted(labels) == [0, 0, 1, 1]  # stratified: 2 rounds of (normal, defective) per category
    assert validation_samples(pool, 12, seed=0) == picked
    assert validation_samples(pool, 12, seed=1) != picked
    # fewer defective images than rounds: the normal ones fill the budget, nothing is drawn twice
    few = [_sample("a", 0, i) for i in range(10)] + [_sample("a", 1, 0)]
    picked = validation_samples(few, 6, seed=0)
    assert sorted(s.label for s in picked) == [0, 0, 0, 0, 0, 1] and len(set(picked)) == 6
    assert len(validation_samples(few, 100, seed=0)) == 11


def test_metrics_are_the_mean_over_the_categories_where_they_are_defined():
    categories = ["a"] * 4 + ["b"] * 4 + ["c"] * 2
    labels = np.array([0, 0, 1, 1, 0, 0, 1, 1, 0, 0])
    scores = np.array([0.1, 0.2, 0.8, 0.9, 0.5, 0.9, 0.1, 0.6, 0.3, 0.4])  # a: 1.0, b: 0.25, c: one class only
    maps = np.zeros((10, 4, 4), np.float32)
    masks = np.zeros((10, 4, 4), bool)
    masks[2, 0, 0] = True  # a's defect pixel; b has no known mask
    maps[2, 0, 0] = 1.0
    known = [True] * 6 + [False, False, True, True]
    out = validation_metrics(categories, labels, scores, maps, masks, known)
    assert out["I-AUROC"] == pytest.approx((1.0 + 0.25) / 2)
    assert out["P-AUROC"] == pytest.approx(1.0)  # category a only
    none = validation_metrics(["a", "a"], np.array([0, 0]), np.array([0.1, 0.2]), maps[:2], masks[:2], [True] * 2)
    assert none == {"I-AUROC": None, "P-AUROC": None}


# ------------------------------------------------------------------ the HTML report links the run's curves


def test_the_report_links_the_runs_curves(runs):
    run = runs["validated"]
    assert main(["test", str(run)]) == 0
    page = (run / "eval" / "report.html").read_text(encoding="utf-8")
    assert 'href="../loss_history.csv"' in page and 'href="../validation.csv"' in page
    if (run / TENSORBOARD_DIR).is_dir():
        assert f"tensorboard --logdir {run / TENSORBOARD_DIR}" in page


def test_training_links_name_only_what_the_run_has(tmp_path):
    from dpdiff.viz.report.build import training_links

    run, html_dir = tmp_path / "runs" / "a", tmp_path / "reports" / "x"
    run.mkdir(parents=True)
    html_dir.mkdir(parents=True)
    assert training_links(run, html_dir) == ""
    (run / "loss_history.csv").write_text("step,loss\n")
    (run / TENSORBOARD_DIR).mkdir()  # a folder without event files: no command
    links = training_links(run, html_dir)
    assert 'href="../../runs/a/loss_history.csv"' in links and "validation.csv" not in links
    assert "tensorboard --logdir" not in links
    assert (html_dir / "../../runs/a/loss_history.csv").resolve() == (run / "loss_history.csv").resolve()
    (run / VALIDATION_FILE).write_text("step\n")
    (run / TENSORBOARD_DIR / "events.out.tfevents.1.host").write_bytes(b"")
    links = training_links(run, html_dir)
    assert 'href="../../runs/a/validation.csv"' in links
    assert f"<code>tensorboard --logdir {run / TENSORBOARD_DIR}</code>" in links


# ------------------------------------------------------------------ data parallel

TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.skipif(not TORCHRUN.exists(), reason=f"torchrun not found at {TORCHRUN}")
def test_under_torchrun_rank_0_validates_and_the_others_wait(tiny_data, tmp_path, tiny_config, subprocess_env):
    cfg = tiny_config(tiny_data)
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.validate_every = 6, 3, 3
    cfg.train.device = "cpu"
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    run = tmp_path / "ddp"
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "dpdiff.cli", "train"]
    res = subprocess.run(
        [*command, "--config", str(cfg_path), "--output", str(run)],
        env=subprocess_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert [int(r["step"]) for r in _rows(run)] == [3, 6]
    assert all(0.0 <= float(r["I-AUROC"]) <= 1.0 for r in _rows(run))
    output = res.stdout + res.stderr
    assert output.count("step 3 validation") == 1 and output.count("step 6 validation") == 1  # rank 0 only


def test_overwrite_removes_the_old_runs_curves(tmp_path):
    from dpdiff.training.trainer import prepare_run_dir

    run = tmp_path / "run"
    (run / TENSORBOARD_DIR).mkdir(parents=True)
    (run / TENSORBOARD_DIR / "events.out.tfevents.1.host").write_bytes(b"old")
    (run / VALIDATION_FILE).write_text("step,I-AUROC,P-AUROC,images,seconds\n10,0.5,0.5,8,0.1\n")
    with pytest.raises(FileExistsError, match="--overwrite"):  # validation.csv alone marks a run folder
        prepare_run_dir(run, overwrite=False, resume=False)
    prepare_run_dir(run, overwrite=True, resume=False)
    assert not (run / VALIDATION_FILE).exists() and not (run / TENSORBOARD_DIR).exists()


def test_a_resumed_tensorboard_log_hides_the_earlier_runs_later_steps(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="the tensorboard package is not installed"
    )
    from dpdiff.training.loggers import build_logger

    first = build_logger("tensorboard", tmp_path)
    for step in (10, 20, 30):  # the run went on past its step-20 checkpoint, then stopped
        first.log(step, {"val/I-AUROC": step / 100})
    first.close()
    resumed = build_logger("tensorboard", tmp_path, purge_step=21)
    resumed.log(30, {"val/I-AUROC": 0.9})
    resumed.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    acc.Reload()
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("val/I-AUROC")] == [(10, 0.1), (20, 0.2), (30, 0.9)]
