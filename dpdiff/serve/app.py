"""The FastAPI app of ``dpdiff serve``: ``GET /``, ``GET /health``, ``POST /predict``, ``POST /predict/batch``.

:func:`create_app` builds it around a :class:`~dpdiff.serve.model.ServedModel`; ``dpdiff serve``
(:func:`dpdiff.serve.server.run_server`) runs it under uvicorn. A request goes

    bearer token (401) -> body read under the size limit (413) -> multipart split / raw bytes (400)
    -> image decoded under the pixel limit (400/413/415) -> category checked (422)
    -> micro-batch queue (one model call per batch) -> JSON (overlay/mask PNGs on request)

and every refusal is ``{"error": code, "message": text}`` with a 4xx status; nothing in a bad request reaches
the model, and nothing is written to disk (multipart files stay in memory). See
docs/guides/export-and-serve.md, "Serve".
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from dpdiff import __version__
from dpdiff.serve.auth import check_bearer
from dpdiff.serve.batching import BatcherClosed, MicroBatcher
from dpdiff.serve.limits import ApiError, decode_image, parse_multipart, read_body
from dpdiff.serve.model import Job, ServedModel
from dpdiff.serve.results import prediction_json

__all__ = ["ServeSettings", "create_app", "page_html", "MULTIPART_ALLOWANCE"]

log = logging.getLogger(__name__)

#: Bytes a request may carry beyond its images (multipart boundaries, part headers, form fields).
MULTIPART_ALLOWANCE = 64 * 1024
ROUTES = "GET / (the page), GET /health, POST /predict, POST /predict/batch"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


@dataclass(frozen=True)
class ServeSettings:
    """The limits and options of one server (``dpdiff serve`` flags of the same names)."""

    max_image_mb: float = 20.0
    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_megapixels: float = 40.0
    token: str | None = None

    def __post_init__(self):
        for name in ("max_image_mb", "max_megapixels"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if int(self.max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mb * 2**20)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1e6)

    def public(self) -> dict:
        """The settings ``/health`` shows (never the token)."""
        return {
            "max_image_mb": self.max_image_mb,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_ms,
            "max_megapixels": self.max_megapixels,
            "token_required": bool(self.token),
        }


# ---------------------------------------------------------------------------------------------- the page
def page_html() -> str:
    """The self-contained page (``dpdiff/serve/page.html``, package data)."""
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


def _content_security_policy(page: str) -> str:
    """Only the page's own inline script and style may run, images only from data: URLs, requests only to
    this server: the browser itself refuses anything else (a CDN script, a remote image, a beacon)."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; img-src data:; "
        f"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


# ---------------------------------------------------------------------------------------------- helpers
def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _flag(value: str | None, name: str) -> bool:
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ApiError(400, "bad_request", f"{name}={value!r}: expected 1/0 (or true/false)")


def _options(query, fields: dict[str, str]) -> tuple[str | None, bool, bool]:
    """(category, overlay?, mask?) from the query string, overridden by multipart form fields."""
    merged = {k: query.get(k) for k in ("category", "overlay", "mask") if k in query} | {
        k: v for k, v in fields.items() if k in ("category", "overlay", "mask")
    }
    category = (merged.get("category") or "").strip() or None
    return category, _flag(merged.get("overlay"), "overlay"), _flag(merged.get("mask"), "mask")


def _is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


def _ms(seconds: float) -> float:
    return round(1e3 * seconds, 3)


