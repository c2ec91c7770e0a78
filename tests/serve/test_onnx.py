"""`dpdiff serve RUN --onnx FILE` (and `dpdiff serve model.onnx`): the exported model behind the same service,
answering exactly as ``OnnxDetector.predict``."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

import dpdiff
from dpdiff.inference.export import export_onnx
from dpdiff.serve.model import ServedModel
from dpdiff.utils.errors import UsageError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def onnx_file(tiny_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(dpdiff.Detector.load(tiny_run.run, device="cpu"), path, verify=False)
    return path


def test_onnx_alone_or_with_its_run(onnx_file, tiny_run, tmp_path):
    alone = ServedModel.load(onnx_file, device="cpu")
    assert alone.runtime == "onnx" and alone.info["model"] == "model.onnx"
    assert alone.categories == (tiny_run.categories[1],)  # no run folder: the calibrated categories only
    assert alone.thresholds()["per_category"].keys() == {tiny_run.categories[1]}
    with_run = ServedModel.load(tiny_run.run, onnx=onnx_file, device="cpu")
    assert with_run.categories == tuple(sorted(tiny_run.categories)) and with_run.info["training_step"] == 6
    other = tmp_path / "other_run"
    shutil.copytree(tiny_run.run, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["config"]["inference"]["noise_step"] += 1
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="exported from another run"):
        ServedModel.load(other, onnx=onnx_file, device="cpu")


def test_served_onnx_answers_equal_onnx_predict(onnx_file, tiny_run, tmp_path_factory, start_server):
    reference = dpdiff.Detector.load(onnx_file, device="cpu")
    cat = tiny_run.categories[1]
    paths = tiny_run.images[:8]
    with start_server(tiny_run.run, tmp_path_factory.mktemp("onnx_server"), "--onnx", str(onnx_file)) as server:
        with server.client() as c:
            health = c.get("/health").json()
            assert health["runtime"] == "onnx" and health["categories"] == sorted(tiny_run.categories)

            def one(path):
                r = c.post("/predict", params={"category": cat}, content=path.read_bytes())
                assert r.status_code == 200, r.text
                return r.json()

            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(one, paths))
    for got, path in zip(answers, paths, strict=True):
        (want,) = reference.predict([path], category=cat)
        assert got["score"] == pytest.approx(want.score, rel=1e-6, abs=0)
        assert got["is_anomalous"] == want.is_anomalous and got["thresholds"]["image"] == want.image_threshold
