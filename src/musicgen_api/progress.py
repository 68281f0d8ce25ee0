"""Whole-job progress by time, not by unit counts: a request is decode steps, an EnCodec decode and, with
`mbd: true`, 80 diffusion passes, whose costs differ by orders of magnitude between CPUs, GPUs and model sizes.

Each stage's cost per unit is learned from the requests this server finished (an exponential average), so the
percentages track the time actually spent; the first request uses rough guesses. Estimates are frozen for the
length of a job, so its percentages never go back.
"""

import dataclasses
import time
from dataclasses import dataclass, field

from musicgen_api.engine.params import StepHook

SCALE = 1_000_000  # progress is reported as integer microseconds of estimated work


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
    """Reports estimated seconds done out of estimated seconds in all, through the service's step hook."""

    learned: StageCosts  # the server's running estimates, updated when the job finishes
    on_progress: StepHook
    steps: int
    audio_seconds: float
    diffusion_calls: int
    done: float = 0.0
    costs: StageCosts = field(init=False)
    _timings: list[tuple[str, float, float]] = field(default_factory=list)
    _stage_started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.costs = dataclasses.replace(self.learned)
        c = self.costs
        self.total = (
            self.steps * c.tokens
            + self.audio_seconds * c.codec
            + self.diffusion_calls * self.audio_seconds * c.diffusion
        )

    def _report(self) -> None:
        self.on_progress(int(self.done * SCALE), max(1, int(self.total * SCALE)))

    def token_step(self, done: int, steps: int) -> None:
        self.done = done * self.costs.tokens
        self._report()

    def diffusion_call(self) -> None:
        self.done += self.audio_seconds * self.costs.diffusion
        self._report()

    def stage_done(self, stage: str) -> None:
        """Close a stage: record its time, and move the bar past it."""
        now = time.perf_counter()
        units = {"tokens": self.steps, "codec": self.audio_seconds}.get(
            stage, self.diffusion_calls * self.audio_seconds
        )
        self._timings.append((stage, now - self._stage_started, units))
        self._stage_started = now
        if stage == "codec":
            self.done += self.audio_seconds * self.costs.codec
            self._report()

    def finish(self) -> None:
        for stage, seconds, units in self._timings:
            self.learned.learn(stage, seconds, units)
        self.on_progress(1, 1)
