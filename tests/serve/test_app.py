"""The app and the served model's batch call, in process with a stand-in detector (no network model): one
``predict`` per category in a batch, answers in order, a failing model call is a 500 JSON and the next request
is served."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from starlette.testclient import TestClient

from dpdiff.inference.predictor import Prediction
from dpdiff.serve.app import ServeSettings, create_app
from dpdiff.serve.model import Job, ServedModel


class StandIn:
    """``predict`` of the contract: score = image width; a 13-pixel-wide image makes the call fail."""

    calibration = None

    def __init__(self):
        self.calls: list[tuple[int, str | None, int | None]] = []

    def predict(self, images, category=None, batch_size=None):
        self.calls.append((len(images), category, batch_size))
        if any(im.width == 13 for im in images):
            raise RuntimeError("the model failed")
        return [
            Prediction(
                None,
                float(im.width),
                None,
                None,
                np.zeros((im.height, im.width), np.float32),
                None,
                None,
                None,
                category,
            )
            for im in images
        ]


def served(detector) -> ServedModel:
    return ServedModel(detector, "torch", {"model": "stand-in", "image_size": 8, "device": "cpu"}, ("a", "b"))


def png(width: int, height: int = 5) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_one_predict_call_per_category_in_a_batch():
    detector = StandIn()
    jobs = [Job(Image.new("RGB", (w, 4)), c) for w, c in ((3, "a"), (4, None), (5, "a"), (6, "b"), (7, None))]
    out = served(detector).predict_batch(jobs)
    assert [p.score for p in out] == [3, 4, 5, 6, 7] and [p.category for p in out] == ["a", None, "a", "b", None]
    assert detector.calls == [(2, "a", 2), (2, None, 2), (1, "b", 1)]  # the whole group in one model batch


def test_a_failing_model_call_is_a_500_and_the_server_goes_on():
    detector = StandIn()
    with TestClient(
        create_app(served(detector), ServeSettings(max_wait_ms=1)), raise_server_exceptions=False
    ) as client:
        assert detector.calls == [(1, None, 1)]  # the warm-up, before the first request
        r = client.post("/predict", content=png(13))
        assert r.status_code == 500 and r.json()["error"] == "internal_error" and "RuntimeError" in r.json()["message"]
        r = client.post("/predict", content=png(21), params={"category": "b", "overlay": "1"})
        assert r.status_code == 200 and r.json()["score"] == 21 and r.json()["decision"] == "uncalibrated"
        assert r.json()["overlay_png"] and r.json()["category"] == "b"
        r = client.post("/predict/batch", files=[("f", ("x.png", png(11))), ("f", ("y.png", png(12)))])
        assert [x["score"] for x in r.json()["results"]] == [11, 12] and detector.calls[-1] == (2, None, 2)
        assert client.get("/health").json()["batches"]["items"] == 3
