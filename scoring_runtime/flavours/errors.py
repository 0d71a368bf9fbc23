"""Errors a flavour raises; the server maps each to an HTTP status with a JSON `{"error": ...}` body.

Messages often quote what the client sent. `describe` renders such a value safely: bounded in
depth, items and characters whatever the input (a value nested 1,000 levels deep, a 10 MB string),
so building a 400 can never raise `RecursionError` or cost more than the value's first few items.
"""

from __future__ import annotations

from typing import Any

#: longest rendering of one client value inside an error message
DESCRIBE_MAX_CHARS = 120
_MAX_DEPTH = 3
_MAX_ITEMS = 8


class BadRequest(Exception):
    """The client sent something we cannot score; the message says what is wrong and how to fix it."""

    status = 400


class UnsupportedMediaType(BadRequest):
    """The body's content type is not one this flavour accepts on /score."""

    status = 415


class ContentTooLarge(BadRequest):
    """Well-formed, but more than the model scores in one request (too many rows, too long a text): 413."""

    status = 413


class ModelLoadError(Exception):
    """The model directory cannot be served (unknown flavour, unsafe or corrupt artifact ...)."""


def _render(value: Any, depth: int, budget: int) -> str:
    """repr-like, visiting at most _MAX_ITEMS items per level and _MAX_DEPTH levels (no deep recursion)."""
    if isinstance(value, str):
        if len(value) > budget:
            return repr(value[:budget]) + f"... ({len(value)} characters)"
        return repr(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        # str() of a huge int is slow and refused past 4,300 digits
        return repr(value) if value.bit_length() <= 256 else f"<integer of {value.bit_length()} bits>"
    if isinstance(value, list | tuple | dict):
        opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]")
        if depth >= _MAX_DEPTH:
            return f"{opening}...{closing}" if value else f"{opening}{closing}"
        parts: list[str] = []
        used = 0
        items = value.items() if isinstance(value, dict) else value
        for n, item in enumerate(items):
            if n >= _MAX_ITEMS or used > budget:
                parts.append(f"... ({len(value)} items)")
                break
            if isinstance(value, dict):
                k, v = item
                text = f"{_render(k, depth + 1, budget)}: {_render(v, depth + 1, budget)}"
            else:
                text = _render(item, depth + 1, budget)
            parts.append(text)
            used += len(text) + 2
        return opening + ", ".join(parts) + closing
    return f"<{type(value).__name__}>"


def describe(value: Any, limit: int = DESCRIBE_MAX_CHARS) -> str:
    """A short, safe rendering of a client-supplied value for an error message (see the module docstring)."""
    text = _render(value, 0, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."