# ---------------------------------------------------------------------------------------------- the app
def create_app(model: ServedModel, settings: ServeSettings | None = None) -> FastAPI:
    """The service around ``model`` (see the module docstring); the micro-batcher runs while the app does."""
    service = _Service(model, settings or ServeSettings())
    app = FastAPI(
        title="dpdiff", version=__version__, lifespan=service.lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )  # the interactive docs load scripts from a CDN: off
    app.state.model, app.state.settings, app.state.batcher = service.model, service.settings, service.batcher
    _add_error_handlers(app)
    _add_routes(app, service)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal and failure as ``{"error": code, "message": text}``."""
    app.exception_handler(ApiError)(_api_error)
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.exception_handler(BatcherClosed)(_closing)
    app.exception_handler(Exception)(_bug)


def _add_routes(app: FastAPI, service: _Service) -> None:
    app.get("/", response_class=HTMLResponse)(service.index)
    app.get("/favicon.ico", include_in_schema=False)(service.favicon)
    app.get("/health")(service.health)
    app.post("/predict")(service.predict)
    app.post("/predict/batch")(service.predict_batch)


# ---------------------------------------------------------------------------------------------- error handlers
async def _api_error(_request, e: ApiError):
    log.info("refused: %d %s: %s", e.status, e.code, e.message)
    return _error(e.status, e.code, e.message, e.headers)


async def _http_error(request, e: StarletteHTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
    message = str(e.detail)
    if e.status_code in (404, 405):
        message = f"{message}: {request.method} {request.url.path}; the service answers {ROUTES}"
    return _error(e.status_code, code, message, getattr(e, "headers", None))


async def _validation_error(_request, e: RequestValidationError):
    return _error(422, "bad_request", "; ".join(str(x.get("msg")) for x in e.errors()) or "invalid request")


async def _closing(_request, e: BatcherClosed):
    return _error(503, "shutting_down", str(e))


async def _bug(_request, e: Exception):
    log.exception("internal error")
    return _error(500, "internal_error", f"internal error ({type(e).__name__}); see the server log")


# ---------------------------------------------------------------------------------------------- the routes
def _render(outcome, job: Job, name: str, overlay: bool, mask: bool) -> dict:
    """One image's JSON: the prediction plus its batch size and queue/model latencies."""
    out = prediction_json(outcome.result, job.image, name, with_overlay=overlay, with_mask=mask)
    out["batch_size"] = outcome.batch_size
    out["latency_ms"] = {"queue": _ms(outcome.queued_s), "model": _ms(outcome.model_s)}
    return out


