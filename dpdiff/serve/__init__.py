"""``dpdiff serve``: an HTTP service and a web page for line-side inspection.

* :mod:`.app`: the FastAPI app (``GET /``, ``/health``, ``POST /predict``, ``/predict/batch``) and its settings;
* :mod:`.batching`: the micro-batcher (concurrent requests share one model call);
* :mod:`.model`: the run's detector as the app uses it (one ``predict`` per batch, categories, description);
* :mod:`.limits` and :mod:`.auth`: what is refused (size, pixels, formats, malformed bodies, the token);
* :mod:`.results`: a prediction as JSON, with the overlay and mask PNGs;
* :mod:`.server`: loading a run and running uvicorn;
* ``page.html``: the self-contained page (no external script, style or image).

Layer: beside :mod:`dpdiff.experiments`, above the engine, below the command line (``.importlinter``).
"""

from __future__ import annotations

from dpdiff.serve.app import ServeSettings, create_app
from dpdiff.serve.batching import MicroBatcher
from dpdiff.serve.server import run_server

__all__ = ["ServeSettings", "create_app", "MicroBatcher", "run_server"]
