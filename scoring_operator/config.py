"""Operator-wide settings: command-line flags, or `SCORING_OPERATOR_*` env vars for `kopf run`.

Kept free of kopf/lightkube imports so the pure builders can take the defaults (images) from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

ENV_PREFIX = "SCORING_OPERATOR_"
DEFAULT_RUNTIME_IMAGE = "ghcr.io/scoring-operator/runtime:0.1.0"
DEFAULT_RUNTIME_GPU_IMAGE = "ghcr.io/scoring-operator/runtime-cuda:0.1.0"
FIELD_MANAGER = "scoring-operator"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """A setting has a value the operator cannot use; the message says which and how to fix it."""


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the operator needs to know that is not in a ScoringModel."""

    #: Where the operator itself reads the local file registry (its mount of the registry volume).
    local_registry_root: Path | None = None
    #: Runtime images used when a ScoringModel sets no `spec.runtime.image`.
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    runtime_gpu_image: str = DEFAULT_RUNTIME_GPU_IMAGE
    #: Namespaces to watch; empty means all namespaces.
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    metrics_port: int = 8080
    liveness_port: int = 8081
    bind_address: str = "0.0.0.0"
    log_level: str = "INFO"
    #: Per-call timeout for registry reads (a hung network share must not stall reconciles forever).
    registry_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"log level {self.log_level!r}: use one of {', '.join(LOG_LEVELS)}")
        for name in ("metrics_port", "liveness_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name.replace('_', '-')} {port}: use a TCP port (1-65535, or 0 to disable)")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Settings from `SCORING_OPERATOR_*` env vars (what the chart sets), defaults otherwise."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name, "").strip()
            return value or None

        def port(name: str, default: int) -> int:
            raw = get(name)
            try:
                return default if raw is None else int(raw)
            except ValueError:
                raise ConfigError(f"{ENV_PREFIX}{name}={raw!r}: expected a port number") from None

        root = get("LOCAL_REGISTRY_ROOT")
        namespaces = tuple(n.strip() for n in (get("NAMESPACES") or "").split(",") if n.strip())
        return cls(
            local_registry_root=Path(root) if root else None,
            runtime_image=get("RUNTIME_IMAGE") or DEFAULT_RUNTIME_IMAGE,
            runtime_gpu_image=get("RUNTIME_GPU_IMAGE") or DEFAULT_RUNTIME_GPU_IMAGE,
            namespaces=namespaces,
            metrics_port=port("METRICS_PORT", 8080),
            liveness_port=port("LIVENESS_PORT", 8081),
            bind_address=get("BIND_ADDRESS") or "0.0.0.0",
            log_level=(get("LOG_LEVEL") or "INFO").upper(),
        )

    def with_overrides(self, **changes: object) -> OperatorConfig:
        """A copy with the given (non-None) fields replaced: CLI flags over env vars."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]


_current: OperatorConfig | None = None


def set_current(config: OperatorConfig) -> None:
    """Install the settings the handlers use (called by `scoring-operator` before kopf starts)."""
    global _current
    _current = config


def current() -> OperatorConfig:
    """The installed settings, or those from the environment (for `kopf run -m scoring_operator.handlers`)."""
    global _current
    if _current is None:
        _current = OperatorConfig.from_env()
    return _current
