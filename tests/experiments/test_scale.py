"""`dpdiff scale`: nested category subsets, both methods, Table-2 files with a Delta row, plot, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dpdiff.cli import main
from dpdiff.data.synthetic import category_specs, read_marker
from dpdiff.experiments import scale as scale_mod
from dpdiff.experiments.scale import DONE_FILE, METHODS, ScaleSettings, count_dir, parse_counts, run_scale
from dpdiff.metrics.tables import TABLE_COLUMNS

TINY_ARGS = [
    "--counts",
    "2,3",
    "--images-per-category",
    "3",
    "--test-good-per-category",
    "1",
    "--test-defect-per-category",
    "2",
    "--steps",
    "4",
    "--device",
    "cpu",
]


@pytest.fixture(scope="session")
def tiny_set(tiny_set_args) -> list[str]:
    """The tiny config (tests/conftest.py) as `--set` values, with one noise draw and a checkpoint every 2 steps
    (``--steps`` sets the step count)."""
    return [*tiny_set_args, "train.checkpoint_every=2", "inference.ensemble=1"]


@pytest.fixture(scope="module")
def scale_run(tmp_path_factory, tiny_set) -> Path:
    out = tmp_path_factory.mktemp("scale") / "out"
    assert main(["scale", "--output", str(out), *TINY_ARGS, "--set", *tiny_set]) == 0
    return out


@pytest.mark.integration
def test_outputs_nesting_and_delta(scale_run):
    out = scale_run
    names = [s.name for s in category_specs(3)]
    assert read_marker(out / "data")["categories"] == names  # generated once, for the largest count
    for n in (2, 3):
        done = json.loads((count_dir(out, n) / DONE_FILE).read_text())
        assert done["category_names"] == names[:n]  # nested: N=2 is the first two categories of N=3
        assert done["train_images"] == 3 * n and done["test_images"] == 3 * n
        assert done["train_steps"] == 4  # --steps: the same fixed count for every N
        assert (count_dir(out, n) / "run" / "model.safetensors").is_file()
        for m in METHODS:
            res = json.loads((count_dir(out, n) / m / "results.json").read_text())
            assert list(res["per_category"]) == names[:n]
            assert res["protocol"]["images_per_category"] == 3
    for m in METHODS:
        for ext in ("md", "csv", "json"):
            assert (out / f"scale_table_{m}.{ext}").is_file()
        table = json.loads((out / f"scale_table_{m}.json").read_text())
        assert list(table["rows"]) == ["N=2", "N=3", "Delta"]
        rows = table["rows"]
        for col in TABLE_COLUMNS:
            vals = [rows["N=2"][col], rows["N=3"][col]]
            assert rows["Delta"][col] == pytest.approx(max(vals) - min(vals))
        assert "warning" not in table  # every row evaluated with the same protocol
        assert [table["sources"][k]["categories"] for k in ("N=2", "N=3")] == [2, 3]
        md = (out / f"scale_table_{m}.md").read_text()
        assert "**Delta**" in md and "| N=3 | 3 |" in md
    png = (out / "scale_plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.integration
def test_rerun_skips_finished_counts_and_refuses_other_settings(scale_run, monkeypatch, tiny_set):
    out = scale_run
    stamps = {n: (count_dir(out, n) / DONE_FILE).stat().st_mtime_ns for n in (2, 3)}

    def fail(*a, **k):
        raise AssertionError("a finished count was run again")

    monkeypatch.setattr(scale_mod, "_evaluate_count", fail)
    assert main(["scale", "--output", str(out), *TINY_ARGS, "--set", *tiny_set]) == 0
    assert {n: (count_dir(out, n) / DONE_FILE).stat().st_mtime_ns for n in (2, 3)} == stamps
    # other settings: refused (exit 2 with a message), nothing touched
    args = [a if a != "4" else "5" for a in TINY_ARGS]  # --steps 5
    assert main(["scale", "--output", str(out), *args, "--set", *tiny_set]) == 2
    epochs = [a for a in TINY_ARGS if a not in ("--steps", "4")] + ["--epochs", "2"]  # the budget in epochs instead
    assert main(["scale", "--output", str(out), *epochs, "--set", *tiny_set]) == 2
    assert {n: (count_dir(out, n) / DONE_FILE).stat().st_mtime_ns for n in (2, 3)} == stamps


def test_settings_and_counts_parsing():
    assert parse_counts(["10,20", "40"]) == [10, 20, 40]
    assert ScaleSettings(counts=[40, 10, 10]).counts == [10, 40]
    with pytest.raises(ValueError):
        parse_counts(["ten"])
    with pytest.raises(ValueError):
        ScaleSettings(counts=[0])
    with pytest.raises(ValueError):
        ScaleSettings(test_defect_per_category=0)
    with pytest.raises(ValueError, match="not both"):
        ScaleSettings(steps=10)  # the default budget is in epochs
    with pytest.raises(ValueError):
        ScaleSettings(epochs=0)
    with pytest.raises(ValueError, match="coreset"):
        ScaleSettings(coreset=1.5)


def test_training_budget_grows_with_the_category_count():
    s = ScaleSettings(images_per_category=16, epochs=100)
    steps = [s.steps_for(n, batch_size=16, config_steps=1500) for n in (10, 20, 40, 80)]
    assert steps == [1000, 2000, 4000, 8000]  # the same 100 passes over 16 N images
    assert ScaleSettings(images_per_category=3, epochs=1.5).steps_for(3, batch_size=4, config_steps=9) == 4  # ceil
    assert ScaleSettings(epochs=None, steps=7).steps_for(80, batch_size=16, config_steps=1500) == 7
    assert ScaleSettings(epochs=None).steps_for(80, batch_size=16, config_steps=1500) == 1500


@pytest.mark.integration
def test_single_count_writes_no_delta_table(tmp_path, tiny_set):
    from dpdiff.config import load_config

    cfg = load_config(scale_mod.SCALE_PRESET)
    cfg = cfg.override({k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in tiny_set)})
    cfg = cfg.override({"inference.image_gaussian_weight": 0.0})  # 2 training images: the Gaussian needs 4
    s = ScaleSettings(counts=[1], images_per_category=2, test_good_per_category=1, test_defect_per_category=1, epochs=3)
    result = run_scale(cfg, tmp_path / "one", s, device="cpu", log=lambda *a: None)
    assert result["tables"] == {} and Path(result["plot"]).is_file()
    assert result["records"][1]["train_steps"] == 2  # ceil(3 epochs x 1 category x 2 images / batch 4)
    res = json.loads((count_dir(tmp_path / "one", 1) / "dpdiff" / "results.json").read_text())
    assert res["protocol"]["train_epochs"] == 3 and "train_steps" not in res["protocol"]
    assert not list((tmp_path / "one").glob("scale_table_*"))
