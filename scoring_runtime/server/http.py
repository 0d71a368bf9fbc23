"""Small HTTP helpers: fast JSON responses, `{"error": ...}` bodies, a body reader with a size cap."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from scoring_runtime.flavours.errors import BadRequest

_JSON_TYPE = (b"content-type", b"application/json")


class JSON(Response):
    """JSON rendered by orjson (numpy arrays serialised natively)."""

    media_type = "application/json"

    def __init__(self, content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None,
                 media_type: str | None = None, background: Any = None) -> None:
        if (headers is not None or media_type is not None or background is not None
                or status_code < 200 or status_code in (204, 304)):
            super().__init__(content, status_code, headers, media_type, background)
            return
        # the common case (every answer of the scoring routes): the two headers Starlette's init_headers would
        # make, in its order, without its generic header logic
        self.status_code = status_code
        self.background = None
        self.body = body = self.render(content)
        self.raw_headers = [(b"content-length", str(len(body)).encode()), _JSON_TYPE]

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


#: longest error message sent (messages quote client input through `describe`, this is the last bound)
MAX_ERROR_CHARS = 2000


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """The one error shape of every endpoint (also the V2 protocol's): `{"error": "..."}`.

    Bounded in size, and safe for any text (lone surrogates, control characters): rendering an
    error can never fail or turn into a 500 of its own.
    """
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    try:
        body = orjson.dumps({"error": message})
    except TypeError:  # orjson refuses lone surrogates
        body = orjson.dumps({"error": message.encode("utf-8", "replace").decode("utf-8")})
    return Response(body, status_code=status, headers=dict(headers) if headers else None,
                    media_type="application/json")


class BodyTooLarge(BadRequest):
    status = 413


class RequestTooLarge(BadRequest):
    """More rows than the server scores in one request."""

    status = 413


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body, failing with 413 as soon as it passes `limit` (never buffering more than that)."""
    hint = f"the limit is {limit} bytes (server setting --max-body-bytes / SCORING_MAX_BODY_BYTES)"
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest(f"invalid Content-Length header {declared!r}") from None
        if size > limit:
            raise BodyTooLarge(f"request body of {size} bytes is too large; {hint}")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(f"request body is too large (over {limit} bytes so far); {hint}")
        chunks.append(chunk)
    return b"".join(chunks)
