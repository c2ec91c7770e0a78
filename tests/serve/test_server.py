"""`dpdiff serve` end to end: the real server in a subprocess on a free loopback port, real HTTP clients.

Under load (200 requests from 8 concurrent clients) every answer equals ``Detector.predict`` on the same image
alone; each class of bad input gets its 4xx JSON error and ``/health`` answers after it; the token is enforced;
nothing is written to disk."""

from __future__ import annotations

import base64
import io
import itertools
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.integration

LOAD_REQUESTS = 200
LOAD_CLIENTS = 8
LOAD_TIME_LIMIT_S = 180


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def same_prediction(got: dict, want, path) -> None:
    """A server answer equals ``Detector.predict`` of the image alone (scores to float32 rounding at most)."""
    # batches of other sizes take other float32 kernel paths (several threads): equal to rounding, not bitwise
    assert got["score"] == pytest.approx(float(want.score), rel=1e-5, abs=0), path
    if want.normalized_score is None:
        assert got["normalized_score"] is None
    else:
        assert got["normalized_score"] == pytest.approx(float(want.normalized_score), rel=1e-5, abs=0), path
    assert got["is_anomalous"] == (None if want.is_anomalous is None else bool(want.is_anomalous)), path
    assert got["thresholds"] == {
        "image": None if want.image_threshold is None else float(want.image_threshold),
        "pixel": None if want.pixel_threshold is None else float(want.pixel_threshold),
    }
    assert got["category"] == want.category
    h, w = np.asarray(want.anomaly_map).shape
    assert (got["width"], got["height"]) == (w, h), path


