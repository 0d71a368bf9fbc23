"""A lean HTTP/1.1 client for shadow copies: keep-alive connections to one origin, answers discarded.

Why not a general client (aiohttp, httpx): a copy runs on the stable runtime's own event loop, so
its CPU cost comes out of the clients' answers. A general client spends ~150 µs of Python per
request (measured here) building and parsing what a copy does not need; this one writes the
request as one pre-built byte string and lets httptools (uvicorn's C parser, already installed)
read the answer, keeping only its status code. It does exactly one thing: POST to one origin
(`http://` or `https://`, verified with the given TLS context), at most `limit` connections, one
request at a time on each, a connection reused while the server keeps it alive.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import httptools


class ShadowHttpError(Exception):
    """The copy got no complete answer (the message says why)."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `send()` one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[tuple[int, bool]] | None = None
        self.closed = False
        self.got_bytes = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ShadowHttpError(f"invalid HTTP answer: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ShadowHttpError(f"connection closed before the answer{f': {exc}' if exc else ''}"))

    # httptools callbacks
    def on_message_complete(self) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((self.parser.get_status_code(), self.parser.should_keep_alive()))

    def _fail(self, exc: Exception) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc)

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bool]]:
        assert self.transport is not None
        self.got_bytes = False
        self.answer = asyncio.get_running_loop().create_future()
        self.parser = httptools.HttpResponseParser(self)
        if self.closed or self.transport.is_closing():
            self.answer.set_exception(ShadowHttpError("connection closed before the answer"))
        else:
            self.transport.write(request)
        return self.answer

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class ShadowClient:
    """POSTs to one origin over at most `limit` keep-alive connections (callers bound their concurrency)."""

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext | None = None, limit: int = 32) -> None:
        self.base_url = base_url
        u = urlsplit(base_url)
        self.https = u.scheme == "https"
        self.host = u.hostname or ""
        self.port = u.port or (443 if self.https else 80)
        self.prefix = u.path.rstrip("/")
        default_port = 443 if self.https else 80
        self.host_header = (f"[{self.host}]" if ":" in self.host else self.host) + (
            f":{self.port}" if self.port != default_port else "")
        self.ssl = (ssl_context or ssl.create_default_context()) if self.https else None
        self.limit = limit
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self.retired = False

    def request_bytes(self, path: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
        lines = [f"POST {self.prefix}{path} HTTP/1.1", f"host: {self.host_header}", f"content-length: {len(body)}",
                 *(f"{k}: {v}" for k, v in headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            _Connection, self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None)
        self._open.add(conn)
        return conn

    async def post(self, path: str, headers: list[tuple[str, str]], body: bytes, timeout: float) -> int:
        """The answer's status code; raises ShadowHttpError, OSError, ssl.SSLError or TimeoutError."""
        request = self.request_bytes(path, headers, body)
        async with asyncio.timeout(timeout):
            while self._idle:  # a reused connection the server closed meanwhile: try the next, then a new one
                conn = self._idle.pop()
                if conn.closed:
                    self._open.discard(conn)
                    continue
                try:
                    return await self._exchange(conn, request)
                except ShadowHttpError:
                    if conn.got_bytes:
                        raise
            return await self._exchange(await self._connect(), request)

    async def _exchange(self, conn: _Connection, request: bytes) -> int:
        try:
            status, keep_alive = await conn.send(request)
        except BaseException:
            conn.close()
            self._open.discard(conn)
            raise
        if keep_alive and not conn.closed and not self.retired and len(self._idle) < self.limit:
            self._idle.append(conn)
        else:
            conn.close()
            self._open.discard(conn)
        return status

    def retire(self) -> None:
        """No new requests: idle connections close now, busy ones once their answer is in."""
        self.retired = True
        for conn in self._idle:
            conn.close()
            self._open.discard(conn)
        self._idle.clear()

    def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
