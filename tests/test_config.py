"""dpdiff/config.py: validation on every load and override, the weight-neutral key tags, one flattener, the
packaged presets (by name, with `base:` inheritance) and that every preset still resolves to the values of the
file it replaced."""

from __future__ import annotations

import ast
import dataclasses
import math
import typing
from pathlib import Path

import pytest
import yaml

from dpdiff import config as config_mod
from dpdiff.cli import FORMAT_CHOICES, main
from dpdiff.config import (
    LOCATION,
    RUNTIME,
    TEST_TIME,
    Config,
    ConfigError,
    allowed_values,
    config_keys,
    flatten_config,
    grid_names,
    is_weight_neutral,
    key_metadata,
    keys_with_role,
    load_config,
    preset_names,
    sections_with_role,
    weight_neutral_keys,
)

# ----------------------------------------------------------------------------- the presets' values

# What every packaged preset resolves to (the rest: the Config defaults). Written out as values, so a change of
# inheritance or of a default that moves a preset fails here. demo, mtd_lite0 and scale_lite0 take lite0_cpu's
# inference since issue #13; ablation_lite0 is the setting the committed ablation tables were measured with.
# Pieces several presets share (still the literal values, not read from the preset files).
LITE0 = {"name": "tf_efficientnet_lite0", "layers": [2, 3], "image_size": 256, "feature_stride": 16}
LITE0_DIT = {"hidden_dim": 128, "train_max_timestep": 300, "depth": 4, "num_heads": 4, "prediction": "v"}
LITE0_TRAIN = {
    "batch_size": 16,
    "lr": 0.001,
    "ema_decay": 0.999,
    "lr_schedule": "cosine",
    "warmup_steps": 100,
    "token_keep": 0.5,
    "full_token_steps": 300,
}
LITE0_CPU_INFERENCE = {
    "noise_step": 25,
    "knn_weight": 1.0,
    "image_gaussian_weight": 0.5,
    "ddim_steps": 1,
    "ensemble": 2,
    "antithetic": True,
    "smoothing_sigma": 4.0,
    "pool_size": 16,
}
OLD_PRESET_FILES = {
    "lite0_cpu": {
        "backbone": LITE0,
        "model": {
            "num_local_prototypes": 8,
            "num_global_prototypes": 2,
            "hidden_dim": 128,
            "output_skip": True,
            "prediction": "v",
            "train_max_timestep": 300,
            "depth": 4,
            "num_heads": 4,
            "mlp_ratio": 4.0,
        },
        "loss": {"lambda_local": 0.2, "lambda_global": 0.001},
        "train": {**LITE0_TRAIN, "steps": 3000, "log_every": 25, "checkpoint_every": 250},
        "inference": {**LITE0_CPU_INFERENCE, "ensemble_reduce": "error_of_mean"},
    },
    "demo": {
        "backbone": LITE0,
        "model": LITE0_DIT,
        "train": {**LITE0_TRAIN, "steps": 500, "log_every": 20, "checkpoint_every": 100},
        "inference": LITE0_CPU_INFERENCE,
    },
    "mtd_lite0": {
        "backbone": LITE0,
        "model": LITE0_DIT,
        "train": {**LITE0_TRAIN, "steps": 2000, "log_every": 25, "checkpoint_every": 250},
        "inference": {**LITE0_CPU_INFERENCE, "ensemble_reduce": "error_of_mean"},
    },
    # the pre-issue-#13 setting of the committed ablation tables (the old mtd_lite0 with the old defaults)
    "ablation_lite0": {
        "backbone": LITE0,
        "model": {**LITE0_DIT, "output_skip": False, "prediction": "eps"},
        "train": {
            "batch_size": 16,
            "lr": 0.001,
            "steps": 2000,
            "log_every": 25,
            "checkpoint_every": 250,
            "ema_decay": 0.0,
            "lr_schedule": "constant",
            "warmup_steps": 0,
            "token_keep": 1.0,
            "full_token_steps": 0,
        },
        "inference": {
            "knn_weight": 0.0,
            "image_gaussian_weight": 0.0,
            "noise_step": 100,
            "ddim_steps": 3,
            "ensemble": 4,
            "ensemble_reduce": "error_of_mean",
            "antithetic": False,
            "common_noise": False,
            "smoothing_sigma": 4.0,
            "pool_size": 16,
        },
    },
    "scale_lite0": {
        "backbone": {**LITE0, "image_size": 128},
        "model": LITE0_DIT,
        "train": {**LITE0_TRAIN, "steps": 1500, "log_every": 50, "checkpoint_every": 250},
        "inference": {**LITE0_CPU_INFERENCE, "smoothing_sigma": 2.0, "pool_size": 8},
    },
    "paper_dinov2_b448": {
        "backbone": {"name": "dinov2_vitb14_reg", "layers": [6, 7, 8, 9, 10, 11], "image_size": 448},
        "model": {
            "num_local_prototypes": 8,
            "num_global_prototypes": 2,
            "hidden_dim": 768,
            "depth": 6,
            "num_heads": 12,
            "num_timesteps": 1000,
            "beta_start": 0.0001,
            "beta_end": 0.02,
        },
        "loss": {"lambda_local": 0.2, "lambda_global": 0.001},
        "train": {"batch_size": 32, "lr": 0.0001, "steps": 20000, "feature_batch_size": 16},
        "inference": {"noise_step": 100, "ddim_steps": 3, "smoothing_sigma": 4.0, "pool_size": 32, "batch_size": 16},
    },
}
PAPER_INFERENCE = {
    "noise_step": 100,
    "ensemble": 1,
    "antithetic": False,
    "ddim_steps": 3,
    "ensemble_reduce": "mean_error",
    "knn_weight": 0.0,
    "image_gaussian_weight": 0.0,
}
PAPER_TRAINING = {"token_keep": 1.0, "full_token_steps": 0}


