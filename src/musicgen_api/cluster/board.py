"""The ingress's view of the replicas: which are alive, how many of their slots are free, and what they serve.

The healthcheck and `GET /api/info` answer from here, without sending anything through Ray's request queue (a
routed healthcheck never sees "busy" and can wait behind generations). Replicas push their state on every change and
once a `HEARTBEAT_S`; one not heard from for `STALE_AFTER_S` is taken for dead.

A replica has one or more slots (`--slots`); each slot's state is a phase number that only grows: odd while it
generates its ((phase + 1) / 2)-th piece, even once that piece has stopped. Reports travel on different channels and
may arrive out of order, so an older phase never overwrites a newer one.
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
    phases: list[int]  # one per slot
    seen: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def free(self) -> int:
        return sum(not is_generating(phase) for phase in self.phases)


class ReplicaBoard:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._replicas: dict[str, ReplicaState] = {}
        self.waiting = 0  # requests sent to the replicas that none has started yet (being routed, or queued)

    def report(self, replica: str, phases: list[int], info: dict[str, Any] | None = None) -> None:
        """The replica's whole state: every slot's phase."""
        now = self._clock()
        known = self._replicas.get(replica)
        if known is None or len(known.phases) != len(phases):
            self._replicas[replica] = ReplicaState(list(phases), now, info or (known.info if known else {}))
            return
        known.seen = now
        known.phases = [max(old, new) for old, new in zip(known.phases, phases, strict=True)]
        if info:
            known.info = info

    def report_slot(self, replica: str, slot: int, phase: int) -> None:
        """One slot's phase, as the ingress learns it from a piece's own stream (started, or stopped)."""
        known = self._replicas.get(replica)
        if known is not None and 0 <= slot < len(known.phases):
            known.phases[slot] = max(known.phases[slot], phase)

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
        """Free slots over every live replica."""
        return sum(state.free for state in self._live().values())

    def admits(self, queue: int) -> bool:
        """Whether one more request fits: every live slot may hold one and `queue` more may wait. Counted here,
        where every request passes, because Ray's own bound counts requests still being routed and lets a burst
        through or refuses it by a request or two."""
        return self.waiting < self.idle + queue  # (waiting + generating) < (slots + queue), generating = slots - idle

    @property
    def busy(self) -> bool:
        """No slot could start a request now: each is generating or about to take a request already sent."""
        return self.idle <= self.waiting

    def describe(self) -> dict[str, Any]:
        live = self._live()
        info = next((state.info for state in live.values() if state.info), {})
        return {
            **info,
            "replicas": len(live),
            "idle_replicas": sum(state.free == len(state.phases) for state in live.values()),
            "slots": sum(len(state.phases) for state in live.values()),
            "free_slots": self.idle,
        }
