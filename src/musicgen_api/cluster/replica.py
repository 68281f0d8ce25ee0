"""A model replica: one pipeline and its generation slots (`--slots`, default one), on its own GPU, driven over a
Ray Serve handle.

Ray admits as many requests at a time here as there are slots (`max_ongoing_requests`) and counts a slot free as
soon as its handler returns, so a handler whose client has gone waits, shielded from further cancellation, until the
worker thread has really stopped: a slot is never offered new work while a cancelled piece still runs in it.
"""

import asyncio
import heapq
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from ray import serve

from musicgen_api.cluster.board import HEARTBEAT_S
from musicgen_api.cluster.logs import setup_replica_logging
from musicgen_api.cluster.messages import INGRESS_NAME, Accepted, Refused
from musicgen_api.config import Settings
from musicgen_api.errors import Busy, InvalidRequest
from musicgen_api.generation import GenerationParams
from musicgen_api.pipeline import build_pipeline
from musicgen_api.service import Event, GenerationService, JobStream, is_final

log = logging.getLogger(__name__)


async def _until_stopped(job: JobStream) -> None:
    """Wait for the job's last event, which the service sends once the worker has let go of the slot."""

    async def drain() -> None:
        async for event in job.events():
            if is_final(event):
                return

    stopped = asyncio.ensure_future(drain())
    while not stopped.done():
        try:
            await asyncio.shield(stopped)
        except asyncio.CancelledError:
            continue  # cancelled again while waiting: keep waiting, the slot is not free yet


class ReplicaSlots:
    """The replica's generation slots as Ray drives them: per slot, a phase that counts pieces started and stopped
    (what the heartbeat reports), and a handler that holds on, when cancelled, until the worker has let go. A slot
    is numbered here, not by the service, and is taken back only when its handler returns: Ray admits no more
    handlers than slots, so one is always free for a new handler."""

    def __init__(self, service: GenerationService, name: str) -> None:
        self.service, self.name = service, name
        self.phases = [0] * service.slots
        self._free = list(range(service.slots))  # a heap: the lowest free slot first
        self.changed = asyncio.Event()

    def _next_phase(self, slot: int) -> None:
        self.phases[slot] += 1
        self.changed.set()

    async def generate(self, params: GenerationParams) -> AsyncGenerator[Accepted | Refused | Event, None]:
        """Accepted (or Refused), then the job's events; on cancellation, return only once the worker stopped."""
        try:
            job = await self.service.start(params)
        except InvalidRequest as exc:
            yield Refused(str(exc), field=exc.field)
            return
        except Busy as exc:
            yield Refused(str(exc), busy=True)
            return
        slot = heapq.heappop(self._free)
        self._next_phase(slot)
        try:
            yield Accepted(self.name, job.id, slot, self.phases[slot])
            async for event in job.events():
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            job.cancel("cancelled by the ingress (its client left, or the cluster is stopping)")
            await _until_stopped(job)
            raise
        finally:
            self._next_phase(slot)
            heapq.heappush(self._free, slot)


@serve.deployment  # max_ongoing_requests: the replica's --slots, set by the deployment plan
class MusicReplica:
    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]  # Serve awaits async constructors
        setup_replica_logging(settings)
        pipeline = await asyncio.to_thread(build_pipeline, settings)  # minutes on a GPU: keep the loop answering
        context = serve.get_replica_context()
        service = GenerationService(pipeline)
        self._slot = ReplicaSlots(service, context.replica_id.unique_id)
        self._info = {key: value for key, value in service.describe().items() if key != "free_slots"}
        self._board = serve.get_deployment_handle(INGRESS_NAME, app_name=context.app_name)
        self._heartbeat = asyncio.create_task(self._beat())
        log.info("replica %s ready: %s", self._slot.name, self._info)

    async def _beat(self) -> None:
        """Tell the ingress this replica's phase on every change, and at least once a HEARTBEAT_S."""
        slot = self._slot
        while True:
            slot.changed.clear()
            try:
                report = self._board.report.remote(slot.name, list(slot.phases), self._info)
                await asyncio.wait_for(report, HEARTBEAT_S * 2)
            except Exception as exc:  # the ingress is restarting or overloaded: the next beat tries again
                log.debug("replica %s: heartbeat not delivered: %r", slot.name, exc)
            try:
                await asyncio.wait_for(slot.changed.wait(), HEARTBEAT_S)
            except TimeoutError:
                pass

    async def generate(self, params: GenerationParams) -> AsyncIterator[Accepted | Refused | Event]:
        async with aclosing(self._slot.generate(params)) as items:  # closed here, not whenever it is collected
            async for item in items:
                yield item

    def __del__(self) -> None:
        """Serve's graceful shutdown: stop the running piece, so its client hears why, and end the worker."""
        slot = getattr(self, "_slot", None)
        if slot is not None:
            slot.service.shutdown()
