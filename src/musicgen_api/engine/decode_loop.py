"""The decode loop: the next step of every running generation, taken together in one batched step.

A decode step reads every weight of the decoder whether it serves one request or eight, so with `--slots N` up to N
generations share it. Each generation's worker thread joins with its window (`join`) and is given a slot; each step
advances every joined window at once, each at its own position. A window joins at the next step and its slot is
free again as soon as it leaves (finished, failed or cancelled).

The loop has no thread of its own: the worker that finds it unled takes the lead (`advance`) and steps for everyone,
between its own progress reports, until its window leaves; then another worker takes over. The others wait for
their steps and report, stream and check for cancellation on their own threads. With one slot the one worker runs
every step itself, exactly as a plain loop would. (Steps on a thread of their own would cost a CPU dearly: each
thread that runs PyTorch keeps its own OpenMP team, and with more teams than cores their threads stop spinning
between operations; a tiny model's step took 7.6 ms against 2.0 ms.)
"""

import copy
import heapq
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

R = TypeVar("R")


class Mark(Protocol):
    """A point in the decoder's queued work (a CUDA event): `synchronize` returns once everything before it ran."""

    def synchronize(self) -> None: ...


@dataclass(eq=False)
class Seat(Generic[R]):
    """One window in the decode loop: what the leader steps and its worker watches (under the loop's lock)."""

    request: R  # the engine's description of the window
    first: int  # its first decode position (the prompt fills those before)
    steps: int  # decode steps it takes
    index: int = -1  # its slot: its rows of the batch
    queued: int = 0  # steps issued for it
    done: int = 0  # steps known to be finished: what the worker may report and read
    installed: bool = False
    stopped: bool = False  # the decoder no longer advances it
    leaving: bool = False  # its worker wants it stopped before it is finished
    error: BaseException | None = None

    @property
    def position(self) -> int:
        """The position its next step decodes."""
        return self.first + self.queued


class SlotEngine(Protocol[R]):
    """What the decode loop drives: an engine whose buffers hold `slots` windows side by side."""

    chunk: int  # steps issued between marks: 1 when a step is done on return (eager), more when queued (CUDA)

    def install(self, seat: Seat[R]) -> None:
        """Load the window into its slot's buffers (and prefill its prompt)."""

    def step(self, running: list[Seat[R]]) -> None:
        """Issue one batched step that advances every running window by one position."""

    def park(self, seat: Seat[R]) -> None:
        """Stop advancing this slot: later steps leave its rows' results as they are."""

    def mark(self) -> Mark | None:
        """A mark after the steps issued so far, or None when they are already done."""


