"""Settings of the scoring runtime (`scoring serve`): one model, read from CLI flags or `SCORING_*` env.

The operator configures scoring pods through environment variables, so every field here can be
set as `SCORING_<FIELD>` (e.g. `SCORING_MAX_BODY_BYTES=1048576`); CLI flags win over env.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["critical", "error", "warning", "info", "debug"]
#: Settings that name a file which must exist, and what the error message calls it.
_FILES = {"api_key_file": "API key file", "shadow_ca_file": "shadow CA file"}


def default_threads() -> int:
    """Model calls run in a thread pool: a few threads per core keep the loop free without thrashing."""
    return min(8, (os.cpu_count() or 1) + 2)


class RuntimeSettings(BaseSettings):
    """Everything `scoring serve` needs; validated once at start-up so a typo fails fast."""

    model_config = SettingsConfigDict(env_prefix="SCORING_", extra="ignore", frozen=True)

    model_dir: Path = Field(description="directory with model.json and the artifacts (what `scoring fetch` wrote)")
    host: str = Field("127.0.0.1", description="interface to bind; 0.0.0.0 in a pod")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0: any free port)")
    workers: int = Field(1, ge=1, le=64, description="server processes, each with its own copy of the model")
    threads: int = Field(default_factory=default_threads, ge=1, le=256,
                         description="threads per process for parsing and model calls")
    api_key_file: Path | None = Field(None, description="file with one accepted API key per line")
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1, description="largest accepted request body")
    allow_pickle: bool = Field(False, description="allow pickle/joblib models (runs code from the file!)")
    trusted_types: tuple[str, ...] = Field(
        (), description="extra type names skops may construct (env: JSON list), beyond the built-in allow-list"
    )
    log_level: LogLevel = "info"
    log_format: Literal["json", "text"] = Field("json", description="json: one JSON object per line")
    access_log: bool = Field(False, description="one log line per request (off by default: it costs throughput)")
    warmup: bool = Field(True, description="score a sample before reporting ready")
    # Adaptive batching (used when the batch size is > 1; see scoring_runtime.server.dispatch). Unset:
    # the flavour's measured default (scoring_runtime.flavours.batching_for; the FAQ matcher batches).
    max_batch_size: int | None = Field(
        None, ge=1, description="rows per model call; 1 disables batching; unset: the flavour's default"
    )
    max_batch_delay_ms: float | None = Field(
        None, ge=0, le=10_000, description="longest wait to fill a batch; unset: the flavour's default (else 2 ms)"
    )
    max_queue_rows: int = Field(1024, ge=1, description="rows waiting for the model before 503 Retry-After")
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with a 503 when overloaded")
    overload_refusal_delay_ms: float = Field(
        25.0, ge=0, le=1000,
        description="hold an overload 503 this long before sending it: clients retrying at once are slowed down, "
                    "so refusing them cannot eat the CPU the accepted requests need")
    # Per-request cost bounds (scoring_runtime.server.app): large requests are scored alone, in chunks.
    max_request_rows: int = Field(10_000, ge=1, description="rows (questions, records, images) per request (413)")
    max_request_elements: int = Field(2**21, ge=1, description="values in one V2 input tensor, prod(shape) (413); "
                                      "checked on the raw body before it is decoded")
    large_request_bytes: int = Field(64 * 1024, ge=1024,
                                     description="bodies above this are large: scored in chunks, one at a time")
    chunk_bytes: int = Field(16 * 1024, ge=256, description="a large request is scored in chunks of about "
                             "this many body bytes (bounds its peak memory)")
    max_large_requests: int = Field(4, ge=1, description="large requests admitted at once (one is scored, "
                                    "the others wait); 503 above")
    malloc_arenas: int = Field(1, ge=0, le=64, description="glibc malloc arenas (new threads share them instead "
                               "of taking fresh memory each; 0: glibc's default); MALLOC_ARENA_MAX wins")
    # Connection guards (scoring_runtime.server.protocol): checked on raw bytes, before any parsing.
    max_header_bytes: int = Field(32 * 1024, ge=1024, le=1024 * 1024,
                                  description="request line + headers, in bytes (431 above)")
    max_headers: int = Field(100, ge=8, le=10_000, description="header fields per request (431 above)")
    header_timeout_s: float = Field(30.0, gt=0, le=3600,
                                    description="time to receive the request line and headers (408, then closed)")
    body_timeout_s: float = Field(60.0, gt=0, le=3600,
                                  description="time to receive a request body once its headers are in (408)")
    # PyTorch models only (see scoring_runtime.flavours.torch_model); scikit-learn models ignore these.
    device: str = Field("auto", description="auto (CUDA when present, else CPU) | cpu | cuda | cuda:N | mps")
    half_precision: bool = Field(False, description="fp16 on a GPU; ignored with a warning on CPU")
    torch_threads: int = Field(0, ge=0, le=1024, description="torch intra-op threads per worker; 0: CPUs / workers")
    # HTTPS (scoring_runtime.server.tls): both files or neither; re-read when they change (a rotated Secret).
    tls_cert_file: Path | None = Field(None, description="PEM certificate (chain) to serve HTTPS with; "
                                       "needs tls_key_file")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file (unencrypted)")
    # Shadow traffic (scoring_runtime.server.shadow): copies of scoring requests sent to another runtime.
    shadow_url: str | None = Field(None, description="base URL of the shadow runtime (http:// or https://); "
                                   "unset: no shadowing (unless shadow_config_file says otherwise)")
    shadow_percent: float = Field(100.0, ge=0, le=100, description="share of scoring requests copied to the "
                                  "shadow, in percent")
    shadow_max_in_flight: int = Field(32, ge=1, le=10_000, description="copies on their way at once; "
                                      "more are dropped (and counted)")
    shadow_ca_file: Path | None = Field(None, description="CA bundle to verify an https shadow with "
                                        "(unset: the system CAs)")
    shadow_config_file: Path | None = Field(None, description="JSON file {\"url\": ..., \"percent\": ...} "
                                            "re-read when it changes; when set it wins over shadow_url/"
                                            "shadow_percent; missing or empty: no shadowing")
    shadow_timeout_s: float = Field(10.0, gt=0, le=600, description="longest wait for the shadow's answer to a copy")

    @field_validator("model_dir")
    @classmethod
    def _model_dir_exists(cls, v: Path) -> Path:
        if not v.is_dir():
            raise ValueError(f"model directory {v} does not exist (fetch one with `scoring fetch --dest DIR`)")
        return v

    @field_validator(*_FILES)
    @classmethod
    def _file_exists(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"{_FILES[str(info.field_name)]} {v} does not exist or is not a file")
        return v

    @field_validator("shadow_url")
    @classmethod
    def _shadow_url(cls, v: str | None) -> str | None:
        if v is None or v.strip() == "":
            return None
        problem = shadow_url_problem(v)
        if problem:
            raise ValueError(problem)
        return v.rstrip("/")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _batch_fits_queue(self) -> RuntimeSettings:
        if self.max_batch_size is not None and self.max_queue_rows < self.max_batch_size:
            raise ValueError(
                f"max_queue_rows ({self.max_queue_rows}) must be at least max_batch_size ({self.max_batch_size})"
            )
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> RuntimeSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            given, missing = (("tls_cert_file", "tls_key_file") if self.tls_key_file is None
                              else ("tls_key_file", "tls_cert_file"))
            raise ValueError(f"{given} is set but {missing} is not: HTTPS needs both the certificate and its key "
                             "(SCORING_TLS_CERT_FILE and SCORING_TLS_KEY_FILE), or neither for plain HTTP")
        return self

    @property
    def tls(self) -> bool:
        """True when the server speaks HTTPS."""
        return self.tls_cert_file is not None

    @property
    def batching(self) -> bool | None:
        """True/False when set explicitly; None: the flavour decides (see flavours.batching_for)."""
        return None if self.max_batch_size is None else self.max_batch_size > 1


def shadow_url_problem(url: str) -> str | None:
    """Why `url` cannot be a shadow base URL (None when it can): http(s)://host[:port][/prefix], nothing else."""
    from urllib.parse import urlsplit

    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as e:
        return f"shadow URL {url!r} is not a URL: {e}"
    if u.scheme not in ("http", "https") or not u.hostname:
        return f"shadow URL {url!r} must look like http://host:port or https://host:port"
    if u.query or u.fragment or u.username or u.password:
        return f"shadow URL {url!r} must not carry a query, fragment or credentials"
    if port == 0:
        return f"shadow URL {url!r} has port 0"
    return None
