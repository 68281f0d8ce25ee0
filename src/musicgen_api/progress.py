"""Whole-job progress by time, not by unit counts: a request is decode steps, an EnCodec decode and, with
`mbd: true`, 80 diffusion passes, whose costs differ by orders of magnitude between CPUs, GPUs and model sizes.

Each stage's cost per unit is learned from the requests this server finished (an exponential average), so the
percentages track the time actually spent; the first request uses rough guesses. Estimates are frozen for the
length of a job, so its percentages never go back.
"""

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from musicgen_api.generation import JobControl, ReadFrames


@dataclass
class StageCosts:
    tokens: float = 2e-3  # seconds per decode step
    codec: float = 2e-3  # seconds of EnCodec decode per second of audio
    diffusion: float = 2e-3  # seconds per diffusion pass per second of audio

    def learn(self, stage: str, seconds: float, units: float) -> None:
        if units > 0:
            setattr(self, stage, 0.5 * getattr(self, stage) + 0.5 * seconds / units)


@dataclass
class JobProgress:
    """One job's progress: the decode loops count steps into it (it is their `Progress`), the pipeline reports the
    codec and diffusion stages, and it tells the service's `JobControl` the estimated share of the work done."""

    learned: StageCosts  # the server's running estimates, updated when the job finishes
    job: JobControl
    steps: int  # decode steps of the whole piece, all windows together
    audio_seconds: float
    diffusion_calls: int
    on_frames: Callable[[int, ReadFrames], None] | None = None  # with stream_audio: where settled frames go
    costs: StageCosts = field(init=False)
    _steps_done: int = 0
    _done: float = 0.0  # estimated seconds of work done
    _timings: list[tuple[str, float, float]] = field(default_factory=list)
    _stage_started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.costs = dataclasses.replace(self.learned)
        c = self.costs
        self._codec_cost = self.audio_seconds * c.codec
        self._total = self.steps * c.tokens + self._codec_cost + self.diffusion_calls * self.audio_seconds * c.diffusion

    def stop_if_cancelled(self) -> None:
        self.job.stop_if_cancelled()

    def advance(self, steps: int) -> None:
        """`steps` more decode steps are done."""
        self._steps_done += steps
        self._move_to(self._steps_done * self.costs.tokens)

    def frames_ready(self, complete: int, read: ReadFrames) -> None:
        if self.on_frames is not None:
            self.on_frames(complete, read)

    def codec_part(self, fraction: float) -> None:
        """The EnCodec decode is `fraction` (0 … 1) done."""
        self._move_to(self.steps * self.costs.tokens + fraction * self._codec_cost)

    def diffusion_call(self) -> None:
        self._move_to(self._done + self.audio_seconds * self.costs.diffusion)

    def _move_to(self, done: float) -> None:
        self._done = max(self._done, done)
        self.job.report(min(1.0, self._done / self._total) if self._total > 0 else 0.0)

    def stage_done(self, stage: str) -> None:
        """Close a stage: record its time for the server's estimates."""
        now = time.perf_counter()
        units = {"tokens": self.steps, "codec": self.audio_seconds}.get(
            stage, self.diffusion_calls * self.audio_seconds
        )
        self._timings.append((stage, now - self._stage_started, units))
        self._stage_started = now

    def finish(self) -> None:
        for stage, seconds, units in self._timings:
            self.learned.learn(stage, seconds, units)
        self.job.report(1.0)
