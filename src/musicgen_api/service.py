"""The generation slots: how many are taken, one worker thread each, progress events, cancellation, release.

The only place that counts slots: one by default (the spec's singleton), `--slots N` for N generations decoding
together. The HTTP side calls `start()` and iterates the job's events; the model runs on the job's worker thread and
checks the job's cancel flag at every step. A slot is freed when its worker has actually stopped (finished, failed or
cancelled), never earlier, so no more generations than slots ever run at once.
"""

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from musicgen_api import metrics
from musicgen_api.errors import Busy, GenerationFailed
from musicgen_api.generation import AudioChunk, GenerationCancelled, GenerationParams, JobControl, RenderedAudio

log = logging.getLogger(__name__)

SHUTDOWN_MESSAGE = "the server is shutting down; try again in a moment"  # what a running piece's client hears


class Renderer(Protocol):
    slots: int  # generations it can run at once

    def describe(self) -> dict[str, Any]: ...
    def check(self, params: GenerationParams) -> None: ...
    def render(self, params: GenerationParams, job: JobControl) -> RenderedAudio: ...


@dataclass(frozen=True)
class Progress:
    percent: int


@dataclass(frozen=True)
class Completed:
    audio: RenderedAudio


@dataclass(frozen=True)
class Failed:
    message: str


Event = Progress | AudioChunk | Completed | Failed  # AudioChunks only for stream_audio requests


def is_final(event: Event) -> bool:
    """Whether `event` ends its stream (exactly one Completed or Failed does)."""
    return isinstance(event, Completed | Failed)


class JobStream(Protocol):
    """One generation as the HTTP side sees it: a stream of events and a way to stop it. `Job` runs here; the
    cluster's ingress relays one that runs on a replica, whose name is `worker`."""

    id: str

    @property
    def worker(self) -> str | None: ...

    def cancel(self, reason: str | None = None) -> None: ...
    def events(self) -> AsyncIterator[Event]: ...


class Job:
    """A generation on this process's worker thread."""

    worker: str | None = None  # one process, one slot: nothing to name

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.id = uuid.uuid4().hex[:12]
        self._loop = loop
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._cancelled = threading.Event()
        self.cancel_reason = "generation cancelled"
        self._percent = -1

    def cancel(self, reason: str | None = None) -> None:
        if reason is not None and not self._cancelled.is_set():
            self.cancel_reason = reason
        self._cancelled.set()

    def emit(self, event: Event) -> None:
        """Thread-safe: called from the worker."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the event loop has closed (server shutting down): nobody is listening
            pass

    def stop_if_cancelled(self) -> None:
        """Called from the worker between units of work."""
        if self._cancelled.is_set():
            raise GenerationCancelled

    def report(self, done: float) -> None:
        """Emit progress when the whole percent moves up (called from the worker)."""
        percent = min(100, int(done * 100))
        if percent > self._percent:
            self._percent = percent
            self.emit(Progress(percent))

    def audio(self, chunk: AudioChunk) -> None:
        """The next stretch of a stream_audio request's audio (called from the worker)."""
        self.emit(chunk)

    async def events(self) -> AsyncIterator[Event]:
        """Progress (and audio) events, then exactly one Completed or Failed."""
        while True:
            event = await self._queue.get()
            yield event
            if is_final(event):
                return


class GenerationService:
    def __init__(self, renderer: Renderer) -> None:
        self._renderer = renderer
        self.slots = renderer.slots
        self._lock = threading.Lock()
        self._running: set[Job] = set()  # the jobs holding a slot
        self._worker = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="generation")
        metrics.SLOTS.set(self.slots)
        metrics.SLOTS_IN_USE.set_function(lambda: len(self._running))

    @property
    def busy(self) -> bool:
        """Every slot is taken."""
        return len(self._running) >= self.slots

    def describe(self) -> dict[str, Any]:
        """The loaded model and the slots, as plain data."""
        return {**self._renderer.describe(), "slots": self.slots, "free_slots": self.slots - len(self._running)}

    async def start(self, params: GenerationParams) -> Job:
        """Take a slot and start generating, or raise Busy / InvalidRequest without starting anything."""
        job = Job(asyncio.get_running_loop())
        with self._lock:
            if len(self._running) >= self.slots:
                many = f"all {self.slots} generation slots are taken" if self.slots > 1 else ""
                raise Busy(many or "a generation is already running")
            self._running.add(job)
        try:
            self._renderer.check(params)
            self._worker.submit(self._run, job, params)
        except BaseException:
            self._release(job)
            raise
        return job

    def _release(self, job: Job) -> None:
        with self._lock:
            self._running.discard(job)

    def _run(self, job: Job, params: GenerationParams) -> None:
        started = time.perf_counter()
        extra = {"request_id": job.id}
        log.info("job %s: %d s, %r", job.id, params.duration, params.description[:80], extra=extra)
        metrics.GENERATIONS.labels("started").inc()
        outcome: Event
        try:
            job.report(0.0)
            audio = self._renderer.render(params, job)
            seconds = time.perf_counter() - started
            log.info("job %s: completed in %.2f s (seed %d)", job.id, seconds, audio.seed, extra=extra)
            metrics.GENERATIONS.labels("completed").inc()
            metrics.GENERATION_SECONDS.observe(seconds)
            metrics.AUDIO_SECONDS.inc(audio.duration)
            outcome = Completed(audio)
        except GenerationCancelled:
            log.info("job %s: %s after %.2f s", job.id, job.cancel_reason, time.perf_counter() - started, extra=extra)
            metrics.GENERATIONS.labels("cancelled").inc()
            outcome = Failed(job.cancel_reason)
        except GenerationFailed as exc:
            log.warning("job %s: failed: %s", job.id, exc, extra=extra)
            metrics.GENERATIONS.labels("failed").inc()
            outcome = Failed(f"generation failed: {exc}")
        except Exception:
            log.exception("job %s: failed", job.id, extra=extra)
            metrics.GENERATIONS.labels("failed").inc()
            outcome = Failed("generation failed with an internal error; the server log has the details")
        finally:
            self._release(job)
        job.emit(outcome)  # after the release: a client that reacts to the last event at once finds the slot free

    def stop_all(self, reason: str) -> None:
        """Stop every running generation; each client gets `reason` as its stream's error event."""
        with self._lock:
            running = list(self._running)
        for job in running:
            job.cancel(reason)

    def shutdown(self) -> None:
        """Stop every running generation and wait for the worker threads to end."""
        self.stop_all(SHUTDOWN_MESSAGE)
        self._worker.shutdown(wait=True)