class DecodeLoop(Generic[R]):
    def __init__(self, engine: SlotEngine[R], slots: int) -> None:
        self._engine, self.slots = engine, slots
        self._cond = threading.Condition()
        self._free = list(range(slots))  # a heap: the lowest free slot first, its rows warm in the caches
        self._joining: list[Seat[R]] = []
        self._running: list[Seat[R]] = []
        self._leader: Seat[R] | None = None  # whose worker takes the steps now
        self._in_flight: deque[tuple[Mark | None, list[tuple[Seat[R], int]]]] = deque()
        self._issued: list[tuple[Seat[R], int]] = []  # (window, steps issued) since the last mark
        self._since_mark = 0

    @property
    def in_use(self) -> int:
        """Slots taken: joining, running, or finished with their worker still reading the result."""
        with self._cond:
            return self.slots - len(self._free)

    def join(self, seat: Seat[R]) -> None:
        """Take a slot and wait until the window is loaded into it; raises what loading raised (the slot is then
        free again). The service admits no more generations than slots, so a slot is free at once or, when a
        cancelled window is still leaving, after one step."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._free))
            seat.index = heapq.heappop(self._free)
            self._joining.append(seat)
            self._cond.notify_all()
        self._drive(seat, lambda: seat.installed)

    def advance(self, seat: Seat[R], reported: int) -> int:
        """Return once more than `reported` of the window's steps are done (taking them, when leading); returns how
        many are."""
        self._drive(seat, lambda: seat.done > reported)
        return seat.done

    def leave(self, seat: Seat[R]) -> None:
        """Give the slot (and the lead) back; a window still running is stopped first, before the next step."""
        with self._cond:
            if self._leader is seat:
                self._leader = None
            if not seat.stopped:
                seat.leaving = True
                if self._leader is None:  # nobody is stepping: stop it here
                    self._engine.park(seat)
                    self._stop(seat)
                self._cond.notify_all()
                self._cond.wait_for(lambda: seat.stopped)
            heapq.heappush(self._free, seat.index)
            self._cond.notify_all()

    def _drive(self, seat: Seat[R], ready: Callable[[], bool]) -> None:
        """Until `ready()`: take the lead when nobody has it and step, or wait for the leader's steps."""
        while True:
            with self._cond:
                while True:
                    if seat.error is not None:
                        raise seat.error
                    if ready():
                        return
                    if self._leader is None or self._leader is seat:
                        self._leader = seat
                        break
                    self._cond.wait()
            try:
                self._iterate()
            except Exception as exc:
                log.exception("the decode step failed; every running generation fails with it")
                self._fail_all(exc)

    def _iterate(self) -> None:
        """One round, by the leader: stop leaving windows, load joining ones, one step, report what is done."""
        engine = self._engine
        with self._cond:
            joining, self._joining = self._joining, []
            for seat in [s for s in self._running if s.leaving]:
                engine.park(seat)
                self._stop(seat)
        for seat in joining:
            self._install(seat)
        with self._cond:
            running = list(self._running)
        finished = False
        if running:
            engine.step(running)
            self._since_mark += 1
            for seat in running:
                seat.queued += 1
                self._issued.append((seat, seat.queued))
                if seat.queued == seat.steps:
                    engine.park(seat)
                    with self._cond:
                        self._stop(seat)
                    finished = True
        if self._issued and (self._since_mark >= engine.chunk or finished or not running):
            self._in_flight.append((engine.mark(), self._issued))
            self._issued, self._since_mark = [], 0
        # Keep one chunk queued behind the one being reported (none when steps are done on return).
        in_flight = self._in_flight
        while in_flight and (len(in_flight) > 1 or in_flight[0][0] is None or not running):
            mark, counts = in_flight.popleft()
            if mark is not None:
                mark.synchronize()
            with self._cond:
                for seat, done in counts:
                    seat.done = max(seat.done, done)
                self._cond.notify_all()

    def _install(self, seat: Seat[R]) -> None:
        try:
            self._engine.install(seat)
        except Exception as exc:  # this window only (an odd prompt, out of memory): the others keep going
            with self._cond:
                seat.error, seat.stopped = exc, True
                heapq.heappush(self._free, seat.index)
                if self._leader is seat:
                    self._leader = None
                self._cond.notify_all()
            return
        with self._cond:
            seat.installed = True
            self._running.append(seat)
            self._cond.notify_all()

    def _stop(self, seat: Seat[R]) -> None:
        """(Under the lock.) The window is parked: its worker may give its slot back."""
        seat.stopped = True
        self._running.remove(seat)
        self._cond.notify_all()

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            for seat in self._running:
                try:
                    self._engine.park(seat)
                except Exception:  # the device itself may be what failed; the slot is reset when next taken
                    log.debug("could not park slot %d after the failure", seat.index, exc_info=True)
            for seat in self._running + self._joining:
                seat.error, seat.stopped = _own_copy(exc), True
            for seat in self._joining:
                heapq.heappush(self._free, seat.index)
            self._running, self._joining = [], []
            self._in_flight.clear()
            self._issued, self._since_mark = [], 0
            self._leader = None
            self._cond.notify_all()


def _own_copy(exc: BaseException) -> BaseException:
    """The step's failure as each of its windows raises it: the same type and message (an out-of-memory error still
    reads as one), one object per worker thread, since raising writes the traceback into the exception."""
    try:
        mine = copy.copy(exc)
    except Exception:
        return exc
    mine.__cause__ = exc
    return mine
