"""Bad input gets a clear error naming the offending file, and nothing is lost (issue #6).

Through the public entry points (``train``, ``evaluate``, ``predict`` and the CLI ``main``). What the
data layer already tests on its own (image modes, corrupt files, mask size, missing masks, empty
categories: tests/data/*.py) is checked here end to end; the truncated-weights error of
``load_model`` and the refusal to overwrite a run are in test_pipeline.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import dpdiff.training.trainer as train_mod
from dpdiff.cli import main
from dpdiff.data.dataset import ImageDataset
from dpdiff.data.types import Sample
from dpdiff.features import extract_features
from dpdiff.model.checkpoint import CONFIG_FILE, MODEL_FILE, STATE_FILE, load_train_state
from dpdiff.model.dpdiff_ad import DPDiffAD
from dpdiff.training.trainer import TrainingDiverged, prepare_run_dir, train_features
from dpdiff.workflows.evaluate import evaluate
from dpdiff.workflows.predict import predict
from dpdiff.workflows.train import train

_BACKBONES: dict = {}
MODES = {"000.png": "I;16", "001.png": "P", "002.png": "RGBA", "003.png": "L"}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def cached_backbone(monkeypatch):
    """Build the (frozen, pure) backbone once per session: it is the slow part of every call here."""
    real = train_mod.build_backbone_from_config

    def cached(cfg):
        b = cfg.backbone
        key = (b.name, tuple(b.layers or ()), b.weights, b.image_size, b.feature_stride)
        if key not in _BACKBONES:
            _BACKBONES[key] = real(cfg)
        return _BACKBONES[key]

    monkeypatch.setattr(train_mod, "build_backbone_from_config", cached)


def _convert(path: Path, mode: str, twin: Path | None = None) -> None:
    """Re-save ``path`` in ``mode``; ``twin`` gets the 8-bit RGB image it must be read as."""
    rgb = Image.open(path).convert("RGB")
    if mode == "I;16":
        gray = rgb.convert("L")
        Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(path)  # full 16-bit range
        expected = gray.convert("RGB")
    elif mode == "P":
        pal = rgb.quantize(colors=64)
        pal.save(path)
        expected = pal.convert("RGB")
    elif mode == "RGBA":
        a = np.asarray(rgb.convert("RGBA")).copy()
        a[..., 3] = np.arange(a.shape[1], dtype=np.uint8)[None, :] * 4  # varying alpha: dropped, not composited
        Image.fromarray(a).save(path)
        expected = rgb
    else:
        rgb.convert(mode).save(path)
        expected = rgb.convert(mode).convert("RGB")
    assert Image.open(path).mode.startswith(mode[0]), (path, mode)
    if twin is not None:
        twin.parent.mkdir(parents=True, exist_ok=True)
        expected.save(twin)


@pytest.fixture(scope="module")
def odd_data(tiny_data, tmp_path_factory) -> Path:
    """The synthetic data with 16-bit, palette, RGBA and grayscale images and non-image files mixed in."""
    root = tmp_path_factory.mktemp("odd") / "data"
    shutil.copytree(tiny_data, root)
    good = root / "synth_nut" / "train" / "good"
    for name, mode in MODES.items():
        _convert(good / name, mode, twin=root.parent / "twins" / name)
    _convert(root / "synth_stripes" / "test" / "good" / "000.png", "RGBA")
    _convert(root / "synth_stripes" / "test" / "hole" / "000.png", "I;16")
    for folder in (good, root / "synth_stripes" / "test" / "good", root / "synth_nut" / "ground_truth" / "hole"):
        (folder / "readme.txt").write_text("not an image")
        (folder / "Thumbs.db").write_bytes(b"\x00junk")
        (folder / ".DS_Store").write_bytes(b"junk")
    return root


@pytest.fixture(scope="module")
def trained(odd_data, tmp_path_factory, tiny_config) -> Path:
    run = tmp_path_factory.mktemp("run") / "r"
    cfg = tiny_config(odd_data)
    cfg.train.steps = 2
    cfg.train.checkpoint_every = 1
    train(cfg, run)
    return run


@pytest.fixture
def data_copy(tiny_data, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    return root


def _cli_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err


def _write_cfg(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


# ------------------------------------------------------------------ images that must work
@pytest.mark.integration
def test_image_modes_and_stray_files_train_and_evaluate(trained, odd_data, tmp_path, tiny_config):
    meta = json.loads((trained / CONFIG_FILE).read_text())
    assert meta["num_train_images"] == 12  # the .txt/.db/hidden files are skipped, every image mode is read
    # each mode reaches the backbone as its 8-bit RGB twin (16-bit scaled by 1/257, palette expanded, alpha dropped)
    cfg = tiny_config(odd_data)
    backbone = train_mod.build_backbone_from_config(cfg)
    good = odd_data / "synth_nut" / "train" / "good"
    paths = [good / n for n in MODES] + [odd_data.parent / "twins" / n for n in MODES]
    ds = ImageDataset([Sample(p, None, 0, "good", "x") for p in paths], 64, backbone.mean, backbone.std)
    feats = extract_features(backbone, ds, 8, "cpu", dtype=torch.float32)
    for i, name in enumerate(MODES):
        assert torch.allclose(feats[i], feats[i + len(MODES)], atol=1e-4), (name, MODES[name])
    result = evaluate(trained, output_dir=tmp_path / "eval", overlays_per_category=1)
    assert set(result["per_category"]) == {"synth_nut", "synth_stripes"}
    rows = (tmp_path / "eval" / "image_scores.csv").read_text()
    assert "readme.txt" not in rows and str(odd_data / "synth_stripes" / "test" / "hole" / "000.png") in rows


# ------------------------------------------------------------------ bad images
@pytest.mark.integration
def test_corrupt_training_image_is_named(data_copy, tmp_path, capsys, tiny_config):
    bad = data_copy / "synth_nut" / "train" / "good" / "003.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated
    with pytest.raises(ValueError, match="corrupt or truncated") as e:
        train(tiny_config(data_copy), tmp_path / "run")
    assert str(bad) in str(e.value)
    assert not (tmp_path / "run" / STATE_FILE).exists()
    err = _cli_error(
        capsys,
        [
            "train",
            "--data",
            str(data_copy),
            "--output",
            str(tmp_path / "run2"),
            "--set",
            "backbone.image_size=64",
            "train.steps=1",
        ],
    )
    assert str(bad) in err and "corrupt or truncated" in err


@pytest.mark.integration
def test_non_image_file_with_image_extension_is_named(data_copy, tmp_path, tiny_config):
    fake = data_copy / "synth_stripes" / "train" / "good" / "notes.png"
    fake.write_text("these are my notes, not a picture")
    with pytest.raises(ValueError, match="cannot read image file") as e:
        train(tiny_config(data_copy), tmp_path / "run")
    assert str(fake) in str(e.value)


# ------------------------------------------------------------------ masks (evaluation)
@pytest.mark.integration
def test_mask_of_other_size_is_named(trained, data_copy, tmp_path, capsys):
    mask = data_copy / "synth_nut" / "ground_truth" / "hole" / "000_mask.png"
    Image.new("L", (48, 32), 255).save(mask)
    with pytest.raises(ValueError) as e:
        evaluate(trained, data_root=str(data_copy), output_dir=tmp_path / "eval")
    msg = str(e.value)
    assert str(mask) in msg and str(data_copy / "synth_nut" / "test" / "hole" / "000.png") in msg
    assert "48x32" in msg and "64x64" in msg
    assert not (tmp_path / "eval" / "results.json").exists()
    err = _cli_error(capsys, ["test", str(trained), "--data", str(data_copy), "-o", str(tmp_path / "e2")])
    assert str(mask) in err


@pytest.mark.integration
def test_missing_mask_is_named(trained, data_copy, tmp_path, capsys):
    (data_copy / "synth_stripes" / "ground_truth" / "scratch" / "000_mask.png").unlink()
    image = data_copy / "synth_stripes" / "test" / "scratch" / "000.png"
    with pytest.raises(FileNotFoundError, match="no ground-truth mask") as e:
        evaluate(trained, data_root=str(data_copy), output_dir=tmp_path / "eval")
    assert str(image) in str(e.value) and "000_mask.png" in str(e.value)
    err = _cli_error(capsys, ["test", str(trained), "--data", str(data_copy), "-o", str(tmp_path / "e2")])
    assert str(image) in err


# ------------------------------------------------------------------ categories and layouts
@pytest.mark.integration
def test_empty_category_and_category_without_normal_images(data_copy, tmp_path, capsys, tiny_config):
    empty = data_copy / "empty" / "train" / "good"
    empty.mkdir(parents=True)
    (empty / "readme.txt").write_text("x")
    cfg = tiny_config(data_copy)
    cfg.data.categories = ["synth_nut", "empty"]
    with pytest.raises(ValueError, match="no training images") as e:
        train(cfg, tmp_path / "run")
    assert str(empty) in str(e.value)
    (data_copy / "testonly" / "test" / "good").mkdir(parents=True)
    shutil.copy(data_copy / "synth_nut" / "test" / "good" / "000.png", data_copy / "testonly" / "test" / "good")
    err = _cli_error(
        capsys,
        [
            "train",
            "--data",
            str(data_copy),
            "--categories",
            "testonly",
            "--output",
            str(tmp_path / "run2"),
            "--set",
            "backbone.image_size=64",
        ],
    )
    assert "no training folder" in err and str(data_copy / "testonly" / "train" / "good") in err


@pytest.mark.integration
def test_unknown_layout_is_named(tmp_path, capsys, tiny_config):
    flat = tmp_path / "flat"
    (flat / "images").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (64, 64), (i * 40, 0, 0)).save(flat / f"{i}.png")
        Image.new("RGB", (64, 64), (0, i * 40, 0)).save(flat / "images" / f"{i}.png")
    with pytest.raises(ValueError) as e:  # "no category found under '<root>': expected ... train/good"
        train(tiny_config(flat), tmp_path / "run")
    msg = str(e.value)
    assert str(flat) in msg and ("train/good" in msg or "layout" in msg), msg
    err = _cli_error(capsys, ["train", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "run2")])
    assert str(tmp_path / "nowhere") in err and ("not a directory" in err or "does not exist" in err)


# ------------------------------------------------------------------ NaN / inf
@pytest.mark.integration
def test_nonfinite_features_name_the_image(data_copy, tmp_path, tiny_config):
    cfg = tiny_config(data_copy)
    backbone = train_mod.build_backbone_from_config(cfg)
    feats, samples = train_features(cfg, backbone, torch.device("cpu"))
    bad = feats.clone()
    bad[7, 3, 1, 2] = float("nan")
    bad[9, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite backbone features") as e:
        train(cfg, tmp_path / "run", features=bad, samples=samples)
    assert str(samples[7].image_path) in str(e.value) and "1 more" in str(e.value)
    assert not (tmp_path / "run" / MODEL_FILE).exists()


class _Overflowing(torch.nn.Module):
    """The real backbone, except that the features of image ``which`` overflow float16 storage."""

    def __init__(self, inner, which: int):
        super().__init__()
        self.inner, self.which, self.seen = inner, which, 0
        self.mean, self.std = inner.mean, inner.std

    def forward(self, x):
        f = self.inner(x)
        rows = torch.arange(self.seen, self.seen + x.shape[0])
        self.seen += x.shape[0]
        return torch.where((rows == self.which).view(-1, 1, 1, 1), f * 1e6 + 1e6, f)


@pytest.mark.integration
def test_backbone_overflow_during_extraction_names_the_image(data_copy, tmp_path, monkeypatch, tiny_config):
    cfg = tiny_config(data_copy)
    real = train_mod.build_backbone_from_config(cfg)
    monkeypatch.setattr(train_mod, "build_backbone_from_config", lambda c: _Overflowing(real, 4))
    with pytest.raises(ValueError, match="non-finite backbone features") as e:
        train(cfg, tmp_path / "run")
    assert str(data_copy / "synth_nut" / "train" / "good" / "004.png") in str(e.value)


@pytest.mark.integration
def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_copy, tmp_path, monkeypatch, capsys, tiny_config):
    cfg = tiny_config(data_copy)
    cfg.train.steps, cfg.train.checkpoint_every = 8, 2
    feats, samples = train_features(cfg, train_mod.build_backbone_from_config(cfg), torch.device("cpu"))
    clean = tmp_path / "clean"
    cfg4 = tiny_config(data_copy)
    cfg4.train.steps, cfg4.train.checkpoint_every = 4, 2
    train(cfg4, clean, features=feats, samples=samples)

    real = DPDiffAD.training_losses
    calls = {"n": 0}

    def poisoned(self, tokens, generator=None, noise=None):
        out = real(self, tokens, generator, noise)
        calls["n"] += 1
        if calls["n"] == 5:
            out = dict(out, loss=out["loss"] * float("nan"))
        return out

    monkeypatch.setattr(DPDiffAD, "training_losses", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 5") as e:
        train(cfg, run, features=feats, samples=samples)
    assert "last good checkpoint (step 4)" in str(e.value)
    assert load_train_state(run)["step"] == 4 and json.loads((run / CONFIG_FILE).read_text())["step"] == 4
    a = load_train_state(run)["model"]
    b = load_train_state(clean)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the kept weights are the good step-4 weights
    # the CLI reports it as an error, not a traceback
    calls["n"] = 0
    err = _cli_error(
        capsys, ["train", "--config", str(_write_cfg(cfg, tmp_path / "c.yaml")), "--output", str(tmp_path / "run_cli")]
    )
    assert "non-finite loss at step 5" in err


# ------------------------------------------------------------------ checkpoints
@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


@pytest.mark.integration
def test_resume_with_another_configuration_is_refused(run_copy, odd_data, tmp_path, capsys, tiny_config):
    cfg = tiny_config(odd_data)
    cfg.train.steps = 4
    cfg.model.hidden_dim = 64
    before = (run_copy / STATE_FILE).read_bytes()
    with pytest.raises(ValueError, match="different configuration") as e:
        train(cfg, run_copy, resume=True)
    assert str(run_copy / STATE_FILE) in str(e.value) and "model.hidden_dim: checkpoint 32, now 64" in str(e.value)
    err = _cli_error(
        capsys, ["train", "--resume", str(run_copy), "--config", str(_write_cfg(cfg, tmp_path / "other.yaml"))]
    )
    assert "model.hidden_dim" in err and STATE_FILE in err
    assert (run_copy / STATE_FILE).read_bytes() == before  # nothing lost


@pytest.mark.integration
def test_weights_from_another_configuration_are_named(run_copy, capsys):
    payload = json.loads((run_copy / CONFIG_FILE).read_text())
    payload["config"]["model"]["hidden_dim"] = 16
    (run_copy / CONFIG_FILE).write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="another config") as e:
        evaluate(run_copy)
    assert str(run_copy / MODEL_FILE) in str(e.value)
    assert str(run_copy / MODEL_FILE) in _cli_error(capsys, ["test", str(run_copy)])


@pytest.mark.integration
@pytest.mark.parametrize("name", [STATE_FILE, CONFIG_FILE, MODEL_FILE])
def test_truncated_checkpoint_files_are_named(run_copy, name, capsys):
    data = (run_copy / name).read_bytes()
    (run_copy / name).write_bytes(data[: len(data) // 2])
    command = ["train", "--resume", str(run_copy)] if name == STATE_FILE else ["test", str(run_copy)]
    err = _cli_error(capsys, command)
    assert str(run_copy / name) in err and ("truncated or corrupt" in err or "unreadable" in err)


@pytest.mark.integration
def test_resume_with_changed_training_images_is_refused(run_copy, odd_data, tmp_path, tiny_config):
    data = tmp_path / "data"
    shutil.copytree(odd_data, data)
    (data / "synth_nut" / "train" / "good" / "004.png").unlink()
    (data / "synth_nut" / "train" / "good" / "006.png").write_bytes(
        (data / "synth_nut" / "train" / "good" / "005.png").read_bytes()
    )
    cfg = tiny_config(odd_data)
    cfg.train.steps, cfg.train.checkpoint_every = 4, 1
    cfg.data.root = str(data)  # data.root may change on resume (moved data) but not the images
    with pytest.raises(ValueError, match="training images changed") as e:
        train(cfg, run_copy, resume=True)
    assert "synth_nut/train/good/004.png" in str(e.value) and str(run_copy / STATE_FILE) in str(e.value)


# ------------------------------------------------------------------ existing outputs
@pytest.mark.integration
def test_existing_outputs_are_not_overwritten(run_copy, odd_data, tmp_path, capsys, tiny_config):
    # evaluation results
    (run_copy / "eval").mkdir()
    (run_copy / "eval" / "results.json").write_text("{}")
    err = _cli_error(capsys, ["test", str(run_copy)])
    assert "already holds results" in err and str(run_copy / "eval") in err
    assert (run_copy / "eval" / "results.json").read_text() == "{}"
    # predictions
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "scores.csv").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite") as e:
        predict(run_copy, odd_data / "synth_nut" / "test" / "good", tmp_path / "pred")
    assert str(tmp_path / "pred" / "scores.csv") in str(e.value)
    # a run folder left by a run that was stopped before it wrote config.json
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(run_copy / STATE_FILE, partial / STATE_FILE)
    with pytest.raises(FileExistsError, match=STATE_FILE):
        train(tiny_config(odd_data), partial)
    with pytest.raises(ValueError, match="contradict"):
        train(tiny_config(odd_data), partial, overwrite=True, resume=True)
    # --overwrite starts again: the old resume state goes first, so a later --resume cannot pick it up
    prepare_run_dir(partial, overwrite=True, resume=False)
    assert not (partial / STATE_FILE).exists()
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "cannot resume" in capsys.readouterr().err
