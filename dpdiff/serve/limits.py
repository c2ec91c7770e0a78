"""What the service refuses, and how: request bodies read under a byte limit, images decoded under a pixel limit.

Every refusal is an :class:`ApiError`: an HTTP status (4xx), a short machine-readable ``code`` and a message
that says what was wrong and what the limit is. The app turns it into ``{"error": code, "message": ...}``.

* Size before decoding: a declared ``Content-Length`` above the limit is refused before a byte of the body is
  read; a body without one (chunked) is counted while it streams and refused as soon as it passes the limit.
  What the client is still sending is read and dropped (up to :data:`DRAIN_MAX_BYTES`), so an ordinary client
  gets its 413 instead of a connection reset.
* Decompression bombs: :func:`decode_image` reads the header only (``Image.open`` is lazy), checks width x
  height against ``max_pixels``, and only then decodes the pixels.
* Only raster formats with a safe, bounded decoder are opened (:data:`IMAGE_FORMATS`): never EPS (Ghostscript)
  or other formats Pillow would hand to an external program.
"""

from __future__ import annotations

import io
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

__all__ = [
    "ApiError",
    "IMAGE_FORMATS",
    "DRAIN_MAX_BYTES",
    "read_body",
    "decode_image",
    "parse_multipart",
    "MultipartFile",
]

#: Formats :func:`decode_image` opens (Pillow format names). Others get 415.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
#: At most this much of a refused body is read and dropped before the connection is closed.
DRAIN_MAX_BYTES = 64 * 1024 * 1024


class ApiError(Exception):
    """A refused request: ``status`` (4xx), ``code`` (e.g. ``"too_large"``) and a message for the client."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = int(status), code, message
        self.headers = headers or {}


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


async def _drain(chunks: AsyncIterator[bytes], already: int) -> None:
    """Read and drop the rest of a refused body, up to :data:`DRAIN_MAX_BYTES` in all."""
    async for chunk in chunks:
        already += len(chunk)
        if already > DRAIN_MAX_BYTES:
            return


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limit: int, what: str) -> bytes:
    """The request body, at most ``limit`` bytes (413 beyond), refused on its declared length when there is one.

    ``chunks``: the body as it streams (``request.stream()``); ``what`` names the limit in the message."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ApiError(400, "bad_request", f"Content-Length {content_length!r} is not a number") from None
        if declared > limit:
            if declared <= DRAIN_MAX_BYTES:
                await _drain(chunks, 0)
            raise ApiError(
                413,
                "too_large",
                f"request body of {_megabytes(declared)} is over the limit of {_megabytes(limit)} ({what})",
            )
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            await _drain(chunks, len(body))
            raise ApiError(413, "too_large", f"request body is over the limit of {_megabytes(limit)} ({what})")
    return bytes(body)


def decode_image(data: bytes, max_pixels: int, name: str = "image") -> Image.Image:
    """Decoded 8-bit-or-more Pillow image of ``data``, refused with 400/413/415 before anything large is built.

    Empty bytes -> 400 ``empty_body``; not one of :data:`IMAGE_FORMATS` -> 415 ``not_an_image``; more than
    ``max_pixels`` pixels (read from the header, before decoding) -> 413 ``too_many_pixels``; a corrupt or
    truncated file -> 400 ``bad_image``. ``name`` labels the image in the message (a file name or "image")."""
    if not data:
        raise ApiError(400, "empty_body", f"{name}: empty body; send the image bytes (raw, or as a multipart file)")
    try:
        im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:
        raise ApiError(413, "too_many_pixels", f"{name}: {e}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ApiError(
            415,
            "not_an_image",
            f"{name}: not a readable image ({len(data)} bytes); accepted formats: {', '.join(IMAGE_FORMATS)}",
        ) from None
    width, height = im.size
    if width < 1 or height < 1:
        raise ApiError(400, "bad_image", f"{name}: image of {width}x{height} pixels")
    if width * height > max_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"{name}: {width}x{height} = {width * height / 1e6:.1f} megapixels "
            f"is over the limit of {max_pixels / 1e6:.1f} megapixels",
        )
    try:
        im.load()
    except Image.DecompressionBombError as e:
        raise ApiError(413, "too_many_pixels", f"{name}: {e}") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, ... on bad data
        raise ApiError(
            400, "bad_image", f"{name}: cannot decode the {im.format} image (corrupt or truncated?): {e}"
        ) from None
    return im


# ------------------------------------------------------------------------------------------------ multipart
@dataclass
class MultipartFile:
    """One file part of a multipart body: its field name, file name and bytes."""

    field: str
    filename: str
    data: bytes


async def parse_multipart(
    headers, body: bytes, max_files: int, hint: str = ""
) -> tuple[list[MultipartFile], dict[str, str]]:
    """(file parts in order, text fields) of a ``multipart/form-data`` body already in memory (and already
    bounded by :func:`read_body`). Parsed by Starlette's parser (python-multipart), told never to spill a file
    to a temporary file on disk: nothing is written. Malformed bodies are 400, more than ``max_files`` files
    413 (``hint`` is added to that message)."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    class InMemoryParser(MultiPartParser):
        spool_max_size = sys.maxsize  # the body is in memory already; never write it to a temporary file

    async def one_chunk():
        yield body

    parser = InMemoryParser(headers, one_chunk(), max_files=max_files, max_fields=32, max_part_size=64 * 1024)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if "Too many files" in e.message:
            raise ApiError(
                413,
                "too_many_files",
                f"more than {max_files} image file(s) in one request{'; ' + hint if hint else ''}",
            ) from None
        raise ApiError(400, "bad_multipart", f"multipart body: {e.message}") from None
    files, fields = [], {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, str):
                fields[key] = value
            else:
                files.append(MultipartFile(key, value.filename or "", await value.read()))
    finally:
        await form.close()
    return files, fields