def png_array(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


# ---------------------------------------------------------------------------------------------- answers
def test_health_describes_the_model(client, server, tiny_run):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"] == tiny_run.run.name and h["backbone"] == "tf_efficientnet_lite0"
    assert h["image_size"] == 64 and h["runtime"] == "torch" and h["device"] == "cpu"
    assert h["categories"] == sorted(tiny_run.categories)
    assert set(h["thresholds"]) == {"global", "per_category"} and "preset" in h
    assert h["version"] and h["uptime_s"] > 0
    assert h["settings"] == {**server.limits, "token_required": False}
    assert "token" not in str(h).replace("token_required", "")


def test_load_answers_equal_detector_predict(server, tiny_run, expected):
    """200 requests from 8 concurrent clients (raw bodies and multipart, with and without a category): no error,
    each answer equal to Detector.predict of that image alone, and images of different requests batched."""
    categories = [None, *tiny_run.categories]
    plan = [
        (path, cat, i % 4 == 0)
        for i, (path, cat) in zip(range(LOAD_REQUESTS), itertools.cycle(itertools.product(tiny_run.images, categories)))
    ]
    payloads = {p: p.read_bytes() for p in tiny_run.images}
    deadline = time.monotonic() + LOAD_TIME_LIMIT_S

    def work(lane: int) -> list:
        out = []
        with server.client() as c:
            for k in range(lane, LOAD_REQUESTS, LOAD_CLIENTS):
                if time.monotonic() > deadline:
                    break
                path, cat, multipart = plan[k]
                params = {"mask": "1", **({"category": cat} if cat else {})}
                if multipart:
                    r = c.post("/predict", params=params, files={"file": (path.name, payloads[path])})
                else:
                    r = c.post(
                        "/predict",
                        params=params,
                        content=payloads[path],
                        headers={"Content-Type": "application/octet-stream"},
                    )
                out.append((k, r.status_code, r.json()))
        return out

    t0 = time.monotonic()
    with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        answers = [a for lane in pool.map(work, range(LOAD_CLIENTS)) for a in lane]
    elapsed = time.monotonic() - t0
    assert len(answers) == LOAD_REQUESTS, f"only {len(answers)} answers in {LOAD_TIME_LIMIT_S} s"
    errors = [(k, status, body) for k, status, body in answers if status != 200]
    assert not errors, errors[:3]
    for k, _, body in answers:
        path, cat, multipart = plan[k]
        want = expected(path, cat)
        same_prediction(body, want, path)
        assert body["name"] == (path.name if multipart else "")
        if want.mask is None:
            assert body["mask_png"] is None
        else:
            assert np.array_equal(png_array(body["mask_png"]) > 127, np.asarray(want.mask)), path
    sizes = [body["batch_size"] for _, _, body in answers]
    assert max(sizes) > 1, "concurrent requests never shared a model call"
    assert max(sizes) <= server.limits["max_batch"]
    stats = httpx.get(server.url + "/health").json()["batches"]
    assert stats["items"] >= LOAD_REQUESTS and stats["batches"] < stats["items"]
    print(
        f"\n{LOAD_REQUESTS} requests, {LOAD_CLIENTS} clients: {elapsed:.1f} s, "
        f"{LOAD_REQUESTS / elapsed:.1f} req/s, mean batch {np.mean(sizes):.2f}, largest {max(sizes)}"
    )


def test_batch_endpoint_answers_in_order(client, server, tiny_run, expected):
    paths = tiny_run.images[-server.limits["max_batch"] :]  # other sizes and formats included
    cat = tiny_run.categories[1]
    files = [("files", (p.name, p.read_bytes())) for p in paths]
    r = client.post("/predict/batch", params={"category": cat, "overlay": "1", "mask": "1"}, files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(paths) and [x["name"] for x in body["results"]] == [p.name for p in paths]
    for got, path in zip(body["results"], paths, strict=True):
        want = expected(path, cat)
        same_prediction(got, want, path)
        overlay = png_array(got["overlay_png"])
        assert overlay.ndim == 3 and overlay.shape[2] == 3 and overlay.shape[1] > overlay.shape[0]  # side by side
        if want.mask is not None:
            assert png_array(got["mask_png"]).shape == np.asarray(want.mask).shape


def test_the_same_image_raw_or_multipart_or_batched(client, tiny_run):
    path = tiny_run.images[0]
    data = path.read_bytes()
    raw = client.post("/predict", content=data).json()
    form = client.post("/predict", files={"file": ("x.png", data)}).json()
    batch = client.post("/predict/batch", files=[("f", ("a.png", data)), ("f", ("b.png", data))]).json()
    scores = {raw["score"], form["score"], *(x["score"] for x in batch["results"])}
    assert max(scores) == pytest.approx(min(scores), rel=1e-5, abs=0)
    assert batch["results"][0]["batch_size"] >= 2  # both images of the batch request went in one model call


# ---------------------------------------------------------------------------------------------- bad input
def _png(width: int, height: int, noise: bool = False) -> bytes:
    arr = (
        np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        if noise
        else np.zeros((height, width, 3), np.uint8)
    )
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _chunked(data: bytes, size: int = 256 * 1024):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _raw_multipart(body: bytes) -> dict:
    """A POST /predict whose multipart body (boundary ``zz``) is written out by hand."""
    return dict(
        method="POST", url="/predict", content=body, headers={"Content-Type": "multipart/form-data; boundary=zz"}
    )


def _bad_requests(tiny_run, limits, bomb_header):
    """(name, request kwargs, expected status, expected error code) for each class of bad input."""
    good = tiny_run.images[0].read_bytes()
    max_batch, oversized = limits["max_batch"], int((limits["max_image_mb"] + 0.5) * 2**20)
    junk = np.random.default_rng(1).integers(0, 256, oversized, dtype=np.uint8).tobytes()
    bomb = _png(2000, 2000)  # 4 megapixels of black in a few KB: refused from its header
    assert len(bomb) < 50_000
    return [
        (
            "non-image bytes",
            dict(method="POST", url="/predict", content=b"GIF? no: just some text"),
            415,
            "not_an_image",
        ),
        ("truncated image", dict(method="POST", url="/predict", content=good[: len(good) // 2]), 400, "bad_image"),
        ("empty body", dict(method="POST", url="/predict", content=b""), 400, "empty_body"),
        ("empty file part", dict(method="POST", url="/predict", files={"file": ("e.png", b"")}), 400, "empty_body"),
        (
            "unknown category",
            dict(method="POST", url="/predict", params={"category": "no_such_part"}, content=good),
            422,
            "unknown_category",
        ),
        (
            "unknown category, batch",
            dict(
                method="POST", url="/predict/batch", data={"category": "no_such_part"}, files=[("f", ("a.png", good))]
            ),
            422,
            "unknown_category",
        ),
        ("oversized upload", dict(method="POST", url="/predict", content=junk), 413, "too_large"),
        ("oversized upload, chunked", dict(method="POST", url="/predict", content=_chunked(junk)), 413, "too_large"),
        (
            "oversized file in a batch",
            dict(method="POST", url="/predict/batch", files=[("f", ("ok.png", good)), ("f", ("big.png", junk))]),
            413,
            "too_large",
        ),
        ("decompression bomb", dict(method="POST", url="/predict", content=bomb), 413, "too_many_pixels"),
        (
            "bomb header (10 gigapixels)",
            dict(method="POST", url="/predict", content=bomb_header(100_000, 100_000)),
            413,
            "too_many_pixels",
        ),
        (
            "two files to /predict",
            dict(method="POST", url="/predict", files=[("f", ("a.png", good)), ("f", ("b.png", good))]),
            413,
            "too_many_files",
        ),
        (
            "no file in the multipart body",
            _raw_multipart(b'--zz\r\nContent-Disposition: form-data; name="category"\r\n\r\nnut\r\n--zz--\r\n'),
            400,
            "empty_body",
        ),
        (
            "too many files in a batch",
            dict(method="POST", url="/predict/batch", files=[("f", (f"{i}.png", good)) for i in range(max_batch + 1)]),
            413,
            "too_many_files",
        ),
        ("batch without multipart", dict(method="POST", url="/predict/batch", content=good), 415, "not_multipart"),
        (
            "multipart without a boundary",
            dict(method="POST", url="/predict", content=good, headers={"Content-Type": "multipart/form-data"}),
            400,
            "bad_multipart",
        ),
        (
            "multipart part without a name",
            _raw_multipart(b"--zz\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--zz--\r\n"),
            400,
            "bad_multipart",
        ),
        (
            "bad flag",
            dict(method="POST", url="/predict", params={"overlay": "maybe"}, content=good),
            400,
            "bad_request",
        ),
        ("unknown route", dict(method="GET", url="/predict/nothing"), 404, "not_found"),
        ("wrong method", dict(method="GET", url="/predict"), 405, "method_not_allowed"),
    ]


def test_bad_input_gets_a_4xx_and_the_server_stays_healthy(client, tiny_run, server, png_bomb_header):
    seen = set()
    for name, kwargs, status, code in _bad_requests(tiny_run, server.limits, png_bomb_header):
        r = client.request(**kwargs)
        assert r.status_code == status, (name, r.status_code, r.text[:300])
        body = r.json()
        assert body["error"] == code and len(body["message"]) > 10, (name, body)
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok", name
        seen.add(code)
    assert server.process.poll() is None
    assert len(seen) >= 10
    ok = client.post("/predict", content=tiny_run.images[0].read_bytes())  # and still answers
    assert ok.status_code == 200


def test_nothing_is_written_to_disk(client, server, tiny_run):
    big = _png(700, 700, noise=True)  # ~1.4 MB: more than Starlette's 1 MB in-memory spool for uploads
    assert 2**20 < len(big) < server.limits["max_image_mb"] * 2**20
    r = client.post(
        "/predict/batch",
        files=[("f", ("big.png", big)), ("f", ("big2.png", big))],
        params={"overlay": "1", "mask": "1"},
    )
    assert r.status_code == 200, r.text
    assert list(server.cwd.iterdir()) == [] and list(server.tmpdir.iterdir()) == []
    assert {
        str(p.relative_to(tiny_run.run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in tiny_run.run.rglob("*")
    } == server.run_snapshot


# ---------------------------------------------------------------------------------------------- token
def test_token_is_required(token_server, tiny_run):
    good = tiny_run.images[0].read_bytes()
    requests = [
        ("GET", "/health", {}),
        ("POST", "/predict", {"content": good}),
        ("POST", "/predict/batch", {"files": [("f", ("a.png", good))]}),
    ]
    with httpx.Client(base_url=token_server.url, timeout=60) as c:
        for method, url, kw in requests:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Bearer {token_server.token[:-1]}"},
                {"Authorization": f"Basic {token_server.token}"},
            ):
                r = c.request(method, url, headers=headers, **kw)
                assert r.status_code == 401, (url, headers, r.status_code)
                assert r.json()["error"] == "unauthorized" and r.headers["www-authenticate"].startswith("Bearer")
            r = c.request(method, url, headers={"Authorization": f"Bearer {token_server.token}"}, **kw)
            assert r.status_code == 200, (url, r.text[:300])
        page = c.get("/")  # the page itself holds no data; it asks for the token
        assert page.status_code == 200 and "Access token" in page.text
    assert token_server.token not in token_server.log_text()
