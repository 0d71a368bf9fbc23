"""A loopback stand-in for the Application Insights ingestion endpoint (`POST /v2.1/track`)."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

IKEY = "4a1e7c1d-0000-4000-8000-5ec12e7ab1e5"


class Ingestion:
    """Captures every telemetry envelope posted to it; answers like the real service (200, all accepted)."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []  # decompressed request bodies, exactly as sent
        self.envelopes: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def connection_string(self) -> str:
        url = f"http://127.0.0.1:{self.port}/"
        return f"InstrumentationKey={IKEY};IngestionEndpoint={url};LiveEndpoint={url}"

    def __enter__(self) -> Ingestion:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        ingestion = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding", "").lower() == "gzip" or body[:2] == b"\x1f\x8b":
                    body = gzip.decompress(body)
                items = decode(body)
                with ingestion._lock:
                    ingestion.paths.append(self.path)
                    ingestion.raw.append(body)
                    ingestion.envelopes.extend(items)
                reply = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        return Handler

    # ------------------------------------------------------------ queries
    def of_type(self, base_type: str) -> list[dict[str, Any]]:
        return [e for e in self.envelopes if e.get("data", {}).get("baseType") == base_type]

    def metrics(self, name: str) -> list[dict[str, Any]]:
        """Every data point named `name`, flattened with the envelope's properties (dimensions)."""
        out = []
        for e in self.of_type("MetricData"):
            base = e["data"]["baseData"]
            for point in base.get("metrics", []):
                if point.get("name") == name:
                    out.append({**point, "properties": base.get("properties", {}), "tags": e.get("tags", {})})
        return out

    def text(self) -> str:
        return "\n".join(b.decode("utf-8", "replace") for b in self.raw)


def decode(body: bytes) -> list[dict[str, Any]]:
    """A JSON array of envelopes, or JSON lines (the service accepts both)."""
    text = body.decode("utf-8").strip()
    if not text:
        return []
    if text.startswith("["):
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def walk(obj: Any) -> Iterator[tuple[str, Any]]:
    """(path, value) for every leaf of a decoded envelope."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            for p, leaf in walk(v):
                yield f"{k}.{p}" if p else k, leaf
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            for p, leaf in walk(v):
                yield f"[{i}].{p}" if p else f"[{i}]", leaf
    else:
        yield "", obj
