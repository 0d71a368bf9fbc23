"""Errors a flavour raises; the server maps each to an HTTP status with a JSON `{"error": ...}` body."""

from __future__ import annotations


class BadRequest(Exception):
    """The client sent something we cannot score; the message says what is wrong and how to fix it."""

    status = 400


class UnsupportedMediaType(BadRequest):
    """The body's content type is not one this flavour accepts on /score."""

    status = 415


class ModelLoadError(Exception):
    """The model directory cannot be served (unknown flavour, unsafe or corrupt artifact ...)."""
