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

Label moves in a local file registry are seen within `WATCH_EVERY` (a second), not at the next
poll: while label questions on such a registry are asked, one task stats each distinct labels file
every second (`ModelRegistry.labels_stamp`; a stat, not a read, and no inotify, which network
mounts do not deliver) and re-asks a question as soon as its file changed. Azure ML registries
have no such cheap check: their labels are polled at `pollInterval`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Callable, Hashable
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
#: Seconds between checks of the local registries' labels files (a label move is seen within this).
WATCH_EVERY = 1.0


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
        self, local_registry_root: Path | None, timeout: float = 30.0, clock: Callable[[], float] = time.monotonic,
        watch_every: float = WATCH_EVERY,
    ) -> None:
        self.local_registry_root = local_registry_root
        self.timeout = timeout
        self.clock = clock
        self.watch_every = watch_every
        self.on_change: Callable[[Question], None] | None = None
        self.reads = 0  # registry round trips made (for tests and the scale benchmark)
        self._registries: dict[str, ModelRegistry] = {}
        self._answers: dict[Question, _Answer] = {}
        self._asking: dict[Question, asyncio.Future[_Answer]] = {}
        #: Per watchable question: its labels file's stamp taken just before its answer was read.
        self._stamps: dict[Question, Hashable] = {}
        self._watcher: asyncio.Task[None] | None = None

    def question(self, ref: api.ModelRef) -> Question:
        """The question `ref` asks (raises RegistryNotConfigured when its registry cannot be read)."""
        which = f"version:{ref.version}" if ref.version is not None else f"label:{ref.label}"
        return (self.registry_uri(ref.registry), ref.name, which)

    def forget(self, question: Question) -> None:
        """Drop a cached answer nobody asks any more."""
        self._answers.pop(question, None)
        self._stamps.pop(question, None)

    async def close(self) -> None:
        """Stop watching labels files."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

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
            answer = await asyncio.shield(self._asked(question))
        assert answer is not None
        if answer.error is not None:  # a copy: re-raising one instance would pile up tracebacks
            raise copy.copy(answer.error).with_traceback(None)
        assert answer.resolved is not None
        return answer.resolved

    def _asked(self, question: Question) -> asyncio.Future[_Answer]:
        """The registry read answering `question`: the one in flight, or a new one."""
        asking = self._asking.get(question)
        if asking is None:
            asking = self._asking[question] = asyncio.ensure_future(self._ask(question))
            asking.add_done_callback(lambda _f: self._asking.pop(question, None))
        return asking

    async def _ask(self, question: Question) -> _Answer:
        stamp = await self._stamp(question)  # before the read: a change during the read is seen next time
        try:
            answer = _Answer(self.clock(), resolved=await self._read(question))
        except RegistryError as e:
            answer = _Answer(self.clock(), error=e)
        previous = self._answers.get(question)
        self._answers[question] = answer
        if stamp is not None:
            self._stamps[question] = stamp
            if self._watcher is None or self._watcher.done():
                self._watcher = asyncio.ensure_future(self._watch())
        if previous is not None and not answer.same_as(previous) and self.on_change is not None:
            self.on_change(question)
        return answer

    def _registry(self, uri: str) -> ModelRegistry:
        """One registry object per URI (an Azure one keeps its client and cached token between reads)."""
        registry = self._registries.get(uri)
        if registry is None:
            registry = self._registries.setdefault(uri, open_registry(uri))
        return registry

    def _stamps_now(self, questions: list[Question]) -> dict[Question, Hashable | None]:
        """The labels stamps of `questions` (label questions only), one stat per distinct file; blocking."""
        by_file: dict[tuple[str, str], Hashable | None] = {}
        out: dict[Question, Hashable | None] = {}
        for uri, name, which in questions:
            if not which.startswith("label:"):
                out[(uri, name, which)] = None
                continue
            if (uri, name) not in by_file:
                try:
                    by_file[(uri, name)] = self._registry(uri).labels_stamp(name)
                except Exception:  # only a shortcut: the read itself reports what is wrong
                    by_file[(uri, name)] = None
            out[(uri, name, which)] = by_file[(uri, name)]
        return out

    async def _stamp(self, question: Question) -> Hashable | None:
        if not question[2].startswith("label:"):
            return None  # a version never moves
        try:
            stamps = await asyncio.wait_for(asyncio.to_thread(self._stamps_now, [question]), timeout=self.timeout)
        except TimeoutError:
            return None  # a hung mount: the read says so; polls carry on
        return stamps[question]

    async def _watch(self) -> None:
        """Every `watch_every` seconds, re-ask each watched question whose labels file changed.

        Ends when nothing is watched any more (the next watchable answer restarts it). A hung mount
        stalls this task only (one thread); the reads keep their timeout.
        """
        while self._stamps:
            await asyncio.sleep(self.watch_every)
            watched = dict(self._stamps)
            if not watched:
                break
            now = await asyncio.to_thread(self._stamps_now, list(watched))
            for question, stamp in now.items():
                if stamp != watched[question] and self._stamps.get(question) == watched[question]:
                    self._asked(question)  # on_change wakes the askers if the answer moved

    async def _read(self, question: Question) -> Resolved:
        """One registry round trip, in a worker thread, with a timeout."""
        self.reads += 1
        uri, name, which = question
        kind, _, value = which.partition(":")
        version, label = (int(value), None) if kind == "version" else (None, value)

        def work() -> ResolvedModel:
            return self._registry(uri).resolve(name, version=version, label=label)

        try:
            found = await asyncio.wait_for(asyncio.to_thread(work), timeout=self.timeout)
        except TimeoutError:
            raise RegistryUnavailable(f"registry {uri} did not answer within {self.timeout:g}s") from None
        except RegistryError:
            raise
        except OSError as e:  # a broken mount surfaces as an OSError from the file registry
            raise RegistryUnavailable(f"registry {uri}: {e}") from e
        except ValueError as e:
            raise RegistryCorrupt(f"registry {uri}: cannot read model {name!r}: {e}") from e
        return Resolved(name=found.name, version=found.version, resolved_from=found.resolved_from)
