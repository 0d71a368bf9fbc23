"""The FLOOR row: a bare ASGI app on the same server stack as the runtime, answering canned bytes.

It reads the whole request body (as the runtime must) and answers with a response captured from
the runtime for the same request shape, doing no routing, no parsing, no model and no metrics.
Served by the same uvicorn settings as `scoring serve` (uvloop, httptools, one worker, no access
log, no proxy headers), it measures what HTTP alone costs on this machine: the runtime's own
overhead per request is its time per request minus the floor's (and minus the model's), see
docs/benchmarks.md.

    FLOOR_RESPONSE=response.json uvicorn floor_app:app --loop uvloop --http httptools --no-proxy-headers
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_BODY = Path(os.environ["FLOOR_RESPONSE"]).read_bytes() if os.environ.get("FLOOR_RESPONSE") else b'{"ok":true}'
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())],
}
_END = {"type": "http.response.body", "body": _BODY}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the whole body, as any real endpoint must
        msg = await receive()
        more = msg.get("more_body", False)
    await send(_START)
    await send(_END)
