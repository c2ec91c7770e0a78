"""`dpdiff ablate`: grid files, train once / evaluate many, the table files, reuse and overwrite rules."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
import yaml

from dpdiff.cli import main
from dpdiff.config import Config
from dpdiff.experiments import ablate
from dpdiff.experiments.ablate import (
    grid_from_dict,
    load_grid,
    run_ablation,
    run_dir_for,
    training_key,
    training_status,
)
from dpdiff.metrics.tables import TABLE_COLUMNS
from dpdiff.model.checkpoint import CONFIG_FILE, STATE_FILE

ROWS = [
    {"name": "full", "set": {}},
    {"name": "full t=50", "set": {"inference.noise_step": 50}},
    {"name": "full, prototype scoring", "set": {"inference.scoring": "prototype"}},
    {
        "name": "L-Proto only",
        "set": {"model.diffusion": False, "model.use_global_prototypes": False, "inference.scoring": "prototype"},
    },
]

TINY_DATA_CHANGES = {"test_good_per_category": 3, "test_defect_per_category": 3}  # read by tiny_data


@pytest.fixture(scope="module")
def grids(tmp_path_factory, tiny_config) -> Path:
    """A folder with `presets/tiny.yaml` and grid files naming it relative to themselves' parents."""
    folder = tmp_path_factory.mktemp("grids")
    (folder / "presets").mkdir()
    (folder / "presets" / "tiny.yaml").write_text(yaml.safe_dump(tiny_config().to_dict()))
    (folder / "ablations").mkdir()
    (folder / "ablations" / "tiny_rows.yaml").write_text(
        yaml.safe_dump(
            {
                "base": "presets/tiny.yaml",  # found in a folder above the grid file
                "columns": {"Scoring": "inference.scoring", "Diffusion": "model.diffusion"},
                "rows": ROWS,
            },
            sort_keys=False,
        )
    )
    (folder / "ablations" / "tiny_sweep.yaml").write_text(
        yaml.safe_dump({"base": "presets/tiny.yaml", "sweep": "inference.noise_step", "values": [20, 60]})
    )
    return folder


class _CountingTrain:
    def __init__(self, real):
        self.real, self.calls = real, []

    def __call__(self, cfg, run_dir, **kw):
        self.calls.append((Path(run_dir).name, kw))
        return self.real(cfg, run_dir, **kw)


