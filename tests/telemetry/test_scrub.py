"""Secret scrubbing of text, log records and OpenTelemetry spans/log records."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from scoring_runtime.telemetry.scrub import (
    REDACTED,
    SecretFilter,
    clear_registered_secrets,
    install_log_scrubbing,
    register_secret,
    scrub,
    scrub_mapping,
)

JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJlLWJ5dGVz"


@pytest.fixture(autouse=True)
def _fresh_secrets() -> Iterator[None]:
    clear_registered_secrets()
    yield
    clear_registered_secrets()


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
        ("    'Authorization': 'Bearer fake-arm-token-0123456789abcdef'", "fake-arm-token-0123456789abcdef"),
        ('{"authorization": "Basic dXNlcjpwYXNzd29yZA=="}', "dXNlcjpwYXNzd29yZA=="),
        ("retrying with bearer s3cr3t-t0ken-value", "s3cr3t-t0ken-value"),
        ("GET https://acct.blob.core.windows.net/c/b?sv=2021&sr=c&sig=AbC%2Bdef%3D&se=2030", "AbC%2Bdef%3D"),
        ("InstrumentationKey=4a1e7c1d-0000-4000-8000-5ec12e7ab1e5;IngestionEndpoint=https://x/",
         "4a1e7c1d-0000-4000-8000-5ec12e7ab1e5"),
        ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=Zm9vYmFy+/==;EndpointSuffix=core",
         "Zm9vYmFy+/=="),
        ("Endpoint=sb://ns/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0", "c2VjcmV0"),
        ("POST /score?api_key=k-123456789&x=1", "k-123456789"),
        ("X-API-Key: my-api-key-value", "my-api-key-value"),
        ('{"client_secret": "cl1ent-s3cret"}', "cl1ent-s3cret"),
        (f"projected token {JWT} read", JWT),
        ("password=hunter2hunter2", "hunter2hunter2"),
        ("env: AZURE_CLIENT_SECRET=az-cl1ent-s3cret-value", "az-cl1ent-s3cret-value"),
        ("AZURE_CLIENT_CERTIFICATE_PASSWORD: cert-pa55word", "cert-pa55word"),
        ("GET /redirect?to=https%3A%2F%2Fa.blob.core.windows.net%2Fc%3Fsv%3D1%26sig%3DQWJjRGVm", "QWJjRGVm"),
    ],
)
def test_secrets_are_redacted_by_shape(text: str, secret: str) -> None:
    out = scrub(text)
    assert secret not in out
    assert REDACTED in out


@pytest.mark.parametrize(
    "text",
    [
        "HTTP status code: 404 for model faq version 3",
        "the tokenizer has 30522 tokens; signature matched",
        "model 'faq' resolved latest -> 7 in 0.25 s",
        "Authorization failed for identity 11111111-2222",  # no value after a ':'/'=': nothing to hide
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert scrub(text) == text


def test_registered_values_are_redacted_anywhere() -> None:
    key = "sk-live-4f9d2c1b7a"
    assert register_secret(key)
    assert not register_secret("abc")  # too short to redact safely
    out = scrub(f"client sent {key}, then x{key}y and '{key}'")
    assert key not in out and out.count(REDACTED) == 3


def test_longer_secret_containing_a_shorter_one_is_redacted_whole() -> None:
    register_secret("prefix-secret")
    register_secret("prefix-secret-and-more")
    assert scrub("v=prefix-secret-and-more!") == f"v={REDACTED}!"


def test_mapping_drops_values_under_secret_keys() -> None:
    out = scrub_mapping({"http.request.header.authorization": ("Bearer x",), "url": "/a?sig=zzz", "n": 3})
    assert out == {"http.request.header.authorization": REDACTED, "url": f"/a?sig={REDACTED}", "n": 3}


def test_filter_scrubs_message_args_and_traceback() -> None:
    register_secret("super-secret-api-key")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter())
    logger = logging.getLogger("tests.telemetry.filter")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("key %s token %s", "super-secret-api-key", "Bearer abcdefghijkl")
        try:
            raise RuntimeError("failed with AccountKey=Zm9vYmFyYmF6")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "super-secret-api-key" not in text and "abcdefghijkl" not in text and "Zm9vYmFyYmF6" not in text
    assert "RuntimeError" in text and text.count(REDACTED) >= 3


def test_record_factory_covers_handlers_added_later(caplog: pytest.LogCaptureFixture) -> None:
    install_log_scrubbing()
    install_log_scrubbing()  # idempotent
    register_secret("registered-secret-123")
    with caplog.at_level(logging.INFO, logger="tests.telemetry.late"):
        logging.getLogger("tests.telemetry.late").info("value=%s", "registered-secret-123")
    assert "registered-secret-123" not in caplog.text
    assert caplog.records[-1].getMessage() == f"value={REDACTED}"


def test_span_and_log_processors_scrub_before_export() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="needs the [azure] extra")
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from scoring_runtime.telemetry.otel_scrub import ScrubbingLogProcessor, ScrubbingSpanProcessor

    register_secret("api-key-from-file-42")
    spans = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(ScrubbingSpanProcessor(SimpleSpanProcessor(spans)))
    with tp.get_tracer("t").start_as_current_span("GET /x?api_key=api-key-from-file-42") as s:
        s.set_attribute("http.url", "https://h/blob?sig=abcdef123456")
        s.set_attribute("http.request.header.authorization", "Bearer zzz")
        s.add_event("retry", {"detail": "token=api-key-from-file-42"})
    (span,) = spans.get_finished_spans()
    blob = repr((span.name, dict(span.attributes or {}), [dict(e.attributes or {}) for e in span.events]))
    assert "api-key-from-file-42" not in blob and "abcdef123456" not in blob and "zzz" not in blob
    assert span.attributes is not None and span.attributes["http.url"] == f"https://h/blob?sig={REDACTED}"

    logs = InMemoryLogRecordExporter()
    lp = LoggerProvider()
    lp.add_log_record_processor(ScrubbingLogProcessor(SimpleLogRecordProcessor(logs)))
    lp.get_logger("t").emit(body="Bearer abcdefghijklmnop", attributes={"key": "api-key-from-file-42"})
    (record,) = logs.get_finished_logs()
    assert record.log_record.body == f"Bearer {REDACTED}"
    assert dict(record.log_record.attributes or {}) == {"key": REDACTED}
