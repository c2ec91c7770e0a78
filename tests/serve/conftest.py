"""Fixtures of the `dpdiff serve` tests: a tiny trained run, the real server in a subprocess on a free loopback
port, and headless Chromium driven over the DevTools protocol (``--remote-debugging-pipe``: no Python driver
package, no WebDriver, no network port)."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image

import dpdiff
from dpdiff.serve.server import stop_server_process
from dpdiff.workflows.train import train

SERVER_START_TIMEOUT_S = 90


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class TinyRun:
    """A trained tiny run, its data, and a few test images (PNG of the synthetic set plus other sizes/formats)."""

    run: Path
    data: Path
    images: list[Path]
    categories: list[str]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_config, tiny_dataset) -> TinyRun:
    root = tmp_path_factory.mktemp("serve_data")
    categories = tiny_dataset(root, test_good_per_category=3, test_defect_per_category=3)
    run = tmp_path_factory.mktemp("serve_run") / "run"
    cfg = tiny_config(root)
    # independent (still common) draws: with an antithetic pair a barely trained tiny model reconstructs the
    # tokens almost exactly, its scores are float32 rounding noise (~1e-6) and no comparison means anything
    cfg.inference.antithetic = False
    train(cfg, run)
    # thresholds (RUN/calibration.json): global ones F1-optimal on the labelled test split, and the second
    # category's own at a 20 % false-alarm rate on its normal training images
    detector = dpdiff.Detector.load(run, device="cpu")
    detector.calibrate(labelled=root)
    detector.calibrate(
        sorted((root / categories[1] / "train" / "good").glob("*.png")), target_fpr=0.2, category=categories[1]
    )
    images = sorted(root.glob("*/test/*/*.png"))
    extra = tmp_path_factory.mktemp("serve_images")
    # other sizes and formats: maps and masks come back at each image's own size
    first = Image.open(images[0]).convert("RGB")
    first.resize((96, 48)).save(extra / "wide.png")
    first.resize((40, 72)).save(extra / "tall.jpg", quality=90)
    Image.open(images[-1]).convert("RGB").save(extra / "last.bmp")
    return TinyRun(run, root, images + sorted(extra.iterdir()), list(categories))


# ---------------------------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    cwd: Path
    tmpdir: Path
    headers: dict = field(default_factory=dict)
    limits: dict = field(default_factory=dict)
    run_snapshot: dict = field(default_factory=dict)
    token: str | None = None

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0, headers=self.headers, **kw)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_server(run: Path, folder: Path, *options: str, token: str | None = None):
    """``python -m dpdiff.cli serve RUN --port P`` in an empty working folder with an empty TMPDIR; yields a
    :class:`Server` once ``/health`` answers; always terminated (then killed) on exit."""
    cwd, tmpdir = folder / "cwd", folder / "tmp"
    cwd.mkdir(parents=True)
    tmpdir.mkdir()
    log = folder / "server.log"
    port = free_port()
    cmd = [sys.executable, "-m", "dpdiff.cli", "serve", str(run), "--port", str(port), "--device", "cpu", *options]
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONDONTWRITEBYTECODE="1", DPDIFF_NO_PROGRESS="1")
    env.pop("DPDIFF_SERVE_TOKEN", None)
    if token is not None:
        cmd += ["--token", token]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    server = Server(f"http://127.0.0.1:{port}", proc, log, cwd, tmpdir, headers)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dpdiff serve exited with {proc.returncode}:\n{server.log_text()[-4000:]}")
            try:
                if httpx.get(server.url + "/health", headers=headers, timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"dpdiff serve did not answer /health within {SERVER_START_TIMEOUT_S} s:\n"
                    f"{server.log_text()[-4000:]}"
                )
            time.sleep(0.2)
        yield server
    finally:
        stop_server_process(proc)


# ---------------------------------------------------------------------------------------------- the browser
class DevTools:
    """Headless Chromium driven over the Chrome DevTools Protocol on a pipe (fd 3: commands in, fd 4: replies
    and events out, each a JSON message ending in NUL). ``call`` sends a command to the page and waits for its
    reply; every event is kept in ``events``. ``cmd``: the browser's command line, ``--remote-debugging-pipe``
    among its flags."""

    def __init__(self, cmd: list[str], timeout_s: float = 60.0):
        self.timeout_s = timeout_s
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds():  # the browser expects its pipe ends as fds 3 and 4
            a, b = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(3, 4),
            preexec_fn=child_fds,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.events: list[dict] = []
        self._replies: dict[int, dict] = {}
        self._cond = threading.Condition()
        self._next_id = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session: str | None = None

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._cond:
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        with self._cond:
            self._next_id += 1
            mid = self._next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise TimeoutError(f"no reply to {method} from chromium")
                self._cond.wait(left)
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def open_page(self) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime", "DOM"):
            self.call(f"{domain}.enable")

    def call(self, method: str, params: dict | None = None) -> dict:
        return self.send(method, params, self.session)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{what}: not within {timeout_s} s")

    def navigate(self, url: str, timeout_s: float = 30.0) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'", timeout_s, f"loading {url}")

    def set_files(self, selector: str, paths: list[str]) -> None:
        """Choose files in a file input, as a person would in the file dialog (fires its change event)."""
        obj = self.call("Runtime.evaluate", {"expression": f"document.querySelector({json.dumps(selector)})"})
        self.call("DOM.setFileInputFiles", {"files": paths, "objectId": obj["result"]["objectId"]})

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def chromium(tmp_path, headless_chromium):
    flags = ("--disable-background-networking", "--disable-component-update", "--disable-sync")
    cmd = headless_chromium(tmp_path / "profile", *flags, "--remote-debugging-pipe", "--window-size=1280,1000")
    browser = DevTools([*cmd, "about:blank"])
    try:
        browser.open_page()
        yield browser
    finally:
        browser.close()


# ---------------------------------------------------------------------------------------------- reference
@pytest.fixture(scope="session")
def expected(tiny_run):
    """``expected(path, category=None)``: ``Detector.predict`` of the image file alone, in this process (cached)."""
    detector = dpdiff.Detector.load(tiny_run.run, device="cpu")
    assert detector.calibrated
    cache = {}

    def predict_one(path, category=None):
        key = (str(path), category)
        if key not in cache:
            (cache[key],) = detector.predict([path], category=category)
        return cache[key]

    return predict_one


@pytest.fixture(scope="session")
def start_server():
    """:func:`running_server` (a context manager: ``with start_server(run, folder, *options, token=None) as s``)."""
    return running_server


#: The limits of the shared test server: small, so that oversized inputs are cheap to build.
SERVER_LIMITS = {"max_image_mb": 2.0, "max_batch": 8, "max_wait_ms": 20.0, "max_megapixels": 1.0}
TOKEN = "s3cret-t0ken"


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="session")
def server(tiny_run, tmp_path_factory):
    """The tiny run served with :data:`SERVER_LIMITS` (``server.limits``); ``server.run_snapshot``: the run
    folder's files (size, mtime) before it started."""
    before = _snapshot(tiny_run.run)
    options = [x for k, v in SERVER_LIMITS.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    with running_server(tiny_run.run, tmp_path_factory.mktemp("server"), *options) as srv:
        srv.limits, srv.run_snapshot = dict(SERVER_LIMITS), before
        yield srv


@pytest.fixture(scope="session")
def token_server(tiny_run, tmp_path_factory):
    """The tiny run served with ``--token`` (``token_server.token``)."""
    with running_server(tiny_run.run, tmp_path_factory.mktemp("token_server"), token=TOKEN) as srv:
        srv.token = TOKEN
        yield srv


def _png_bomb_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR declaring width x height, then a tiny IDAT: a decompression-bomb header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def png_bomb_header():
    """Function: ``png_bomb_header(width, height)`` -> PNG bytes whose header claims that size over a few bytes."""
    return _png_bomb_header
