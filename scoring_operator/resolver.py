"""Pin a ScoringModel's model reference to one version by asking its registry.

Uses `scoring_runtime.registry`, which is light (no torch/sklearn imports). Registry calls are
blocking file or network I/O, so they run in a worker thread with a timeout: a hung network share
shows up as RegistryUnavailable instead of stalling every reconcile.

Answers are shared: one question (registry, model, version or label) is asked once however many
ScoringModels ask it at the same time, and an answer younger than the caller's `max_age` (its poll
interval) is reused, so 500 ScoringModels tracking one label cost one registry read per interval.
Failures are reused for at most `ERROR_TTL` (half a second). When an answer differs from the previous one
(a label moved, the registry came back), `on_change(question)` is called so every ScoringModel
asking it can be woken at once.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scoring_operator import spec as api
from scoring_operator.builders.status import Resolved
from scoring_runtime.registry import (
    ModelRegistry,
    RegistryCorrupt,
    RegistryError,
    RegistryUnavailable,
    ResolvedModel,
    open_registry,
)


class RegistryNotConfigured(RegistryError):
    """The operator was not given a way to read this registry type."""

    reason = "RegistryNotConfigured"
    retryable = False


#: (registry URI, model name, "version:N" or "label:L"): what a ScoringModel asks its registry.
Question = tuple[str, str, str]
#: Seconds a failed answer is reused (bounds registry load while 500 objects retry an outage);
#: shorter than the first retry (cache.MIN_RETRY), so one object's retries each ask again.
ERROR_TTL = 0.5


@dataclass(frozen=True)
class _Answer:
    at: float
    resolved: Resolved | None = None
    error: RegistryError | None = None

    def same_as(self, other: _Answer | None) -> bool:
        if other is None:
            return False
        if self.resolved is not None or other.resolved is not None:
            return self.resolved == other.resolved
        return (type(self.error), str(self.error)) == (type(other.error), str(other.error))


class Resolver:
    """Resolves `spec.model` against the registries the operator can read."""

    def __init__(
        self, local_registry_root: Path | None, timeout: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.local_registry_root = local_registry_root
        self.timeout = timeout
        self.clock = clock
        self.on_change: Callable[[Question], None] | None = None
        self.reads = 0  # registry round trips made (for tests and the scale benchmark)
        self._registries: dict[str, ModelRegistry] = {}
        self._answers: dict[Question, _Answer] = {}
        self._asking: dict[Question, asyncio.Future[_Answer]] = {}

    def question(self, ref: api.ModelRef) -> Question:
        """The question `ref` asks (raises RegistryNotConfigured when its registry cannot be read)."""
        which = f"version:{ref.version}" if ref.version is not None else f"label:{ref.label}"
        return (self.registry_uri(ref.registry), ref.name, which)

    def forget(self, question: Question) -> None:
        """Drop a cached answer nobody asks any more."""
        self._answers.pop(question, None)

    def registry_uri(self, registry: api.RegistrySpec) -> str:
        """Where the operator reads this registry (its own mount, not the pod's)."""
        if isinstance(registry, api.LocalRegistry):
            if self.local_registry_root is None:
                raise RegistryNotConfigured(
                    "the operator has no local registry mounted: start it with --local-registry-root "
                    "(Helm: set localRegistry.claimName) so it can resolve versions"
                )
            root = self.local_registry_root / registry.path if registry.path else self.local_registry_root
            return root.as_uri()
        if isinstance(registry, api.AzureMLRegistry):
            # Read with the operator's own Azure identity (chart: azure.workloadIdentity.clientId).
            return registry.uri
        raise RegistryNotConfigured(f"unsupported registry type {registry.type!r}")  # pragma: no cover

    async def resolve(self, ref: api.ModelRef, max_age: float = 0.0) -> Resolved:
        """The version `ref` means (an answer at most `max_age` seconds old).

        Raises `RegistryError` subclasses (with .reason/.retryable).
        """
        question = self.question(ref)
        answer = self._answers.get(question)
        now = self.clock()
        fresh = answer is not None and now - answer.at <= (max_age if answer.error is None else min(max_age, ERROR_TTL))
        if not fresh:
            asking = self._asking.get(question)
            if asking is None:
                asking = self._asking[question] = asyncio.ensure_future(self._ask(question, ref))
                asking.add_done_callback(lambda _f: self._asking.pop(question, None))
            answer = await asyncio.shield(asking)
        assert answer is not None
        if answer.error is not None:  # a copy: re-raising one instance would pile up tracebacks
            raise copy.copy(answer.error).with_traceback(None)
        assert answer.resolved is not None
        return answer.resolved

    async def _ask(self, question: Question, ref: api.ModelRef) -> _Answer:
        try:
            answer = _Answer(self.clock(), resolved=await self._read(question[0], ref))
        except RegistryError as e:
            answer = _Answer(self.clock(), error=e)
        previous = self._answers.get(question)
        self._answers[question] = answer
        if previous is not None and not answer.same_as(previous) and self.on_change is not None:
            self.on_change(question)
        return answer

    async def _read(self, uri: str, ref: api.ModelRef) -> Resolved:
        """One registry round trip, in a worker thread, with a timeout."""
        self.reads += 1

        def work() -> ResolvedModel:
            # One registry object per URI: an Azure one keeps its client and cached token between reconciles.
            registry = self._registries.get(uri)
            if registry is None:
                registry = self._registries.setdefault(uri, open_registry(uri))
            return registry.resolve(ref.name, version=ref.version, label=ref.label)

        try:
            found = await asyncio.wait_for(asyncio.to_thread(work), timeout=self.timeout)
        except TimeoutError:
            raise RegistryUnavailable(f"registry {uri} did not answer within {self.timeout:g}s") from None
        except RegistryError:
            raise
        except OSError as e:  # a broken mount surfaces as an OSError from the file registry
            raise RegistryUnavailable(f"registry {uri}: {e}") from e
        except ValueError as e:
            raise RegistryCorrupt(f"registry {uri}: cannot read model {ref.name!r}: {e}") from e
        return Resolved(name=found.name, version=found.version, resolved_from=found.resolved_from)
