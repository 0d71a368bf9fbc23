"""The flavour interface: how the server talks to a loaded model, whatever framework it is.

A *flavour* is a `Scorer` subclass that knows one kind of model (e.g. the scikit-learn FAQ
matcher, a TorchScript image classifier). The server owns HTTP, auth, limits and metrics; a
flavour owns the model and its codecs. The request path is::

    body --parse_score / parse_v2--> Job --dispatcher--> predict([Job, ...]) --> result
         --render_score / render_v2--> JSON

`predict` runs in a worker thread (never on the event loop), and so do `parse_*` and `render_*`
unless the flavour sets `parse_in_thread = False` (for codecs so cheap that the thread hop costs
more; even then a body over 64 KiB or a result over 16 rows goes to the pool), so they may be CPU
heavy and may block. Everything may be called from several threads
at once, except that the batcher calls `predict` from one thread only.

`predict` takes a *list* of jobs because a batcher may combine requests; it returns one result
per job, in order. Bad input is reported by raising `BadRequest` with a message that says what
is wrong and how to fix it; any other exception becomes a 500.

To add a flavour: subclass `Scorer`, then add one line to `scoring_runtime.flavours.BUILTIN`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import orjson

from scoring_runtime.flavours.errors import BadRequest, ModelLoadError, UnsupportedMediaType
from scoring_runtime.flavours.v2 import V2Request, V2Tensor
from scoring_runtime.manifest import ModelManifest
from scoring_runtime.settings import RuntimeSettings

__all__ = [
    "BadRequest",
    "Batching",
    "Job",
    "ModelLoadError",
    "Scorer",
    "UnsupportedMediaType",
    "V2Request",
    "V2Tensor",
    "decode_json",
]


@dataclass(frozen=True)
class Batching:
    """Adaptive batching limits: rows per model call (1: off), the longest wait to fill a batch, and
    how many rows a lone request may have to be scored on the event loop (0: never; for models whose
    call costs about as much as the two thread hand-offs it saves, see scoring_runtime.batching)."""

    max_batch_size: int
    max_batch_delay_ms: float
    inline_max_rows: int = 0


@dataclass(slots=True)
class Job:
    """One request's parsed payload, ready for `Scorer.predict`.

    `rows` counts items, not requests: a batcher fills batches by rows (`max_batch_size`), so
    a request with 8 questions weighs 8. `data` is whatever the flavour's `predict` expects.
    """

    rows: int
    data: Any
    params: dict[str, Any] = field(default_factory=dict)
    #: V2 only: the output names the client asked for (None: all)
    outputs: list[str] | None = None


def decode_json(body: bytes) -> Any:
    """Parse a JSON body, or raise a BadRequest that points at the problem."""
    if not body:
        raise BadRequest("the request body is empty; send a JSON document")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON: {e}") from None


def media_type(content_type: str) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    return content_type.split(";", 1)[0].strip().lower()


class Scorer(abc.ABC):
    """A loaded model plus its request/response codecs; one instance per server process."""

    #: reported as `platform` in V2 model metadata
    platform: ClassVar[str] = "unknown"
    #: media types `parse_score` accepts; others get 415 before any parsing
    score_media_types: ClassVar[tuple[str, ...]] = ("application/json",)
    #: False: parse_* and render_* run on the event loop (only for codecs far cheaper than a thread hop)
    parse_in_thread: ClassVar[bool] = True
    #: JSON Schema of the `/score` JSON body, for the OpenAPI document (None: any JSON object)
    score_request_schema: ClassVar[dict[str, Any] | None] = None
    #: True: `Job.data` is sliceable by row and `predict` results are arrays (or tuples of arrays/None)
    #: of one row per job row, so the server may score a large request in chunks (see `split`, `join`)
    splittable: ClassVar[bool] = False

    def __init__(self, manifest: ModelManifest, settings: RuntimeSettings) -> None:
        self.manifest = manifest
        self.settings = settings

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @classmethod
    @abc.abstractmethod
    def load(cls, model_dir: Path, manifest: ModelManifest, settings: RuntimeSettings) -> Self:
        """Load the artifacts of `model_dir`; raise ModelLoadError with a clear message if impossible."""

    @abc.abstractmethod
    def v2_metadata(self) -> dict[str, Any]:
        """`{"inputs": [...], "outputs": [...]}` (name, datatype, shape; -1 for variable dims)."""

    @abc.abstractmethod
    def parse_score(self, body: bytes, content_type: str) -> Job:
        """Decode a `POST /score` body (media type already checked against `score_media_types`)."""

    @abc.abstractmethod
    def parse_v2(self, request: V2Request) -> Job:
        """Turn decoded V2 input tensors into a Job; check names, datatypes and shapes."""

    @abc.abstractmethod
    def predict(self, jobs: list[Job]) -> list[Any]:
        """Score jobs (maybe a batch of several requests); one result per job, in order."""

    @abc.abstractmethod
    def render_score(self, result: Any, job: Job) -> Any:
        """The JSON-able `/score` response for one job's result."""

    @abc.abstractmethod
    def render_v2(self, result: Any, job: Job) -> list[V2Tensor]:
        """The V2 output tensors for one job's result (the server applies `outputs` selection)."""

    def split(self, job: Job, rows: int) -> list[Job]:
        """Cut a large job into jobs of at most `rows` rows (for `splittable` flavours), to score a large
        request in bounded pieces; override when `Job.data` is not sliceable by row."""
        return [
            Job(rows=len(job.data[i:i + rows]), data=job.data[i:i + rows], params=job.params, outputs=job.outputs)
            for i in range(0, job.rows, rows)
        ]

    def join(self, job: Job, results: list[Any]) -> Any:
        """The result of `job` from the results of its `split` parts, in order."""
        import numpy as np

        first = results[0]
        if isinstance(first, tuple):
            return tuple(None if first[k] is None else np.concatenate([r[k] for r in results])
                         for k in range(len(first)))
        return np.concatenate(results)

    def batching_defaults(self) -> Batching | None:
        """The batching this model gets when the settings leave it unset; None: the flavour table decides
        (scoring_runtime.flavours.DEFAULT_BATCHING). Override when it depends on the loaded model (device)."""
        return None

    def warmup(self) -> None:
        """Run a representative request once so the first real one is not slow (caches, JIT)."""
        return None
