"""A cluster-wide cap on Deployment rollouts running at once (`SCORING_OPERATOR_MAX_CONCURRENT_ROLLOUTS`).

Why: a label move across hundreds of ScoringModels would otherwise start hundreds of rollouts in
the same second. Each one makes the controller-manager write its Deployment and ReplicaSets
several times, create and delete pods, and every watcher re-receive all of it: on a small control
plane the controller-manager falls behind its own caches, its writes conflict and are retried,
and everything (other teams' workloads included) slows down. With a cap, the operator starts at
most `limit` rollouts of a new model version at once, and the next one as soon as one finishes.

A slot is held from the apply of the new version until its rollout is complete, or until it made
no progress for `stall_after` seconds (a stuck model never blocks the rest: its slot is handed on,
it keeps rolling in the background). Waiting models are served in the order they asked
(first come, first served) and report `RolloutQueued` in their status. Pure: no kopf, no client.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Key = tuple[str, str]


class RolloutSlots:
    """Who holds a rollout slot (and since when it last progressed), and who waits for one, in order."""

    def __init__(self, limit: int, stall_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        #: 0: no cap.
        self.limit = limit
        self.stall_after = stall_after
        self._clock = clock
        self._holders: dict[Key, float] = {}  # key -> when it was admitted or last progressed
        self._waiting: dict[Key, None] = {}  # insertion-ordered set: the queue

    @property
    def running(self) -> int:
        """Slots held (stalled holders not counted). Read-only: the metrics thread reads it too."""
        deadline = self._clock() - self.stall_after
        return sum(1 for at in list(self._holders.values()) if at > deadline)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def holds(self, key: Key) -> bool:
        return key in self._holders

    def acquire(self, key: Key) -> bool:
        """Whether `key` may start its rollout now; if not, it is queued (keeping its place in line)."""
        if self.limit <= 0 or key in self._holders:
            return True
        self._expire()
        free = self.limit - len(self._holders)
        ahead = self.position(key) - 1 if key in self._waiting else len(self._waiting)
        if ahead < free:
            self._waiting.pop(key, None)
            self._holders[key] = self._clock()
            return True
        self._waiting.setdefault(key, None)
        return False

    def queued(self, key: Key) -> bool:
        return key in self._waiting

    def withdraw(self, key: Key) -> None:
        """`key` no longer waits for a slot (its rollout is no longer wanted); a slot it holds stays held."""
        self._waiting.pop(key, None)

    def position(self, key: Key) -> int:
        """1-based place of `key` in the queue (0: not waiting)."""
        for i, waiter in enumerate(self._waiting, 1):
            if waiter == key:
                return i
        return 0

    def progressed(self, key: Key) -> None:
        """The holder's rollout moved on: its stall timer starts again."""
        if key in self._holders:
            self._holders[key] = self._clock()

    def release(self, key: Key) -> list[Key]:
        """`key` is done (rollout complete, or it no longer wants a slot): the waiters that may go now."""
        self._waiting.pop(key, None)
        if self._holders.pop(key, None) is None:
            return []
        return self.next_up()

    def next_up(self) -> list[Key]:
        """The waiters at the head of the queue for which a slot is free (they still `acquire` it)."""
        self._expire()
        free = max(0, self.limit - len(self._holders)) if self.limit > 0 else len(self._waiting)
        return list(self._waiting)[:free]

    def next_expiry(self) -> float | None:
        """Seconds until the oldest holder's slot is handed on for lack of progress (None: no holder)."""
        if not self._holders:
            return None
        return max(0.0, min(self._holders.values()) + self.stall_after - self._clock())

    def _expire(self) -> None:
        deadline = self._clock() - self.stall_after
        for key in [k for k, at in self._holders.items() if at <= deadline]:
            del self._holders[key]
