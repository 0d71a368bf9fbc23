"""OpenTelemetry processors that redact secrets from spans and log records before they are exported.

They wrap the exporting processor (`ScrubbingSpanProcessor(BatchSpanProcessor(exporter))`), so
nothing unscrubbed is ever queued for export. Spans are immutable once ended: a scrubbed copy
is handed on. Log records are still writable when emitted: they are scrubbed in place.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk._logs import LogRecordProcessor, ReadWriteLogRecord
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import Status

from scoring_runtime.telemetry.scrub import scrub, scrub_mapping, scrub_value


def scrubbed_span(span: ReadableSpan) -> ReadableSpan:
    """A copy of `span` with its name, attributes, events and status text scrubbed."""
    events = [Event(scrub(e.name), scrub_mapping(e.attributes), e.timestamp) for e in span.events]
    status = span.status
    if status.description:
        status = Status(status.status_code, scrub(status.description))
    return ReadableSpan(
        name=scrub(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=scrub_mapping(span.attributes),
        events=events,
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class ScrubbingSpanProcessor(SpanProcessor):
    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.inner.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        self.inner.on_end(scrubbed_span(span))

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class ScrubbingLogProcessor(LogRecordProcessor):
    def __init__(self, inner: LogRecordProcessor) -> None:
        self.inner = inner

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        record = log_record.log_record
        body: Any = record.body
        record.body = scrub_value(body)
        if record.attributes:
            clean = scrub_mapping(record.attributes)
            for key, value in clean.items():
                record.attributes[key] = value  # type: ignore[index]
        self.inner.on_emit(log_record)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