def _differences(a: dict, b: dict) -> dict:
    fa, fb = flatten_config(a), flatten_config(b)
    return {
        k: (fa.get(k, "<absent>"), fb.get(k, "<absent>"))
        for k in sorted(set(fa) | set(fb))
        if fa.get(k, "<absent>") != fb.get(k, "<absent>") or type(fa.get(k)) is not type(fb.get(k))
    }


@pytest.mark.parametrize("name", sorted(OLD_PRESET_FILES))
def test_every_preset_resolves_to_the_values_of_the_file_it_replaced(name):
    expected = Config.from_dict(OLD_PRESET_FILES[name]).to_dict()
    assert _differences(load_config(name).to_dict(), expected) == {}


def test_paper_protocol_is_lite0_cpu_with_the_papers_training_and_inference():
    lite, paper = load_config("lite0_cpu").to_dict(), load_config("paper_protocol").to_dict()
    want = {f"inference.{k}": (v, lite["inference"][k]) for k, v in PAPER_INFERENCE.items()}
    want |= {f"train.{k}": (v, lite["train"][k]) for k, v in PAPER_TRAINING.items()}
    assert _differences(paper, lite) == dict(sorted(want.items()))


def test_derived_presets_are_short():
    """The derived presets say `base: lite0_cpu` and give only what differs."""
    for name in ("demo", "mtd_lite0", "scale_lite0", "paper_protocol"):  # ablation_lite0 pins on purpose
        raw = yaml.safe_load((config_mod.PRESET_DIR / f"{name}.yaml").read_text())
        assert raw["base"] == "lite0_cpu", name
        lite = flatten_config(load_config("lite0_cpu").to_dict())
        given = flatten_config({k: v for k, v in raw.items() if k != "base"})
        same = [k for k, v in given.items() if lite[k] == v]
        assert same == [], f"{name} repeats lite0_cpu's values: {same}"


def test_packaged_presets_and_grids_are_listed_and_ship_in_the_wheel():
    assert set(preset_names()) == set(OLD_PRESET_FILES) | {"paper_protocol"}
    assert set(grid_names()) == {
        "ensemble_reduce",
        "fig5_prototypes",
        "fig6_ddim_steps",
        "fig6_noise_step",
        "seed_spread",
        "table5_modules",
        "table9_denoiser",
    }
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    package_data = pyproject["tool"]["setuptools"]["package-data"]["dpdiff"]
    assert {"configs/*.yaml", "configs/ablations/*.yaml"} <= set(package_data)


# ----------------------------------------------------------------------------- loading


