"""Optional bearer token (``dpdiff serve --token``): ``Authorization: Bearer <token>``, compared in constant time."""

from __future__ import annotations

import hmac

from dpdiff.serve.limits import ApiError

__all__ = ["check_bearer"]


def check_bearer(authorization: str | None, token: str | None) -> None:
    """Nothing when no token is configured or the header carries it; otherwise a 401 :class:`ApiError`.

    The comparison is :func:`hmac.compare_digest` on the UTF-8 bytes, so its time does not depend on how many
    leading characters of a guess are right."""
    if not token:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")):
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong bearer token: send 'Authorization: Bearer <token>' "
            "(the --token the server was started with)",
            headers={"WWW-Authenticate": 'Bearer realm="dpdiff"'},
        )
