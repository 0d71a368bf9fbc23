"""Registry errors, grouped by what a caller should do about them."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class: something went wrong talking to a model registry."""

    #: True when retrying later may succeed (network, throttling); False when a human must act.
    retryable: bool = False
    #: A short machine-readable reason, used as a Kubernetes condition reason.
    reason: str = "RegistryError"


class ModelNotFound(RegistryError):
    reason = "ModelNotFound"


class LabelNotFound(ModelNotFound):
    reason = "LabelNotFound"


class RegistryUnavailable(RegistryError):
    """The registry cannot be reached right now (missing mount, network, throttled)."""

    retryable = True
    reason = "RegistryUnavailable"


class AccessDenied(RegistryError):
    reason = "AccessDenied"


class IntegrityError(RegistryError):
    """An artifact's checksum or size does not match the manifest: never serve it."""

    reason = "IntegrityError"


class RegistryCorrupt(RegistryError):
    """The registry holds a file that cannot be parsed (labels.json, model.json): a human must fix it."""

    reason = "RegistryCorrupt"


class InvalidReference(RegistryError, ValueError):
    reason = "InvalidReference"