class _Service:
    """What the routes share (the model, the settings, the micro-batcher, the page) and the routes themselves."""

    def __init__(self, model: ServedModel, settings: ServeSettings):
        self.model, self.settings = model, settings
        self.batcher: MicroBatcher = MicroBatcher(model.predict_batch, settings.max_batch, settings.max_wait_ms / 1e3)
        self.page = page_html()
        self.page_headers = {
            "Content-Security-Policy": _content_security_policy(self.page),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        self.started = time.monotonic()

    # ------------------------------------------------------------------------------------------ lifetime
    def warm_up(self) -> None:
        """One grey image through the model and the overlay drawing (lazy imports, first-call set-up)."""
        job = Job(Image.new("RGB", self.model.warm_up_size(), (128, 128, 128)))
        (prediction,) = self.model.predict_batch([job])
        prediction_json(prediction, job.image, "", with_overlay=True, with_mask=True)

    @asynccontextmanager
    async def lifespan(self, _app):
        await run_in_threadpool(self.warm_up)  # before the port opens: the first request is not slower
        self.batcher.start()
        log.info(
            "serving %s (%s on %s), micro-batches of up to %d images / %g ms",
            self.model.info.get("model"),
            self.model.runtime,
            self.model.info.get("device"),
            self.settings.max_batch,
            self.settings.max_wait_ms,
        )
        try:
            yield
        finally:
            await run_in_threadpool(self.batcher.close)

    # ------------------------------------------------------------------------------------------ steps of a request
    def authorize(self, request: Request) -> None:
        check_bearer(request.headers.get("authorization"), self.settings.token)

    def check_image_size(self, name: str, data: bytes) -> None:
        """413 for one image over ``--max-image-mb``."""
        if len(data) > self.settings.max_image_bytes:
            raise ApiError(
                413,
                "too_large",
                f"{name}: {len(data) / 2**20:.3g} MiB is over the limit of "
                f"--max-image-mb {self.settings.max_image_mb:g}",
            )

    def options(self, request: Request, fields: dict[str, str]) -> tuple[str | None, bool, bool]:
        """(category, overlay?, mask?) of a request, the category checked against the model's (422)."""
        category, overlay, mask = _options(request.query_params, fields)
        return self.model.check_category(category), overlay, mask

    async def single_upload(self, request: Request) -> tuple[str, bytes, dict[str, str]]:
        """(file name, image bytes, form fields) of ``/predict``: a raw body, or one multipart file."""
        settings = self.settings
        body = await read_body(
            request.stream(),
            request.headers.get("content-length"),
            settings.max_image_bytes + MULTIPART_ALLOWANCE,
            f"--max-image-mb {settings.max_image_mb:g}",
        )
        if not _is_multipart(request):
            return "", body, {}
        files, fields = await parse_multipart(
            request.headers, body, max_files=1, hint="several images go to /predict/batch"
        )
        if not files:
            raise ApiError(400, "empty_body", "no image file in the multipart body")
        self.check_image_size(files[0].filename, files[0].data)
        return files[0].filename, files[0].data, fields

    async def batch_uploads(self, request: Request):
        """(files, form fields) of ``/predict/batch``: up to ``--max-batch`` multipart files."""
        settings = self.settings
        if not _is_multipart(request):
            raise ApiError(415, "not_multipart", "send the images as multipart/form-data files (one part each)")
        body = await read_body(
            request.stream(),
            request.headers.get("content-length"),
            settings.max_image_bytes * settings.max_batch + MULTIPART_ALLOWANCE,
            f"--max-image-mb {settings.max_image_mb:g} x --max-batch {settings.max_batch}",
        )
        files, fields = await parse_multipart(
            request.headers,
            body,
            max_files=settings.max_batch,
            hint=f"--max-batch is {settings.max_batch}; split the images",
        )
        if not files:
            raise ApiError(400, "empty_body", "no image files in the multipart body")
        for f in files:
            self.check_image_size(f.filename or f.field, f.data)
        return files, fields

    async def score(self, jobs: list[Job]):
        """Queue the jobs (they may share a model call with other requests' images) and wait for all."""
        futures = [self.batcher.submit(job) for job in jobs]
        try:
            return await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except BaseException:
            for f in futures:
                f.cancel()  # not started yet: dropped from its batch
            raise

    # ------------------------------------------------------------------------------------------ routes
    async def index(self):
        return HTMLResponse(self.page, headers=self.page_headers)

    async def favicon(self):
        return Response(status_code=204)  # browsers ask for it; there is none

    async def health(self, request: Request):
        self.authorize(request)
        model, batcher = self.model, self.batcher
        return {
            "status": "ok",
            "version": __version__,
            **model.info,
            "categories": list(model.categories),
            "thresholds": model.thresholds(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "settings": self.settings.public(),
            "batches": dict(batcher.stats),
            "queued": batcher.pending,
        }

    async def predict(self, request: Request):
        t0 = time.perf_counter()
        self.authorize(request)
        name, body, fields = await self.single_upload(request)
        category, overlay, mask = self.options(request, fields)
        image = await run_in_threadpool(decode_image, body, self.settings.max_pixels, name or "image")
        self.model.check_image(image, name or "image")
        job = Job(image, category)
        (outcome,) = await self.score([job])
        out = await run_in_threadpool(_render, outcome, job, name, overlay, mask)
        out["latency_ms"]["total"] = _ms(time.perf_counter() - t0)
        return out

    async def predict_batch(self, request: Request):
        t0 = time.perf_counter()
        self.authorize(request)
        files, fields = await self.batch_uploads(request)
        category, overlay, mask = self.options(request, fields)
        names = [f.filename or f"image {i}" for i, f in enumerate(files)]
        max_pixels = self.settings.max_pixels
        images = await run_in_threadpool(
            lambda: [decode_image(f.data, max_pixels, n) for f, n in zip(files, names, strict=True)]
        )
        for image, n in zip(images, names, strict=True):
            self.model.check_image(image, n)
        jobs = [Job(image, category) for image in images]
        outcomes = await self.score(jobs)
        results = await run_in_threadpool(
            lambda: [_render(o, j, f.filename, overlay, mask) for o, j, f in zip(outcomes, jobs, files, strict=True)]
        )
        return {"count": len(results), "results": results, "latency_ms": {"total": _ms(time.perf_counter() - t0)}}