@pytest.fixture(scope="module")
def ablation(grids, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablate")
    counter = _CountingTrain(ablate.train)
    ablate.train = counter
    try:
        grid = load_grid(grids / "ablations" / "tiny_rows.yaml", {"data.root": str(tiny_data)})
        result = run_ablation(grid, out)
    finally:
        ablate.train = counter.real
    return result, out, counter.calls


@pytest.fixture()
def count_train(monkeypatch):
    counter = _CountingTrain(ablate.train)
    monkeypatch.setattr(ablate, "train", counter)
    return counter


@pytest.mark.integration
def test_inference_only_rows_share_one_training(ablation):
    result, out, calls = ablation
    # 4 rows, 2 training configurations: the three "full" rows differ only in inference.*
    assert len(calls) == 2 and len({name for name, _ in calls}) == 2
    assert sorted(result["trainings"].values()) == ["trained", "trained"]
    assert len(list((out / "runs").iterdir())) == 2
    assert set(result["evaluations"].values()) == {"evaluated"} and len(list((out / "evals").iterdir())) == 4
    assert [r["name"] for r in ROWS] == list(result["rows"])


@pytest.mark.integration
def test_table_files_written_and_parse(ablation):
    result, out, _ = ablation
    md = (out / "tiny_rows.md").read_text()
    assert "| Variant | Scoring | Diffusion | " + " | ".join(TABLE_COLUMNS) + " |" in md
    assert "| L-Proto only | prototype | × |" in md and "| full | reconstruction | ✓ |" in md
    rows = list(csv.DictReader(io.StringIO((out / "tiny_rows.csv").read_text())))
    assert [r["variant"] for r in rows] == [r["name"] for r in ROWS]
    doc = json.loads((out / "tiny_rows.json").read_text())
    assert list(doc["rows"]) == [r["name"] for r in ROWS] and doc["columns"] == list(TABLE_COLUMNS)
    assert doc["trainings"] == 2
    details = {d["name"]: d for d in doc["row_details"]}
    assert details["full t=50"]["overrides"] == {"inference.noise_step": 50}
    assert details["full"]["train_key"] == details["full t=50"]["train_key"] != details["L-Proto only"]["train_key"]
    assert details["full t=50"]["protocol"]["inference"]["noise_step"] == 50
    assert {"inference.noise_step", "inference.scoring"} <= set(doc["protocol_varies"])
    assert doc["protocol"]["evaluation_resolution"] == 64
    for r in rows:
        for k in TABLE_COLUMNS:
            assert float(r[k]) == pytest.approx(doc["rows"][r["variant"]][k])
            assert 0.0 <= float(r[k]) <= 1.0


@pytest.mark.integration
def test_prototype_scoring_gives_valid_metrics(ablation):
    result, out, _ = ablation
    for name in ("full, prototype scoring", "L-Proto only"):
        row = result["rows"][name]
        assert all(0.0 <= row[k] <= 1.0 for k in TABLE_COLUMNS), (name, row)
    doc = json.loads((out / "tiny_rows.json").read_text())
    per_cat = {d["name"]: d["per_category"] for d in doc["row_details"]}
    assert per_cat["full, prototype scoring"] != per_cat["full"]  # a different score, same model
    assert per_cat["full t=50"] != per_cat["full"]
    # the prototype-only run has no denoiser in its checkpoint
    run = Path(next(d for d in doc["row_details"] if d["name"] == "L-Proto only")["run_dir"])
    assert json.loads((run / CONFIG_FILE).read_text())["config"]["model"]["diffusion"] is False


@pytest.mark.integration
def test_rerun_is_refused_and_overwrite_reuses_everything(ablation, grids, tiny_data, count_train):
    result, out, _ = ablation
    grid = load_grid(grids / "ablations" / "tiny_rows.yaml", {"data.root": str(tiny_data)})
    before = (out / "tiny_rows.md").read_text()
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_ablation(grid, out)
    again = run_ablation(grid, out, overwrite=True)
    assert count_train.calls == []
    assert set(again["trainings"].values()) == {"reused"} and set(again["evaluations"].values()) == {"reused"}
    assert again["rows"] == result["rows"] and (out / "tiny_rows.md").read_text() == before


@pytest.mark.integration
def test_sweep_reuses_the_training_and_plots(ablation, grids, tiny_data, count_train):
    _, out, _ = ablation
    grid = load_grid(grids / "ablations" / "tiny_sweep.yaml", {"data.root": str(tiny_data)})
    assert [r.name for r in grid.rows] == ["noise_step=20", "noise_step=60"]
    result = run_ablation(grid, out)
    assert count_train.calls == [] and list(result["trainings"].values()) == ["reused"]  # the "full" model
    png = out / "tiny_sweep.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(io.StringIO((out / "tiny_sweep.csv").read_text())))
    assert [r["inference.noise_step"] for r in rows] == ["20", "60"]
    assert json.loads((out / "tiny_sweep.json").read_text())["sweep"] == {"keys": ["inference.noise_step"]}


def test_product_sweep_plot(tmp_path):
    grid = grid_from_dict(
        {"sweep": {"inference.noise_step": [20, 60, 100], "inference.ddim_steps": [1, 3]}},
        "prod",
        overrides={"data.root": str(tmp_path)},
    )
    assert grid.sweep_keys == ["inference.noise_step", "inference.ddim_steps"] and len(grid.rows) == 6
    assert len({r.train_key for r in grid.rows}) == 1  # inference-only: one model for all six rows
    rows = {
        r.name: {
            k: 0.5 + 0.001 * r.sweep["inference.noise_step"] * r.sweep["inference.ddim_steps"] for k in TABLE_COLUMNS
        }
        for r in grid.rows
    }
    png = ablate.plot_sweep(grid, rows, tmp_path / "prod.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000


@pytest.mark.integration
def test_interrupted_training_is_resumed(grids, tiny_data, tmp_path, count_train):
    grid = grid_from_dict(
        {
            "base": str(grids / "presets" / "tiny.yaml"),
            "rows": [{"name": "a", "set": {}}],
            "set": {"model.use_global_prototypes": False},
        },
        "resume",
        overrides={"data.root": str(tiny_data)},
    )
    row = grid.rows[0]
    run = run_dir_for(tmp_path, row)
    # a run stopped at its step-3 checkpoint: train 3 steps, then make the files claim the 6-step config
    short = Config.from_dict(row.config.to_dict())
    short.train.steps = 3
    ablate.train.real(short, run)
    payload = json.loads((run / CONFIG_FILE).read_text())
    payload["config"]["train"]["steps"] = 6
    (run / CONFIG_FILE).write_text(json.dumps(payload))
    state = torch.load(run / STATE_FILE, weights_only=True)
    state["config"]["train"]["steps"] = 6
    torch.save(state, run / STATE_FILE)
    assert training_status(run, row.config) == "partial"
    result = run_ablation(grid, tmp_path)
    assert result["trainings"] == {row.train_key: "resumed"}
    assert count_train.calls == [(run.name, {"resume": True})]
    assert json.loads((run / CONFIG_FILE).read_text())["step"] == 6


def test_training_key_ignores_test_time_and_run_settings():
    cfg = Config()
    key = training_key(cfg)
    for dotted in (
        {"inference.noise_step": 7},
        {"evaluation.resolution": 128},
        {"train.device": "cpu"},
        {"train.feature_cache": True},
        {"train.log_every": 1},
    ):
        assert training_key(cfg.override(dotted)) == key, dotted
    for dotted in (
        {"model.denoiser": "unet"},
        {"model.num_local_prototypes": 4},
        {"train.steps": 10},
        {"backbone.image_size": 128},
        {"data.root": "/elsewhere"},
    ):
        assert training_key(cfg.override(dotted)) != key, dotted


def test_grid_errors_are_caught_before_training(tmp_path):
    def grid(**spec):
        return grid_from_dict(spec, "g", overrides={"data.root": str(tmp_path)})

    with pytest.raises(ValueError, match="row 'x'.*unknown config key"):
        grid(rows=[{"name": "x", "set": {"model.nope": 1}}])
    with pytest.raises(ValueError, match="scoring=prototype"):
        grid(rows=[{"name": "x", "set": {"model.diffusion": False}}])
    with pytest.raises(ValueError, match="model.denoiser"):
        grid(rows=[{"name": "x", "set": {"model.denoiser": "resnet"}}])
    with pytest.raises(ValueError, match="either `rows` or `sweep`"):
        grid(rows=[{"name": "x"}], sweep="inference.noise_step", values=[1])
    with pytest.raises(ValueError, match="unique"):
        grid(rows=[{"name": "x"}, {"name": "x", "set": {"inference.noise_step": 5}}])
    with pytest.raises(ValueError, match="unknown grid key"):
        grid(rows=[{"name": "x"}], bogus=1)
    with pytest.raises(FileNotFoundError, match="base preset"):
        grid(base="nowhere/preset.yaml", rows=[{"name": "x"}])
    g = grid(sweep={"model.num_local_prototypes": [2, 4], "model.num_global_prototypes": [1, 2]})
    assert [r.name for r in g.rows] == [
        "num_local_prototypes=2, num_global_prototypes=1",
        "num_local_prototypes=2, num_global_prototypes=2",
        "num_local_prototypes=4, num_global_prototypes=1",
        "num_local_prototypes=4, num_global_prototypes=2",
    ]
    assert g.rows[3].config.model.num_local_prototypes == 4 and len({r.train_key for r in g.rows}) == 4


def test_shipped_grid_files_load():
    expected = {
        "table5_modules": (7, 6),
        "fig5_prototypes": (12, 12),
        "fig6_noise_step": (6, 1),
        "fig6_ddim_steps": (5, 1),
        "table9_denoiser": (3, 3),
        "ensemble_reduce": (6, 1),
        "seed_spread": (3, 3),
    }
    keys = {}
    for name, (n_rows, n_trainings) in expected.items():
        g = load_grid(name, {"data.root": "/data"})  # packaged grids, by name
        assert g.name == name and len(g.rows) == n_rows
        assert len({r.train_key for r in g.rows}) == n_trainings, name
        keys[name] = {r.name: r.train_key for r in g.rows}
    # the shared trainings the grid comments promise
    assert keys["table9_denoiser"]["DiT"] == keys["table5_modules"]["Full (DPDiff-AD)"]
    assert set(keys["fig6_noise_step"].values()) == set(keys["fig6_ddim_steps"].values())
    assert set(keys["ensemble_reduce"].values()) == set(keys["fig6_noise_step"].values())
    assert keys["seed_spread"]["seed=0"] == keys["table5_modules"]["Full (DPDiff-AD)"]


@pytest.mark.integration
def test_cli_dry_run_and_refusal(ablation, grids, tiny_data, capsys):
    _, out, _ = ablation
    args = [
        "ablate",
        "--grid",
        str(grids / "ablations" / "tiny_rows.yaml"),
        "--data",
        str(tiny_data),
        "--output",
        str(out),
    ]
    assert main(args + ["--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "4 rows, 2 trainings" in printed and "(reuse)" in printed and "(train)" not in printed
    assert main(args) == 2
    assert "already exist" in capsys.readouterr().err
