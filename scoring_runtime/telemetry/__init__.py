"""Telemetry shared by the runtime and the operator: secret scrubbing, and Azure Monitor export.

Importing this package is cheap: OpenTelemetry and the Azure exporter are imported only by
`configure_telemetry` when a connection string is configured.

    from scoring_runtime import telemetry
    telemetry.configure_telemetry("scoring-runtime", secret_files=[api_key_file])
    app.add_middleware(telemetry.TelemetryMiddleware)   # a span per request, when on
    with telemetry.reconcile_span(namespace, name):  # operator
        ...
"""

from scoring_runtime.telemetry.asgi import TelemetryMiddleware, instrument_asgi
from scoring_runtime.telemetry.scrub import (
    REDACTED,
    SecretFilter,
    install_log_scrubbing,
    register_secret,
    register_secrets,
    scrub,
)
from scoring_runtime.telemetry.setup import (
    CONNECTION_STRING_ENV,
    Telemetry,
    active,
    configure_telemetry,
    reconcile_span,
    record_outcome,
    register_secret_file,
    shutdown_telemetry,
    span,
)

__all__ = [
    "CONNECTION_STRING_ENV",
    "REDACTED",
    "SecretFilter",
    "Telemetry",
    "TelemetryMiddleware",
    "active",
    "configure_telemetry",
    "install_log_scrubbing",
    "instrument_asgi",
    "reconcile_span",
    "record_outcome",
    "register_secret",
    "register_secret_file",
    "register_secrets",
    "scrub",
    "shutdown_telemetry",
    "span",
]
