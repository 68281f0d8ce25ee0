"""The ingress's view of the replicas: which are alive, which are idle, and what they serve.

The healthcheck and `GET /api/info` answer from here, without sending anything through Ray's request queue (a
routed healthcheck never sees "busy" and can wait behind generations). Replicas push their state on every change and
once a `HEARTBEAT_S`; one not heard from for `STALE_AFTER_S` is taken for dead.

A replica's state is a phase number that only grows: odd while it generates its ((phase + 1) / 2)-th piece, even
once that piece has stopped. Reports travel on different channels and may arrive out of order, so an older phase
never overwrites a newer one.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HEARTBEAT_S = 1.0
STALE_AFTER_S = 5.0  # a generating replica's event loop can lag behind its heartbeat on a loaded CPU


def is_generating(phase: int) -> bool:
    return phase % 2 == 1


@dataclass
class ReplicaState:
    phase: int
    seen: float
    info: dict[str, Any] = field(default_factory=dict)


class ReplicaBoard:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._replicas: dict[str, ReplicaState] = {}
        self.waiting = 0  # requests sent to the replicas that none has started yet (being routed, or queued)

    def report(self, replica: str, phase: int, info: dict[str, Any] | None = None) -> None:
        now = self._clock()
        known = self._replicas.get(replica)
        if known is None:
            self._replicas[replica] = ReplicaState(phase, now, info or {})
            return
        known.seen = now
        known.phase = max(known.phase, phase)
        if info:
            known.info = info

    def forget(self, replica: str) -> None:
        """A replica whose stream failed is gone; do not wait for its heartbeat to go stale."""
        self._replicas.pop(replica, None)

    def _live(self) -> dict[str, ReplicaState]:
        oldest = self._clock() - STALE_AFTER_S
        for name in [name for name, state in self._replicas.items() if state.seen < oldest]:
            del self._replicas[name]
        return self._replicas

    @property
    def idle(self) -> int:
        return sum(not is_generating(state.phase) for state in self._live().values())

    def admits(self, queue: int) -> bool:
        """Whether one more request fits: every live replica may hold one and `queue` more may wait. Counted here,
        where every request passes, because Ray's own bound counts requests still being routed and lets a burst
        through or refuses it by a request or two."""
        return self.waiting < self.idle + queue  # (waiting + generating) < (live + queue), generating = live - idle

    @property
    def busy(self) -> bool:
        """No replica could start a request now: each is generating or about to take a request already sent."""
        return self.idle <= self.waiting

    def describe(self) -> dict[str, Any]:
        live = self._live()
        info = next((state.info for state in live.values() if state.info), {})
        return {**info, "replicas": len(live), "idle_replicas": self.idle}