def test_load_config_by_name_path_and_with_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"train": {"steps": 7}}))
    assert load_config(path).train.steps == 7 and load_config(str(path)).train.steps == 7
    assert load_config("demo", {"train.steps": 9}).train.steps == 9
    assert load_config("demo", train__steps=11, inference__ensemble=2).inference.ensemble == 2
    with pytest.raises(ConfigError, match="train.steps"):
        load_config("demo", {"train.steps": 0})


def test_unknown_preset_lists_the_available_ones_and_old_paths_say_the_name():
    with pytest.raises(FileNotFoundError, match="unknown preset 'nope'") as e:
        load_config("nope")
    assert all(n in str(e.value) for n in preset_names())
    with pytest.raises(FileNotFoundError, match="use the name 'lite0_cpu'"):
        load_config("configs/lite0_cpu.yaml")  # the folder the presets lived in before


def test_base_inheritance_by_name_and_relative_path(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "parent.yaml").write_text("base: lite0_cpu\ntrain:\n  steps: 40\n  lr: 0.002\nmodel:\n  depth: 2\n")
    (tmp_path / "sub" / "child.yaml").write_text("base: ../parent.yaml\ntrain:\n  steps: 50\n")
    cfg = load_config(tmp_path / "sub" / "child.yaml")
    lite = load_config("lite0_cpu")
    assert cfg.train.steps == 50  # the child wins
    assert cfg.train.lr == 0.002 and cfg.model.depth == 2  # the parent's other keys in the same sections stay
    assert cfg.train.batch_size == lite.train.batch_size == 16 and cfg.inference == lite.inference  # the grandparent
    assert Config.from_yaml(tmp_path / "sub" / "child.yaml") == cfg


def test_base_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: 3\n")
    with pytest.raises(ConfigError, match="base"):
        load_config(tmp_path / "d.yaml")


def test_a_missing_demo_preset_is_an_error_not_the_defaults(tmp_path, monkeypatch):
    from dpdiff.experiments.demo import demo_config

    assert demo_config() == load_config("demo") != Config()
    monkeypatch.setattr(config_mod, "PRESET_DIR", tmp_path)  # an installation without its package data
    with pytest.raises(FileNotFoundError, match="unknown preset 'demo'"):
        demo_config()


def test_cli_demo_applies_set_on_top_of_the_demo_preset(tmp_path, monkeypatch):
    from dpdiff.experiments import demo

    seen = []

    def fake_run_demo(output, cfg, **kw):
        seen.append(cfg)
        raise ConfigError("stop here")  # a user error: main() returns 2

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert main(["demo", "--output", str(tmp_path / "d"), "--set", "train.steps=3"]) == 2
    assert seen == [load_config("demo", {"train.steps": 3})]


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("train.steps", "1e3", ["train.steps", "expected int", "'1e3'", "1000"]),
        ("train.steps", 1000.0, ["train.steps", "expected int"]),
        ("train.steps", True, ["train.steps", "expected int"]),
        ("train.lr", "1e-4", ["train.lr", "expected float", "0.0001"]),
        ("model.use_local_prototypes", 1, ["model.use_local_prototypes", "bool"]),
        ("backbone.layers", [2, "3"], ["backbone.layers", "list of int"]),
        ("data.categories", ["01", 2], ["data.categories", "list of str", "quote"]),
        ("data.options", None, ["data.options", "mapping"]),
        ("model.denoiser", "resnet", ["model.denoiser", "'resnet'", "dit, unet, uvit"]),
        ("inference.ensemble_reduce", "median", ["inference.ensemble_reduce", "mean_error, error_of_mean"]),
        ("inference.scoring", "knn", ["inference.scoring", "reconstruction, prototype"]),
        ("inference.image_score", "max", ["inference.image_score", "pooled_max, top_percent_mean"]),
        ("evaluation.mask_resize", "bicubic", ["evaluation.mask_resize", "nearest, bilinear"]),
        ("train.lr_schedule", "linear", ["train.lr_schedule", "constant, cosine"]),
        ("data.format", "coco", ["data.format", "mvtec", "auto"]),
        ("train.steps", 0, ["train.steps", ">= 1", "got 0"]),
        ("inference.ddim_steps", 0, ["inference.ddim_steps", ">= 1"]),
        ("inference.ensemble", 0, ["inference.ensemble", ">= 1"]),
        ("inference.noise_step", -1, ["inference.noise_step", ">= 0"]),
        ("inference.noise_step", 1000, ["inference.noise_step", "model.num_timesteps (1000)"]),
        ("train.ema_decay", 1.0, ["train.ema_decay", ">= 0 and < 1"]),
        ("train.lr", 0, ["train.lr", "> 0"]),
        ("train.lr", math.nan, ["train.lr", "> 0"]),
        ("train.batch_size", 0, ["train.batch_size", ">= 1"]),
        ("inference.batch_size", 0, ["inference.batch_size", ">= 1"]),
        ("inference.top_percent", 0, ["inference.top_percent", "> 0 and <= 100"]),
        ("inference.top_percent", 100.5, ["inference.top_percent", "<= 100"]),
        ("backbone.image_size", 0, ["backbone.image_size", ">= 1"]),
        ("backbone.image_size", 25.5, ["backbone.image_size", "expected int"]),
        ("model.hidden_dim", 132, ["model.hidden_dim", "132", "model.num_heads"]),  # with 8 heads (below)
        ("model.beta_start", 0.5, ["model.beta_start", "beta_end"]),
    ],
)
def test_invalid_values_are_refused_naming_key_value_and_what_is_allowed(key, value, words):
    base = Config().override({"model.num_heads": 8}) if key == "model.hidden_dim" else Config()
    with pytest.raises(ConfigError) as e:
        base.override({key: value})
    assert isinstance(e.value, ValueError)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_hidden_dim_must_be_divisible_by_4_for_the_sincos_embedding():
    with pytest.raises(ConfigError, match="model.hidden_dim.*divisible by 4"):
        Config().override({"model.hidden_dim": 6, "model.num_heads": 2})


