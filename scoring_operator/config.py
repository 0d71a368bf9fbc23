"""Operator-wide settings: command-line flags, or `SCORING_OPERATOR_*` env vars (what the chart sets).

Read with pydantic-settings, like the runtime's `scoring_runtime/settings.py`: one typed model,
validated once at start-up, with messages that say which setting is wrong and how to fix it.
Kept free of kopf and Kubernetes client imports so the pure builders can take the defaults
(images) from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "SCORING_OPERATOR_"
DEFAULT_RUNTIME_IMAGE = "ghcr.io/scoring-operator/runtime:0.1.0"
DEFAULT_RUNTIME_GPU_IMAGE = "ghcr.io/scoring-operator/runtime-cuda:0.1.0"
FIELD_MANAGER = "scoring-operator"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """A setting has a value the operator cannot use; the message says which and how to fix it."""


def _describe(e: ValidationError) -> str:
    """One line per bad setting, named as the user writes it (the env var)."""
    lines = []
    for err in e.errors():
        name = str(err["loc"][0]) if err["loc"] else "?"
        value = err.get("input")
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{ENV_PREFIX}{name.upper()}={value!r}: {msg}")
    return "; ".join(lines)


class OperatorConfig(BaseSettings):
    """Everything the operator needs to know that is not in a ScoringModel."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, env_ignore_empty=True)

    #: Where the operator itself reads the local file registry (its mount of the registry volume).
    local_registry_root: Path | None = Field(None, description="the operator's mount of the local registry")
    #: Runtime images used when a ScoringModel sets no `spec.runtime.image`.
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    runtime_gpu_image: str = DEFAULT_RUNTIME_GPU_IMAGE
    #: Namespaces to watch; empty means all namespaces (env: comma-separated).
    namespaces: Annotated[tuple[str, ...], NoDecode] = ()
    metrics_port: int = Field(8080, description="port of /metrics (0: off)")
    liveness_port: int = Field(8081, description="port of /healthz (0: off)")
    bind_address: str = "0.0.0.0"
    log_level: str = "INFO"
    #: Per-call timeout for registry reads (a hung network share must not stall reconciles forever).
    registry_timeout: float = Field(30.0, gt=0)
    #: Reconciles running at once (and connections to the apiserver): bounds memory and API bursts
    #: when hundreds of ScoringModels wake together (a label move, the registry coming back).
    max_concurrent_reconciles: int = Field(24, ge=1, le=1000)
    #: Rollouts of a new model version running at once in the whole cluster (0: no cap): a label
    #: move across hundreds of ScoringModels then rolls them in waves instead of flooding the
    #: control plane, and needs surge room for this many new pods, not one per model (see
    #: `scoring_operator.rollouts`). Off by default: on the 500-model benchmark a cap (25, 50,
    #: 100) made the label move no faster than none (bench/results/operator-scale.md).
    max_concurrent_rollouts: int = Field(0, ge=0, le=10000)

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(n.strip() for n in v.split(",") if n.strip())
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _known_level(cls, v: Any) -> Any:
        level = str(v).strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"log level {v!r}: use one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("metrics_port", "liveness_port", mode="before")
    @classmethod
    def _port(cls, v: Any, info: Any) -> Any:
        what = str(info.field_name).replace("_", "-")
        try:
            port = int(v)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: expected a port number") from None
        if not 0 <= port <= 65535:
            raise ValueError(f"{what} {port}: use a TCP port (1-65535, or 0 to disable)")
        return port

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> OperatorConfig:
        """Settings from `SCORING_OPERATOR_*` (os.environ, or `env`), then the given non-None overrides.

        Raises ConfigError naming the bad setting.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            if env is None:
                return cls(**given)
            values = {k[len(ENV_PREFIX):].lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX) and v.strip()}
            return cls.model_validate({**values, **given})
        except ValidationError as e:
            raise ConfigError(_describe(e)) from None

    def with_overrides(self, **changes: Any) -> OperatorConfig:
        """A copy with the given (non-None) fields replaced and validated: CLI flags over env vars."""
        given = {k: v for k, v in changes.items() if v is not None}
        try:
            return type(self).model_validate({**self.model_dump(), **given})
        except ValidationError as e:
            raise ConfigError(_describe(e)) from None


_current: OperatorConfig | None = None


def set_current(config: OperatorConfig) -> None:
    """Install the settings the handlers use (called by `scoring-operator` before kopf starts)."""
    global _current
    _current = config


def current() -> OperatorConfig:
    """The installed settings, or those from the environment (for `kopf run -m scoring_operator.handlers`)."""
    global _current
    if _current is None:
        _current = OperatorConfig.load(os.environ)
    return _current
