"""User errors vs bugs: the dpdiff.utils.errors hierarchy, where it is raised, and what the command line does with it
(one line and exit 2 for a user error, the traceback for a bug); logging and progress flags of the CLI."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dpdiff import cli
from dpdiff.cli import evaluate as cli_evaluate
from dpdiff.cli import main
from dpdiff.utils import errors
from dpdiff.utils import progress as progress_mod
from dpdiff.utils.errors import (
    CheckpointError,
    ConfigError,
    ConfigKeyError,
    DataError,
    DpdiffError,
    RunFolderError,
    TrainingDiverged,
    UsageError,
)

#: each class, and the built-in type(s) the code raised before it existed (``except ValueError`` keeps working)
BUILTIN_PARENTS = {
    ConfigError: (ValueError,),
    ConfigKeyError: (ValueError, KeyError),
    UsageError: (ValueError,),
    DataError: (ValueError,),
    CheckpointError: (ValueError,),
    RunFolderError: (FileExistsError,),
    errors.MissingDependencyError: (ImportError,),
    TrainingDiverged: (FloatingPointError,),
}


@pytest.mark.parametrize("cls", list(BUILTIN_PARENTS), ids=lambda c: c.__name__)
def test_every_error_is_a_dpdiff_error_and_its_old_builtin_type(cls):
    e = cls("what is wrong with 'x.yaml' and what to do")
    assert isinstance(e, DpdiffError)
    for parent in BUILTIN_PARENTS[cls]:
        assert isinstance(e, parent)
    assert str(e) == "what is wrong with 'x.yaml' and what to do"  # no KeyError quotes, no errno formatting
    assert set(errors.__all__) >= {c.__name__ for c in BUILTIN_PARENTS}


def test_the_package_raises_the_shared_classes():
    from dpdiff import config
    from dpdiff.backbones import CheckpointError as BackboneCheckpointError
    from dpdiff.data.readers.layout import LayoutError
    from dpdiff.training.trainer import TrainingDiverged as TrainTrainingDiverged

    assert BackboneCheckpointError is CheckpointError and TrainTrainingDiverged is TrainingDiverged
    assert config.ConfigError is ConfigError
    e = LayoutError("expected 'root/bottle/train/good'", "root/bottle/train/good")
    assert isinstance(e, DataError) and isinstance(e, FileNotFoundError) and isinstance(e, ValueError)
    assert str(e) == "expected 'root/bottle/train/good'" and e.path == Path("root/bottle/train/good")


def test_user_errors_at_their_sites(tmp_path):
    from dpdiff.backbones import build_backbone
    from dpdiff.data.readers.mvtec import load_split
    from dpdiff.model.checkpoint import load_model
    from dpdiff.training.trainer import prepare_run_dir

    (tmp_path / "bottle" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no training folder"):
        load_split(tmp_path, "bottle", "train")
    with pytest.raises(ConfigError, match="unknown backbone 'resnet9000'"):
        build_backbone("resnet9000")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable checkpoint config"):
        load_model(run)
    with pytest.raises(RunFolderError, match="already holds a dpdiff run"):
        prepare_run_dir(run, overwrite=False, resume=False)
    with pytest.raises(UsageError, match="contradict"):
        prepare_run_dir(run, overwrite=True, resume=True)


def test_a_rank_rebuilds_the_nearest_portable_error_type():
    from dpdiff.data.readers.layout import LayoutError
    from dpdiff.training.distributed import _portable_type_name

    assert _portable_type_name(LayoutError("x")) == "DataError"  # LayoutError is not importable by name on rank 1
    assert _portable_type_name(TrainingDiverged("x")) == "TrainingDiverged"
    assert _portable_type_name(KeyError("x")) == "KeyError"

    class Custom(RuntimeError):
        pass

    assert _portable_type_name(Custom("x")) == "RuntimeError"


# ----------------------------------------------------------------------------- the command line


@pytest.fixture(autouse=True)
def _restore_output_settings():
    yield
    progress_mod.set_progress_enabled(True)
    dpdiff_logger = logging.getLogger("dpdiff")
    for h in [h for h in dpdiff_logger.handlers if isinstance(h, progress_mod.ProgressLogHandler)]:
        dpdiff_logger.removeHandler(h)
    dpdiff_logger.setLevel(logging.NOTSET)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("dpdiff: error: ")
    return err


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "no_run"
    assert main(["test", str(missing)]) == 2
    assert str(missing / "config.json") in _error_line(capsys)
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("model:\n  denoiser: resnet\n")
    assert main(["train", "--config", str(bad_cfg), "--output", str(tmp_path / "r")]) == 2
    assert "resnet" in _error_line(capsys)
    assert main(["train", "--output", str(tmp_path / "r"), "--set", "model.depth"]) == 2  # not KEY=VALUE
    assert "--set expects key=value" in _error_line(capsys)
    assert main(["table", "--kind", "scale", "-o", str(tmp_path / "t"), "just_a_path"]) == 2
    assert "expected NAME=PATH" in _error_line(capsys)
    assert main(["table", "--kind", "scale", "-o", str(tmp_path / "t"), f"A={tmp_path / 'gone.json'}"]) == 2
    assert str(tmp_path / "gone.json") in _error_line(capsys)  # FileNotFoundError: also one line


def test_a_multi_line_message_is_reported_on_one_line(monkeypatch, capsys):
    def fail(args):
        raise DataError("first line\n  second line\n")

    monkeypatch.setattr(cli_evaluate, "cmd_test", fail)
    assert main(["test", "run"]) == 2
    assert _error_line(capsys) == "dpdiff: error: first line; second line"


@pytest.mark.parametrize(
    "bug",
    [KeyError("bottle"), ValueError("shapes (3,) and (4,) differ"), TypeError("unsupported operand")],
    ids=lambda e: type(e).__name__,
)
def test_a_bug_propagates_with_its_traceback(monkeypatch, bug):
    def broken(args):
        raise bug

    monkeypatch.setattr(cli_evaluate, "cmd_test", broken)
    with pytest.raises(type(bug)) as info:
        main(["test", "run"])
    assert info.value is bug


def test_weights_are_passed_on_by_test_predict_and_report(monkeypatch, tmp_path):
    import dpdiff.workflows.reporting as ev

    seen: dict[str, object] = {}

    class Prediction:
        scores_csv = tmp_path / "scores.csv"

    def record(name, result):
        def fake(*args, **kwargs):
            seen[name] = kwargs.get("weights")
            return result

        return fake

    monkeypatch.setattr(ev, "evaluate_and_report", record("test", {"per_category": {}, "mean": {}, "output_dir": "e"}))
    monkeypatch.setattr(ev, "rebuild_report", record("report", {"html": "r.html", "files_dir": "f", "seconds": 0.0}))
    monkeypatch.setattr(ev, "predict_and_draw", record("predict", Prediction()))
    monkeypatch.setattr(cli_evaluate, "print_table", lambda result: None)
    w = str(tmp_path / "dinov2_vitb14_reg4_pretrain.pth")
    assert main(["test", "run", "--weights", w]) == 0
    assert main(["report", "run", "--weights", w]) == 0
    assert main(["predict", "run", "imgs", "-o", str(tmp_path / "p"), "--weights", w]) == 0
    assert seen == {"test": w, "report": w, "predict": w}


def test_test_weights_reach_the_backbone(tmp_path, capsys, tiny_config):
    """A run folder + ``--weights`` pointing nowhere: the error names that file, so the path got to the backbone."""
    import torch

    from dpdiff.features import build_backbone_from_config
    from dpdiff.model.checkpoint import save_checkpoint
    from dpdiff.model.dpdiff_ad import DPDiffAD

    cfg = tiny_config()
    backbone = build_backbone_from_config(cfg)
    torch.manual_seed(0)
    model = DPDiffAD(backbone.out_channels, backbone.grid_size(64), cfg.model, cfg.loss)
    run = tmp_path / "run"
    save_checkpoint(run, model, cfg, {"step": 0, "categories": ["x"]})
    gone = tmp_path / "elsewhere" / "lite0.pth"
    assert main(["test", str(run), "--weights", str(gone)]) == 2
    assert str(gone) in _error_line(capsys)
    assert main(["predict", str(run), str(tmp_path), "-o", str(tmp_path / "p"), "--weights", str(gone)]) == 2
    assert str(gone) in _error_line(capsys)


def test_log_level_flags_and_progress_switch(capsys, monkeypatch):
    monkeypatch.delenv(progress_mod.NO_PROGRESS_ENV, raising=False)
    log = logging.getLogger("dpdiff.inference.something")
    cli.configure_output()
    log.info("training 3 steps")
    log.debug("batch indices")
    err = capsys.readouterr().err
    assert "training 3 steps" in err and "INFO" in err and "batch indices" not in err
    assert progress_mod.progress_enabled()
    cli.configure_output()  # a second main() in the same process: still one line per record
    log.info("once")
    assert capsys.readouterr().err.count("once") == 1
    cli.configure_output(verbose=True)
    log.debug("batch indices")
    assert "batch indices" in capsys.readouterr().err
    cli.configure_output(quiet=True)
    log.info("training 3 steps")
    log.warning("left out 2 anomalous rows")
    err = capsys.readouterr().err
    assert "training" not in err and "left out 2 anomalous rows" in err
    assert not progress_mod.progress_enabled()  # --quiet also hides the bars
    cli.configure_output(no_progress=True)
    assert not progress_mod.progress_enabled()


def test_output_flags_parse_before_and_after_the_command():
    parser = cli.build_parser()
    a = parser.parse_args(["-q", "test", "run"])
    assert (a.verbose, a.quiet, a.no_progress) == (False, True, False)
    a = parser.parse_args(["test", "run", "--verbose", "--no-progress"])
    assert (a.verbose, a.quiet, a.no_progress) == (True, False, True)
    a = parser.parse_args(["--no-progress", "train", "--output", "x"])
    assert a.no_progress and not a.quiet
