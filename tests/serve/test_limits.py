"""What the service refuses before the model sees anything (dpdiff/serve/limits.py, auth.py), without a server."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from dpdiff.serve.auth import check_bearer
from dpdiff.serve.limits import ApiError, decode_image, parse_multipart, read_body


def png_bytes(width: int, height: int, fill: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (fill, fill, fill)).save(buf, format="PNG")
    return buf.getvalue()


def refused(fn, *args, **kw) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args, **kw)
    return info.value


# ---------------------------------------------------------------------------------------------- images
def test_decode_keeps_the_pixels():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    for fmt in ("PNG", "BMP", "TIFF"):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=fmt)
        im = decode_image(buf.getvalue(), max_pixels=10_000)
        assert im.size == (50, 30) and np.array_equal(np.asarray(im.convert("RGB")), pixels), fmt


@pytest.mark.parametrize(
    "data, status, code",
    [
        (b"", 400, "empty_body"),
        (b"hello, this is text", 415, "not_an_image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "not_an_image"),  # EPS would run Ghostscript
        (b"GIF89a" + b"\0" * 40, 415, "not_an_image"),  # not an accepted format
    ],
)
def test_non_images_are_refused(data, status, code):
    e = refused(decode_image, data, max_pixels=10**6)
    assert (e.status, e.code) == (status, code) and e.message


def test_truncated_image_is_a_400():
    data = png_bytes(64, 64, fill=7)
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noisy, "PNG")
    for cut in (data[: len(data) // 2], noisy.getvalue()[:-200]):
        e = refused(decode_image, cut, max_pixels=10**6, name="part.png")
        assert (e.status, e.code) == (400, "bad_image") and "part.png" in e.message and "truncated" in e.message


def test_pixel_limit_is_checked_from_the_header_before_decoding(png_bomb_header):
    small_file = png_bytes(1200, 1000)  # a few KB that decode to 1.2 megapixels
    assert len(small_file) < 20_000
    e = refused(decode_image, small_file, max_pixels=1_000_000)
    assert (e.status, e.code) == (413, "too_many_pixels") and "1200x1000" in e.message
    assert decode_image(small_file, max_pixels=1_200_000).size == (1200, 1000)  # at the limit: fine
    # a header claiming 100000 x 100000 pixels (10 gigapixels) over a few bytes of data is refused, not decoded
    for w, h in ((100_000, 100_000), (20_000, 2_001)):
        e = refused(decode_image, png_bomb_header(w, h), max_pixels=40_000_000)
        assert (e.status, e.code) == (413, "too_many_pixels"), (w, h)


# ---------------------------------------------------------------------------------------------- bodies
def chunks(*parts: bytes):
    async def gen():
        for p in parts:
            yield p

    return gen()


def read(parts, content_length, limit):
    return asyncio.run(read_body(chunks(*parts), content_length, limit, "test limit"))


def test_read_body_within_the_limit():
    assert read([b"ab", b"cd"], "4", 4) == b"abcd"
    assert read([b"ab", b"cd"], None, 4) == b"abcd"  # chunked: no Content-Length


def test_read_body_refuses_a_declared_length_before_reading():
    consumed = []

    async def gen():
        for p in (b"x" * 10, b"y" * 10):
            consumed.append(p)
            yield p

    with pytest.raises(ApiError) as info:
        asyncio.run(read_body(gen(), str(64 * 2**20 + 1), 100, "test limit"))  # too large even to drain
    assert info.value.status == 413 and "test limit" in info.value.message and consumed == []


def test_read_body_stops_a_stream_at_the_limit():
    e = pytest.raises(ApiError, read, [b"x" * 60, b"y" * 60], None, 100).value
    assert (e.status, e.code) == (413, "too_large")
    e = pytest.raises(ApiError, read, [b"x"], "ten", 100).value
    assert (e.status, e.code) == (400, "bad_request")


def multipart_body(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> tuple[dict, bytes]:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return {"content-type": f"multipart/form-data; boundary={boundary}"}, out


def test_multipart_files_and_fields_in_order():
    from starlette.datastructures import Headers

    big = bytes(range(256)) * 8192  # 2 MiB: more than Starlette's 1 MiB spool, still parsed in memory
    headers, body = multipart_body([("file", "a.png", b"AAA"), ("category", None, b"nut"), ("file", "b.png", big)])
    files, fields = asyncio.run(parse_multipart(Headers(headers), body, max_files=4))
    assert [(f.filename, f.data) for f in files] == [("a.png", b"AAA"), ("b.png", big)]
    assert fields == {"category": "nut"}
    e = pytest.raises(ApiError, lambda: asyncio.run(parse_multipart(Headers(headers), body, max_files=1))).value
    assert e.status == 413
    e = pytest.raises(
        ApiError,
        lambda: asyncio.run(parse_multipart(Headers({"content-type": "multipart/form-data"}), body, max_files=4)),
    ).value
    assert (e.status, e.code) == (400, "bad_multipart")


# ---------------------------------------------------------------------------------------------- token
def test_bearer_token():
    check_bearer(None, None)  # no token configured: open
    check_bearer("Bearer s3cret", "s3cret")
    check_bearer("bearer  s3cret ", "s3cret")
    for header in (None, "", "Bearer", "Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret", "Bearer S3CRET"):
        e = refused(check_bearer, header, "s3cret")
        assert e.status == 401 and e.headers["WWW-Authenticate"].startswith("Bearer"), header
