"""FPS benchmark (paper Table 4): benchmark_fps and `dpdiff benchmark`, at tiny sizes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dpdiff.cli import main
from dpdiff.config import Config
from dpdiff.experiments.benchmark import benchmark_fps, format_fps_markdown, random_vit

TINY_VIT = dict(patch_size=14, embed_dim=32, depth=4, num_heads=2, init_values=1e-5)
KEYS = {
    "device",
    "device_name",
    "dtype",
    "torch_threads",
    "batch_size",
    "image_size",
    "backbone",
    "backbone_weights",
    "tokens",
    "dit",
    "noise_step",
    "ddim_steps",
    "ensemble",
    "backbone_fps",
    "full_fps",
    "fps_ratio",
    "backbone_ms_per_image",
    "full_ms_per_image",
    "timings",
    "warmup",
    "rounds",
    "statistic",
}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def lite_cfg(tiny_settings):
    """Factory: EfficientNet-Lite0 at 64 px with the tiny DiT of tests/conftest.py, then ``extra`` overrides."""
    tiny_dit = {k: v for k, v in tiny_settings.items() if k.startswith("model.")}

    def make(**extra) -> Config:
        return Config().override({"backbone.image_size": 64, "inference.pool_size": 8, **tiny_dit, **extra})

    return make


def check_result(r: dict, batch: int, image_size: int, rounds: int = 1):
    assert KEYS <= set(r)
    assert r["batch_size"] == batch and r["image_size"] == image_size and r["torch_threads"] == 1
    for k in ("backbone_fps", "full_fps", "fps_ratio", "backbone_ms_per_image", "full_ms_per_image"):
        assert math.isfinite(r[k]) and r[k] > 0, k
    assert r["fps_ratio"] == pytest.approx(r["full_fps"] / r["backbone_fps"], rel=1e-12)
    assert r["backbone_fps"] == pytest.approx(batch / r["timings"]["backbone"]["median_s"], rel=1e-12)
    assert r["full_ms_per_image"] == pytest.approx(1e3 / r["full_fps"], rel=1e-9)
    assert len(r["timings"]["full"]["times_s"]) == rounds and r["statistic"] == "median"
    json.dumps(r)  # plain JSON types


def test_benchmark_fps_lite0_tiny_dit(lite_cfg):
    cfg = lite_cfg(**{"inference.ensemble": 2, "inference.ddim_steps": 2})
    rng = torch.get_rng_state()
    r = benchmark_fps(cfg, batch_size=2, rounds=2, warmup=0, device="cpu")
    check_result(r, 2, 64, rounds=2)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is left alone
    assert r["device"] == "cpu" and r["device_name"] and r["dtype"] == "float32"
    assert r["backbone"] == "tf_efficientnet_lite0" and r["backbone_weights"] == "packaged"
    assert r["tokens"] == [152, 4, 4] and r["dit"]["hidden_dim"] == 32 and r["dit"]["depth"] == 1
    assert (r["ensemble"], r["ddim_steps"], r["noise_step"]) == (2, 2, cfg.inference.noise_step)
    table = format_fps_markdown(r)
    assert table.splitlines()[0].startswith("| backbone |") and "full FPS" in table and len(table.splitlines()) == 3


def test_benchmark_times_the_detector_users_run(lite_cfg, monkeypatch):
    """The full-pipeline FPS times the detector's scorer on backbone maps (what evaluate/predict run per batch),
    once per round."""
    from dpdiff.scoring.scorer import Scorer

    calls, real = [], Scorer.score_features

    def spy(self, feats, noise):
        calls.append((tuple(feats.shape[:2]), self.settings.map_size, self.max_rows))
        return real(self, feats, noise)

    monkeypatch.setattr(Scorer, "score_features", spy)
    cfg = lite_cfg(**{"evaluation.resolution": 32})
    r = benchmark_fps(cfg, batch_size=2, rounds=2, warmup=1, device="cpu")
    assert calls == [((2, 152), (32, 32), 16)] * 3 and r["map_size"] == 32  # CPU: 16 rows per DiT call


def test_benchmark_fps_given_tiny_vit_and_bfloat16(lite_cfg):
    cfg = lite_cfg(**{"backbone.image_size": 28, "inference.pool_size": 4})
    vit = random_vit(TINY_VIT, layers=[2, 3], image_size=28)
    assert vit.name == "custom_vit(random)"
    r = benchmark_fps(cfg, batch_size=2, rounds=1, warmup=0, device="cpu", dtype="bfloat16", backbone=vit)
    check_result(r, 2, 28)
    assert r["tokens"] == [32, 2, 2] and r["backbone_weights"] == "given" and r["dtype"] == "bfloat16"


def test_benchmark_fps_dinov2_config_gets_random_weights(lite_cfg):
    cfg = lite_cfg(
        **{
            "backbone.name": "dinov2_vits14_reg",
            "backbone.image_size": 28,
            "backbone.feature_stride": None,
            "backbone.layers": [10, 11],
            "inference.pool_size": 4,
        }
    )
    r = benchmark_fps(cfg, batch_size=1, rounds=1, warmup=0, device="cpu")
    check_result(r, 1, 28)
    assert r["backbone"] == "dinov2_vits14_reg" and r["backbone_weights"] == "random"
    assert r["tokens"] == [384, 2, 2]
    with pytest.raises(ValueError, match="weights"):
        benchmark_fps(cfg, batch_size=1, rounds=1, warmup=0, device="cpu", weights_random_ok=False)


def test_benchmark_fps_rejects_bad_arguments(lite_cfg):
    cfg = lite_cfg()
    with pytest.raises(ValueError, match="dtype"):
        benchmark_fps(cfg, 1, 1, 0, device="cpu", dtype="int8")
    with pytest.raises(ValueError, match="batch_size"):
        benchmark_fps(cfg, 0, 1, 0, device="cpu")
    with pytest.raises(ValueError, match="rounds"):
        benchmark_fps(cfg, 1, 0, 0, device="cpu")


def test_cli_benchmark_writes_json_and_refuses_overwrite(tmp_path, capsys, tiny_set_args):
    out = tmp_path / "res" / "fps.json"
    sets = ["backbone.image_size=64", "inference.pool_size=8"] + [a for a in tiny_set_args if a.startswith("model.")]
    argv = [
        "benchmark",
        "--config",
        "lite0_cpu",
        "--set",
        *sets,
        "--batch-size",
        "2",
        "--rounds",
        "1",
        "--warmup",
        "0",
        "--device",
        "cpu",
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| backbone |" in printed and "full FPS" in printed and str(out) in printed
    r = json.loads(out.read_text())
    check_result(r, 2, 64)
    assert r["ensemble"] == 2 and r["ddim_steps"] == 1  # from the packaged lite0_cpu preset
    assert r["dit"]["hidden_dim"] == 32  # --set on top of the preset
    before = out.read_text()
    assert main(argv) == 2  # refuses to replace the file
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == before
    assert main(argv + ["--overwrite"]) == 0
    assert not list(out.parent.glob(".*.tmp"))


def test_cli_benchmark_help_and_defaults(capsys):
    from dpdiff.cli import build_parser

    args = build_parser().parse_args(["benchmark"])
    assert (args.batch_size, args.rounds, args.warmup, args.dtype, args.output) == (64, 5, 2, "float32", None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["benchmark", "--help"])
    assert "Table 4" in " ".join(capsys.readouterr().out.split())
