"""``dpdiff serve``: load a run's detector and run the app under uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from pathlib import Path

from dpdiff.serve.app import ServeSettings, create_app
from dpdiff.serve.model import ServedModel

__all__ = ["run_server", "stop_server_process", "DEFAULT_HOST", "DEFAULT_PORT", "MAX_CONNECTIONS"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: Open connections + requests in flight above which uvicorn answers 503 at once (bounds memory under a flood).
MAX_CONNECTIONS = 256


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(
    run_dir: str | Path,
    *,
    onnx: str | Path | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    settings: ServeSettings | None = None,
    device: str = "auto",
    weights: str | None = None,
) -> None:
    """Serve ``run_dir`` on ``host:port`` until interrupted (Ctrl-C / SIGTERM finish the requests in flight)."""
    import uvicorn

    settings = settings or ServeSettings()
    if not _is_loopback(host) and not settings.token:
        log.warning(
            "listening on %s without --token: anyone who can reach this port can use the model; put it "
            "behind a reverse proxy or pass --token",
            host,
        )
    model = ServedModel.load(run_dir, onnx=onnx, device=device, weights=weights)
    app = create_app(model, settings)
    log.info("dpdiff serve: http://%s:%d/ (page), /health, /predict, /predict/batch", host, port)
    uvicorn.run(
        app,
        host=host,
        port=int(port),
        log_level="info",
        access_log=True,
        server_header=False,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
    )


def stop_server_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a ``dpdiff serve`` subprocess (tests, the load benchmark): SIGTERM (uvicorn finishes the requests in
    flight), then SIGKILL when it has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
