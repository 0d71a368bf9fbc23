"""Redact secrets from text before it reaches a log line, a span or an exported telemetry item.

Two kinds of secret are caught:
- by shape: bearer/basic credentials and ``Authorization`` headers, SAS signatures (``sig=``),
  connection-string keys (``InstrumentationKey=``, ``AccountKey=``, ``SharedAccessKey=`` ...),
  ``api_key=`` style parameters, ``X-API-Key`` headers and JWTs;
- by value: anything registered with `register_secret` (the runtime registers the API keys it
  reads from its key file), wherever it appears.

Pure standard library, so the registry and the CLI can use it without the telemetry extras.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[REDACTED]"
#: Shorter registered values would redact ordinary words; such keys are too weak to matter anyway.
MIN_SECRET_LENGTH = 6

_KEYWORDS = (
    r"InstrumentationKey|AccountKey|SharedAccessKey|SharedAccessSignature|Password|Pwd|"
    r"client[_-]?secret|access[_-]?token|refresh[_-]?token|api[_-]?key|apikey|x-api-key|"
    r"token|secret|sig"
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: <scheme> <credentials>  (header dumps, curl -v output)
    (re.compile(r"(?i)(\bAuthorization\b[\"']?\s*[:=]\s*[\"']?)(?:[A-Za-z-]+\s+)?[^\s\"',;}]+"), r"\1" + REDACTED),
    # Bearer/Basic credentials anywhere
    (re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + REDACTED),
    # key=value and key: value pairs (query strings, connection strings, JSON, headers), also with a
    # prefix (AZURE_CLIENT_SECRET=, DB_PASSWORD:) and URL-encoded (a SAS URL nested in a query: sig%3D)
    (
        re.compile(
            rf"(?i)((?:(?<![A-Za-z0-9])|(?<=%26)|(?<=%3F))(?:{_KEYWORDS})[\"']?\s*(?:[=:]|%3D)\s*[\"']?)([^\s\"'&;,}}]+)"
        ),
        r"\1" + REDACTED,
    ),
    # JSON Web Tokens (AAD access tokens, projected service-account tokens)
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), REDACTED),
)

_lock = threading.Lock()
_known: frozenset[str] = frozenset()
_known_re: re.Pattern[str] | None = None


def register_secret(value: str | None) -> bool:
    """Redact `value` wherever it appears from now on. Returns False for values too short to redact."""
    global _known, _known_re
    if not value or len(value.strip()) < MIN_SECRET_LENGTH:
        return False
    with _lock:
        _known = _known | {value.strip()}
        # Longest first, so a secret that contains another is redacted whole.
        alternatives = sorted(_known, key=len, reverse=True)
        _known_re = re.compile("|".join(re.escape(s) for s in alternatives))
    return True


def register_secrets(values: Iterable[str]) -> int:
    return sum(register_secret(v) for v in values)


def clear_registered_secrets() -> None:
    """Forget registered values (tests; a process that rotated its keys)."""
    global _known, _known_re
    with _lock:
        _known = frozenset()
        _known_re = None


def scrub(text: str) -> str:
    """`text` with every secret replaced by [REDACTED]."""
    if not text:
        return text
    known = _known_re
    if known is not None:
        text = known.sub(REDACTED, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub_value(value: Any) -> Any:
    """Scrub strings, and strings inside lists/tuples/dicts; other values pass unchanged."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, (list, tuple)):
        return type(value)(scrub_value(v) for v in value)
    if isinstance(value, Mapping):
        return {k: scrub_value(v) for k, v in value.items()}
    return value


def scrub_mapping(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """A scrubbed copy of an attribute mapping; a value under a secret-looking key is dropped whole."""
    out: dict[str, Any] = {}
    for key, value in (attributes or {}).items():
        if _SECRET_KEY_RE.search(key):
            out[key] = REDACTED
        else:
            out[key] = scrub_value(value)
    return out


_SECRET_KEY_RE = re.compile(
    r"(?i)(authorization|api[_-]?key|password|secret|access[_-]?token|connection[_-]?string|sas|cookie)"
)


class SecretFilter(logging.Filter):
    """Rewrites a record's message (and formatted traceback) with secrets redacted; never drops it."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
        return True


def scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    if getattr(record, "_scoring_scrubbed", False):
        return record
    try:
        message = record.getMessage()
    except Exception:  # a bad format string must not lose the record
        message = f"{record.msg!r} {record.args!r}"
    record.msg = scrub(message)
    record.args = None
    if record.exc_info and not record.exc_text:
        record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    if record.exc_text:
        record.exc_text = scrub(record.exc_text)
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)
    record._scoring_scrubbed = True
    return record


_factory_installed = False


def install_log_scrubbing() -> None:
    """Scrub every log record at creation, whichever logger or handler it later goes through.

    A record factory rather than handler filters, so handlers added later (uvicorn's, kopf's) are
    covered too. Idempotent.
    """
    global _factory_installed
    with _lock:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return scrub_record(previous(*args, **kwargs))

        logging.setLogRecordFactory(factory)
        _factory_installed = True
