"""A span per HTTP request for any ASGI app, switched on by `configure_telemetry`.

`TelemetryMiddleware` can be added unconditionally: while telemetry is off it only passes the
request through (OpenTelemetry is not even imported). When on, it delegates to the
OpenTelemetry ASGI middleware (server span with method, URL, status code; never bodies or
headers) and renames the span after the matched route template once routing has run, so span
names stay few (`POST /v2/models/{name}/infer`) whatever the path parameters.
"""

from __future__ import annotations

from typing import Any

from scoring_runtime.telemetry import setup

#: Probes and scrapes: no span per health check (regexes, matched against the URL).
DEFAULT_EXCLUDED_URLS = "/v2/health/,/healthz,/readyz,/livez,/metrics"

Scope = dict[str, Any]


class TelemetryMiddleware:
    def __init__(self, app: Any, excluded_urls: str = DEFAULT_EXCLUDED_URLS) -> None:
        self.app = app
        self.excluded_urls = excluded_urls
        self._traced: Any = None
        self._traced_for: setup.Telemetry | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        telemetry = setup.active()
        if telemetry is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._traced_for is not telemetry:
            self._traced = _otel_middleware(_RouteNamer(self.app), telemetry, self.excluded_urls)
            self._traced_for = telemetry
        await self._traced(scope, receive, send)


class _RouteNamer:
    """Inside the server span: once routing has run, name the span after the route template.

    Done when the response starts (the route is known by then), because the OpenTelemetry
    middleware may end the span as soon as the response body is complete.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        async def naming_send(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                route = getattr(scope.get("route"), "path", None)
                if route:
                    from opentelemetry import trace

                    current = trace.get_current_span()
                    current.update_name(f"{scope.get('method', 'HTTP')} {route}")
                    current.set_attribute("http.route", route)
            await send(message)

        await self.app(scope, receive, naming_send)


def _otel_middleware(app: Any, telemetry: setup.Telemetry, excluded_urls: str) -> Any:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.metrics import NoOpMeterProvider

    def details(scope: Scope) -> tuple[str, dict[str, Any]]:
        return f"{scope.get('method', 'HTTP')} {scope.get('path', '')}", {}

    return OpenTelemetryMiddleware(
        app,
        excluded_urls=excluded_urls,
        default_span_details=details,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=NoOpMeterProvider(),  # request metrics come from the Prometheus registry, once
        exclude_spans=["receive", "send"],
    )


def instrument_asgi(app: Any, excluded_urls: str = DEFAULT_EXCLUDED_URLS) -> Any:
    """Wrap a whole ASGI app (for apps that do not take middleware)."""
    return TelemetryMiddleware(app, excluded_urls)
