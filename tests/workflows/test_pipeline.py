"""End-to-end on a tiny synthetic dataset: train -> checkpoint -> test -> predict, and the CLI."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import torch

from dpdiff.cli import main
from dpdiff.config import Config, load_config, preset_names
from dpdiff.model.checkpoint import MODEL_FILE, load_model
from dpdiff.utils.io import new_file_mode
from dpdiff.workflows.evaluate import evaluate
from dpdiff.workflows.predict import predict
from dpdiff.workflows.reporting import evaluate_and_report, predict_and_draw
from dpdiff.workflows.train import train

TINY_DATA_CHANGES = {"test_good_per_category": 3, "test_defect_per_category": 3}  # read by tiny_data


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory, tiny_config) -> Path:
    run = tmp_path_factory.mktemp("run") / "r"
    train(tiny_config(tiny_data), run)
    return run


@pytest.mark.integration
def test_train_writes_checkpoint_and_history(trained):
    assert (trained / MODEL_FILE).is_file()
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["step"] == 6 and len(cfg["categories"]) == 2
    assert (trained / "loss_history.csv").read_text().count("\n") == 4  # header + 3 rows
    assert not (trained / "loss_curves.png").exists()  # the engine draws nothing (`dpdiff train` plots them)
    model, config, _ = load_model(trained)
    assert config.backbone.image_size == 64 and model.grid_size == (4, 4)
    for name in (MODEL_FILE, "config.json", "train_state.pt", "loss_history.csv"):  # not mkstemp's 0600
        assert stat.S_IMODE((trained / name).stat().st_mode) == new_file_mode(), name


@pytest.mark.integration
def test_existing_run_is_not_overwritten(trained, tiny_data, tiny_config):
    before = (trained / MODEL_FILE).read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(tiny_data), trained)
    assert (trained / MODEL_FILE).read_bytes() == before


@pytest.mark.integration
def test_resume_continues_to_the_same_weights(tiny_data, tmp_path, tiny_config):
    cfg = tiny_config(tiny_data)
    full = tmp_path / "full"
    train(cfg, full)
    part = tmp_path / "part"
    cfg_short = tiny_config(tiny_data)
    cfg_short.train.steps = 3
    train(cfg_short, part)
    train(cfg, part, resume=True)
    a, _, _ = load_model(full)
    b, _, _ = load_model(part)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(va, vb, atol=1e-6), k


@pytest.mark.integration
def test_evaluate_writes_results_and_overlays(trained, tmp_path):
    out = tmp_path / "eval"
    result = evaluate(trained, output_dir=out, overlays_per_category=2)
    assert set(result["per_category"]) == {"synth_stripes", "synth_nut"}
    for name in ("results.json", "results.csv", "results.md", "image_scores.csv", "report_data.npz"):
        assert (out / name).is_file()
    # the engine keeps the overlay maps (2 defective + 1 normal per category) but draws nothing ...
    assert not (out / "overlays").exists() and not (out / "report.html").exists()
    items = result["overlays"]
    assert len(items) == 6 and {Path(i.file).parent.name for i in items} == {"synth_stripes", "synth_nut"}
    # ... `dpdiff test` (evaluate_and_report) draws them, with the same numbers
    again = evaluate_and_report(trained, output_dir=out, overlays_per_category=2, overwrite=True, report=False)
    assert again["per_category"] == result["per_category"]
    assert sorted(p.relative_to(out).as_posix() for p in (out / "overlays").rglob("*.png")) == sorted(
        i.file for i in items
    )
    for metrics in result["per_category"].values():
        assert all(0.0 <= metrics[k] <= 1.0 for k in metrics)
    with pytest.raises(FileExistsError):
        evaluate(trained, output_dir=out)


@pytest.mark.integration
def test_predict_on_a_folder(trained, tiny_data, tmp_path):
    folder = tiny_data / "synth_nut" / "test"
    prediction = predict(trained, folder, tmp_path / "pred")
    lines = prediction.scores_csv.read_text().strip().splitlines()
    assert lines[0] == "image,score,normalized_score,is_anomalous,max_pixel_score,defect_pixels,status"
    assert len(lines) == 1 + len(list(folder.rglob("*.png")))
    assert len(prediction.overlays) == len(lines) - 1 and not (tmp_path / "pred" / "overlays").exists()
    drawn = predict_and_draw(trained, folder, tmp_path / "pred2")  # `dpdiff predict`
    assert drawn.scores_csv.read_text() == prediction.scores_csv.read_text()
    assert len(list((tmp_path / "pred2" / "overlays").rglob("*.png"))) == len(lines) - 1


@pytest.mark.integration
def test_corrupt_checkpoint_is_a_clear_error(trained, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    data = (bad / MODEL_FILE).read_bytes()
    (bad / MODEL_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_model(bad)


@pytest.mark.integration
def test_cli_train_test_predict(tiny_data, tmp_path, capsys, tiny_config):
    cfg_path = tmp_path / "tiny.yaml"
    cfg = tiny_config(tiny_data).to_dict()
    cfg["data"]["root"] = None
    import yaml

    cfg_path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "cli_run"
    train_argv = ["train", "--config", str(cfg_path), "--data", str(tiny_data), "--output", str(run)]
    assert main([*train_argv, "--set", "train.steps=2"]) == 0
    assert (run / "loss_curves.png").is_file()  # drawn by the command, not by train()
    assert main(["test", str(run), "--overlays", "0"]) == 0
    assert (run / "eval" / "report.html").is_file() and not (run / "eval" / "overlays").exists()
    out = capsys.readouterr().out
    assert "| Category | I-AUROC |" in out and "mean" in out
    good = tiny_data / "synth_stripes" / "test" / "good"
    assert main(["predict", str(run), str(good), "-o", str(tmp_path / "p")]) == 0
    assert len(list((tmp_path / "p" / "overlays").glob("*.png"))) == 3
    # errors are reported, not raised, and name the problem
    assert main(train_argv) == 2
    assert "already holds a dpdiff run" in capsys.readouterr().err
    assert main(["test", str(tmp_path / "nope")]) == 2


def test_config_presets_load():
    presets = preset_names()  # packaged: dpdiff/configs/*.yaml
    assert {"lite0_cpu", "demo", "paper_dinov2_b448"} <= set(presets)
    for name in presets:
        load_config(name)
    with pytest.raises(ValueError, match="unknown key"):
        Config.from_dict({"model": {"not_a_key": 1}})


@pytest.mark.integration
def test_evaluation_protocol_options_change_resolution_and_are_recorded(trained, tmp_path):
    out = tmp_path / "proto"
    result = evaluate(
        trained,
        output_dir=out,
        overlays_per_category=1,
        inference_overrides={
            "evaluation.resolution": 32,
            "evaluation.mask_threshold": 0.5,
            "evaluation.mask_resize": "bilinear",
            "inference.image_score": "top_percent_mean",
            "top_percent": 2.0,
        },
    )
    saved = json.loads((out / "results.json").read_text())
    proto = saved["protocol"]
    assert proto["evaluation_resolution"] == 32 and proto["input_resolution"] == 64
    assert proto["mask_threshold"] == 0.5 and proto["mask_resize"] == "bilinear"
    assert proto["image_score_rule"] == "top_percent_mean" and "top 2.0%" in proto["image_score"]
    assert set(result["per_category"]) == {"synth_stripes", "synth_nut"}
    for metrics in result["per_category"].values():
        assert all(0.0 <= metrics[k] <= 1.0 for k in metrics)


@pytest.mark.integration
def test_test_time_overrides_cannot_change_the_model(trained, tmp_path):
    with pytest.raises(KeyError, match="only inference"):
        evaluate(trained, output_dir=tmp_path / "x", inference_overrides={"model.depth": 3})
    with pytest.raises(KeyError, match="unknown config key"):
        evaluate(trained, output_dir=tmp_path / "y", inference_overrides={"evaluation.nope": 1})
