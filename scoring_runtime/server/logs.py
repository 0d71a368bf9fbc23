"""One log line per event, as JSON (default) or `key=value` text; used by uvicorn's loggers too.

Never log request bodies or credentials: handlers pass only the fields they choose through
`event(...)`, and the access log records method, path, status and duration, nothing else.
"""

from __future__ import annotations

import logging
import traceback
from datetime import UTC, datetime
from typing import Any

import orjson

_STD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log event `name` with structured fields (rendered as JSON keys or key=value pairs)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = dict(getattr(record, "fields", {}) or {})
    for k, v in record.__dict__.items():
        if k not in _STD and k != "fields" and not k.startswith("_"):
            out.setdefault(k, v)
    if record.exc_info and record.exc_info[1] is not None:
        out["exc"] = "".join(traceback.format_exception(record.exc_info[1])).rstrip()
    return out


class JsonFormatter(logging.Formatter):
    """`{"time": ..., "level": ..., "logger": ..., "msg": ..., <fields>}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    """`<time> <level> <logger> <msg> key=value ...` on one line (newlines escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        parts = [ts, record.levelname.lower(), record.name, record.getMessage()]
        for k, v in _fields(record).items():
            s = str(v)
            quote = not s or any(c in s for c in ' "=\n')
            parts.append(f"{k}={orjson.dumps(s).decode() if quote else s}")
        return " ".join(parts).replace("\n", "\\n")


def log_config(level: str, fmt: str) -> dict[str, Any]:
    """A logging dictConfig for our loggers and uvicorn's (uvicorn's access log is replaced by ours)."""
    formatter = f"{__name__}.{'JsonFormatter' if fmt == 'json' else 'TextFormatter'}"
    handler = {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stderr"}
    lvl = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"()": formatter}},
        "handlers": {"line": handler},
        "loggers": {
            "scoring_runtime": {"handlers": ["line"], "level": lvl, "propagate": False},
            "uvicorn": {"handlers": ["line"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }
