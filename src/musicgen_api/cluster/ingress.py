"""The cluster's front door: the same FastAPI app as a single server, over a pool of Ray Serve replicas.

One ingress replica sees every request, so its counts are the cluster's: the healthcheck answers from the replicas'
reported states, a full queue becomes the spec's JSON 503 with Retry-After (Ray's own answer is plain text), and a
replica that dies mid-stream becomes an `{"error": ...}` event instead of a silently cut 200.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayError, TaskCancelledError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from musicgen_api.api.app import create_app
from musicgen_api.cluster.board import ReplicaBoard
from musicgen_api.cluster.logs import setup_replica_logging
from musicgen_api.cluster.messages import INGRESS_NAME, Accepted, Refused
from musicgen_api.config import Settings
from musicgen_api.errors import Busy, InvalidRequest
from musicgen_api.generation import GenerationParams
from musicgen_api.service import Event, Failed, is_final

log = logging.getLogger(__name__)

REPLICA_LOST = "the replica generating this piece stopped ({}); try again: the next request goes to a working replica"


class DisconnectOnCancel:
    """Ray Serve's `receive()` raises TaskCancelledError once the client has gone, where Starlette expects an
    `http.disconnect` message; translated, a disconnect ends the stream quietly instead of as an internal error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_or_disconnect() -> Message:
            try:
                return await receive()
            except TaskCancelledError:
                return {"type": "http.disconnect"}

        await self.app(scope, receive_or_disconnect, send)


class RemoteJob:
    """A piece generating on a replica, relayed event by event."""

    def __init__(self, stream: DeploymentResponseGenerator[Any], accepted: Accepted, board: ReplicaBoard) -> None:
        self.id = accepted.job_id
        self.worker, self._slot, self._phase = accepted.replica, accepted.slot, accepted.phase
        self._stream, self._board = stream, board
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self.ended = asyncio.Event()  # the relay is over: its last event went to the client, or the client left

    def cancel(self, reason: str | None = None) -> None:
        """Cancels the handle call; the replica's handler then stops the worker (and waits for it). Ray's cancel
        carries no message, so the reason is logged here."""
        if reason is not None and not self.ended.is_set():
            log.info("job %s: cancelling it on replica %s: %s", self.id, self.worker, reason)
        self._stream.cancel()
        self.ended.set()

    def stop(self, reason: str) -> None:
        """End the relay with `{"error": reason}` (the cluster is shutting down); ending it cancels the piece."""
        self._stop_reason = reason
        self._stop.set()

    async def events(self) -> AsyncIterator[Event]:
        stop = asyncio.ensure_future(self._stop.wait())
        item: asyncio.Future[Any] | None = None
        try:
            while True:
                item = asyncio.ensure_future(self._stream.__anext__())
                await asyncio.wait((item, stop), return_when=asyncio.FIRST_COMPLETED)
                if not item.done():
                    yield Failed(self._stop_reason)
                    return
                event = item.result()
                last = is_final(event)
                if last:  # sent once the replica's slot is free again
                    self._board.report_slot(self.worker, self._slot, self._phase + 1)
                yield event
                if last:
                    return
        except StopAsyncIteration:
            yield Failed(REPLICA_LOST.format("its stream ended without a result"))
        except TaskCancelledError:
            return
        except RayError as exc:
            log.warning("job %s: replica %s failed mid-stream: %r", self.id, self.worker, exc)
            self._board.forget(self.worker)
            yield Failed(REPLICA_LOST.format(type(exc).__name__))
        finally:
            for pending in (item, stop):
                if pending is not None and not pending.done():
                    pending.cancel()
            self.ended.set()


class ReplicaPool:
    """`Generations` over the model deployment: what `create_app` needs, answered at cluster level."""

    def __init__(self, replicas: DeploymentHandle[Any], board: ReplicaBoard, queue: int) -> None:
        self._replicas = replicas.options(stream=True)
        self._board, self._queue = board, queue
        self._relaying: set[RemoteJob] = set()

    @property
    def busy(self) -> bool:
        return self._board.busy

    def describe(self) -> dict[str, Any]:
        return self._board.describe()

    async def start(self, params: GenerationParams) -> RemoteJob:
        """Send the request to an idle replica (Ray's router picks it), waiting in Ray's bounded queue if all are
        busy; answer once a replica has started it, so refusals can still be plain HTTP errors."""
        if not self._board.admits(self._queue):
            raise Busy("every replica is busy and the queue is full")
        stream = cast(DeploymentResponseGenerator[Any], self._replicas.generate.remote(params))
        self._board.waiting += 1
        try:
            first = await stream.__anext__()
        except BackPressureError:
            raise Busy("every replica is busy and the queue is full") from None
        except asyncio.CancelledError:  # the client left while its request waited
            stream.cancel()
            raise
        except RayError as exc:
            log.warning("a replica failed while taking a request: %r", exc)
            raise Busy("the replica taking this request stopped") from None
        finally:
            self._board.waiting -= 1
        if isinstance(first, Refused):
            raise Busy(first.message) if first.busy else InvalidRequest(first.message, field=first.field)
        assert isinstance(first, Accepted), f"unexpected first item from a replica: {first!r}"
        self._board.report_slot(first.replica, first.slot, first.phase)
        job = RemoteJob(stream, first, self._board)
        self._relaying = {running for running in self._relaying if not running.ended.is_set()} | {job}
        return job

    async def stop_all(self, reason: str, within: float) -> None:
        """Give every running piece's client `{"error": reason}` and wait (up to `within` s) until each has it."""
        jobs = [job for job in self._relaying if not job.ended.is_set()]
        for job in jobs:
            job.stop(reason)
        if jobs:
            await asyncio.wait([asyncio.ensure_future(job.ended.wait()) for job in jobs], timeout=within)


@serve.deployment(name=INGRESS_NAME, num_replicas=1)
@serve.ingress()
class MusicIngress:
    def __init__(self, settings: Settings, replicas: DeploymentHandle[Any], queue: int) -> None:
        setup_replica_logging(settings, ingress=True)
        self._settings = settings
        self._board = ReplicaBoard()
        self._pool = ReplicaPool(replicas, self._board, queue)

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = create_app(self._pool, self._settings)
        app.add_middleware(DisconnectOnCancel)
        return app

    def report(self, replica: str, phases: list[int], info: dict[str, Any]) -> None:
        """Called by each replica on every state change and heartbeat: each of its slots' phase."""
        self._board.report(replica, phases, info)

    async def stop_all(self, reason: str, within: float) -> None:
        """Called by `musicgen-api cluster` before it takes the application down."""
        await self._pool.stop_all(reason, within)