@pytest.mark.parametrize(
    "key, value",
    [
        ("train.lr", 1),
        ("inference.top_percent", 100),
        ("train.ema_decay", 0.0),
        ("inference.noise_step", 999),
        ("train.grad_clip", None),
        ("train.grad_clip", 0),
        ("model.train_max_timestep", None),
        ("backbone.layers", None),
        ("backbone.layers", (2, 3)),
        ("evaluation.resolution", None),
        ("model.num_global_prototypes", 0),
        ("data.options", {"resolution": 512}),
        ("data.categories", ["01"]),
    ],
)
def test_valid_edge_values_are_accepted_unchanged(key, value):
    cfg = Config().override({key: value})
    section, name = key.split(".")
    assert getattr(getattr(cfg, section), name) == value


def test_validation_runs_on_every_load(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: 1e3\n")  # YAML 1.1: text, not a number
    with pytest.raises(ConfigError, match=r"bad.yaml: train.steps: expected int"):
        Config.from_yaml(bad)
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(bad)
    with pytest.raises(ConfigError, match="inference.scoring"):
        Config.from_dict({"inference": {"scoring": "nope"}})
    with pytest.raises(KeyError, match="unknown config key"):
        Config().override({"train.nope": 1})


def test_cli_refuses_a_bad_set_value_at_once_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import dpdiff.workflows.train as train_mod

    def must_not_run(*a, **kw):
        raise AssertionError("training (data, backbone) started despite an invalid --set")

    monkeypatch.setattr(train_mod, "train", must_not_run)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    rc = main(
        [
            "train",
            "--config",
            "lite0_cpu",
            "--set",
            "train.steps=1e3",
            "--data",
            str(tmp_path / "no_data"),
            "--output",
            str(run),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "train.steps" in err and "expected int" in err and "1000" in err
    assert not run.exists() and list(tmp_path.iterdir()) == []


def test_cli_unknown_preset_is_an_error(tmp_path, capsys):
    assert main(["train", "--config", "lite0", "--data", str(tmp_path), "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'lite0'" in err and "lite0_cpu" in err


# ----------------------------------------------------------------------------- keys, roles, flattening


def test_each_choice_list_is_defined_once_in_dpdiff_choices():
    """The config's choices, the registries and the modules that implement a choice use the tuples of
    dpdiff/choices.py; a registry of implementations is checked against its tuple when it is imported."""
    from dpdiff import choices
    from dpdiff.data import FORMATS, geometry
    from dpdiff.data.images import MASK_RESIZE_MODES
    from dpdiff.inference.export import QUANTIZE_CHOICES
    from dpdiff.model import postprocess
    from dpdiff.model.denoisers import DENOISERS
    from dpdiff.training import trainer
    from dpdiff.training.loggers import LOGGERS

    declared = {
        "model.denoiser": choices.DENOISER_NAMES,
        "model.prediction": choices.PREDICTION_TARGETS,
        "train.logger": choices.LOGGERS,
        "train.lr_schedule": choices.LR_SCHEDULES,
        "inference.ensemble_reduce": choices.ENSEMBLE_REDUCTIONS,
        "inference.scoring": choices.SCORING_MODES,
        "inference.image_score": choices.IMAGE_SCORE_RULES,
        "evaluation.mask_resize": choices.MASK_RESIZE_MODES,
        "data.format": choices.FORMAT_CHOICES,
        "data.resize": choices.RESIZE_MODES,
    }
    assert {k for k in config_keys() if "choices" in key_metadata(k)} == set(declared)
    for key, names in declared.items():
        assert key_metadata(key)["choices"] is names and allowed_values(key) == names, key
    # the implementations use the same objects
    assert trainer.LR_SCHEDULES is choices.LR_SCHEDULES
    assert postprocess.IMAGE_SCORE_RULES is choices.IMAGE_SCORE_RULES
    assert tuple(DENOISERS) == choices.DENOISER_NAMES
    assert geometry.RESIZE_MODES is choices.RESIZE_MODES
    # lists still written a second time outside dpdiff/choices.py (data, training/loggers.py, export, the command
    # line): kept in step here until those modules import the tuples
    assert set(FORMATS) == set(choices.DATA_FORMATS) and choices.FORMAT_CHOICES[-1] == choices.AUTO_FORMAT
    assert set(FORMAT_CHOICES) == set(choices.FORMAT_CHOICES)
    assert tuple(MASK_RESIZE_MODES) == choices.MASK_RESIZE_MODES
    assert tuple(LOGGERS) == choices.LOGGERS
    assert tuple(QUANTIZE_CHOICES) == choices.QUANTIZE_CHOICES


# Literal copies of a dpdiff/choices.py list still written in a module that should import it instead (their
# owners' modules: data, training/loggers.py); remove an entry when its module imports the tuple.
KNOWN_COPIES: set[tuple[str, str]] = set()


def test_no_choice_list_is_written_a_second_time():
    """No module spells out the names of a choice list again (a tuple, list or set literal of the same names)."""
    from dpdiff import choices

    lists = {n: set(v) for n, v in vars(choices).items() if n.isupper() and isinstance(v, tuple) and len(v) > 1}
    lists["DATA_FORMATS"] = set(choices.DATA_FORMATS)
    package = Path(choices.__file__).parent
    copies = set()
    for path in sorted(package.rglob("*.py")):
        if path.name == "choices.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) > 1:
                names = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                copies |= {(path.relative_to(package).as_posix(), n) for n, v in lists.items() if names == v}
    assert copies <= KNOWN_COPIES, f"import these from dpdiff/choices.py instead: {sorted(copies - KNOWN_COPIES)}"


def test_a_registry_that_differs_from_its_list_fails_at_import():
    from dpdiff.choices import check_registry

    check_registry("ok", {"b": 1, "a": 2}, ("a", "b"))
    with pytest.raises(RuntimeError, match=r"model/denoisers.py DENOISERS.*missing: \['uvit'\].*not listed: \['x'\]"):
        check_registry("model/denoisers.py DENOISERS", ["dit", "unet", "x"], ("dit", "unet", "uvit"))


def test_every_key_has_help():
    for key in config_keys():
        text = key_metadata(key).get("help")
        assert isinstance(text, str) and text.strip() and "\n" not in text, key
    for section in dataclasses.fields(Config):
        assert section.metadata.get("help"), section.name


def test_weight_neutral_keys_are_the_run_time_keys_and_the_test_time_sections():
    runtime = {
        "train.device",
        "train.num_workers",
        "train.log_every",
        "train.checkpoint_every",
        "train.logger",
        "train.validate_every",
        "train.validation_images",
        "train.feature_batch_size",
        "train.feature_cache",
        "train.cache_dir",
    }
    assert keys_with_role(RUNTIME) == runtime
    assert keys_with_role(LOCATION) == {"data.root", "backbone.weights", "train.init_from"}
    assert sections_with_role(TEST_TIME) == ("inference", "evaluation")
    test_time = {k for k in config_keys() if k.split(".")[0] in ("inference", "evaluation")}
    assert weight_neutral_keys() == runtime | test_time
    assert is_weight_neutral("inference.noise_step") and is_weight_neutral("evaluation.some_future_key")
    assert not is_weight_neutral("train.steps") and not is_weight_neutral("data.root")


def _another_valid_value(cfg: Config, key: str):
    """A value of ``key`` other than ``cfg``'s that passes validation."""
    section, name = key.split(".")
    value = getattr(getattr(cfg, section), name)
    meta = key_metadata(key)
    hint = typing.get_type_hints(type(getattr(cfg, section)))[name]
    if "choices" in meta:
        candidates = [c for c in meta["choices"] if c != value]
    elif isinstance(value, bool):
        candidates = [not value]
    elif isinstance(value, int):
        candidates = [value + 1, value * 2, value + 4]
    elif isinstance(value, float):
        candidates = [value / 2, value + 0.1, 0.5]
    elif isinstance(value, str):
        candidates = ["cpu", value + "x"]
    elif isinstance(value, dict):
        candidates = [{"some_option": 1}]
    else:  # None of an optional key
        candidates = {
            "list[int] | None": [[1]],
            "list[str] | None": [["a"]],
            "str | None": ["/x"],
            "int | None": [8],
            "float | None": [0.5],
            "int | list[int] | None": [128, [128, 256]],
            "list[float] | None": [[0, 0, 16, 16], [0.0, 0.0, 0.5, 0.5]],
            "dict | None": [{"tile": [64, 64], "overlap": 0.25}],
        }[str(hint).replace("typing.", "")]
    for c in candidates:
        try:
            cfg.override({key: c})
        except ConfigError:
            continue
        if c != value:
            return c
    raise AssertionError(f"no other valid value for {key}")


def test_training_key_resume_and_scale_use_the_tags():
    from dpdiff.experiments import scale
    from dpdiff.experiments.ablate import TRAINING_KEY_IGNORED, training_key
    from dpdiff.model.checkpoint import RESUME_MUTABLE_KEYS, config_differences

    cfg = Config()
    key = training_key(cfg)
    assert TRAINING_KEY_IGNORED == weight_neutral_keys()
    assert RESUME_MUTABLE_KEYS == weight_neutral_keys() | {
        "data.root",
        "backbone.weights",
        "train.init_from",
        "train.steps",
    }
    scale_kept = flatten_config(scale._comparable_config(cfg.to_dict()))
    for k in config_keys():
        changed = cfg.override({k: _another_valid_value(cfg, k)})
        # the ablation training key: every key but the weight-neutral ones
        assert (training_key(changed) == key) == is_weight_neutral(k), k
        # resume: also the file locations and the length may change
        allowed = is_weight_neutral(k) or k in ("data.root", "backbone.weights", "train.init_from", "train.steps")
        assert (config_differences(cfg.to_dict(), changed.to_dict()) == []) == allowed, k
        # a scale folder: everything but the run-time keys and the data keys scale sets itself
        assert (k in scale_kept) == (k not in keys_with_role(RUNTIME) | scale.SCALE_OWN_KEYS), k


def test_one_flattener_keeps_mapping_values_whole():
    d = Config().override({"data.options": {"resolution": 512}}).to_dict()
    flat = flatten_config(d)
    assert list(flat) == config_keys()
    assert flat["data.options"] == {"resolution": 512} and flat["model.depth"] == 4


def _dpdiff_imports(module) -> set[str]:
    tree = ast.parse(Path(module.__file__).read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0]
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    return {n for n in names if n == "dpdiff" or n.startswith("dpdiff.")}


def test_config_imports_no_other_dpdiff_module():
    """config.py is imported by the model and everything above it: it must not import them back. Its helpers
    sit at the bottom with it: the choice lists import nothing, the value checks only the errors."""
    from dpdiff import choices, config_checks

    assert _dpdiff_imports(config_mod) <= {"dpdiff.choices", "dpdiff.config_checks", "dpdiff.utils.errors"}
    assert _dpdiff_imports(choices) == set()
    assert _dpdiff_imports(config_checks) <= {"dpdiff.utils.errors"}
