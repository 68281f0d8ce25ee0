"""What one generation asks for, what it gives back, and how its code reports progress and learns to stop.

Plain data and protocols, no torch: the HTTP side, the CLI, the service, the pipeline, the engine and the audio code
all speak these types, so they live below every one of them.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:  # annotations only: this module stays importable without torch
    from torch import Tensor

FRAME_RATE = 50  # MusicGen's EnCodec emits 50 code frames per second of 32 kHz audio

AudioFormat = Literal["wav", "flac", "mp3", "ogg"]
Normalization = Literal["loudness", "peak", "rms", "clip", "none"]


def to_frames(seconds: float) -> int:
    """Seconds of audio → the whole code frames they hold."""
    return int(seconds * FRAME_RATE)


def to_seconds(frames: int) -> float:
    """Code frames → seconds of audio."""
    return frames / FRAME_RATE


@dataclass(frozen=True)
class GenerationParams:
    description: str
    duration: int  # seconds of audio
    top_k: int = 250
    top_p: float = 0.0  # > 0 switches to nucleus sampling and top_k is then ignored (audiocraft's rule)
    temperature: float = 1.0
    cfg_coef: float = 3.0
    mbd: bool = False
    seed: int | None = None  # None: a fresh random seed, reported back with the audio
    format: AudioFormat = "wav"
    normalization: Normalization = "loudness"
    audio_prompt: bytes | None = None  # an encoded audio file (WAV, FLAC, MP3, OGG) to continue
    return_prompt: bool = True  # with audio_prompt: return prompt + continuation, `duration` seconds in all
    melody: bytes | None = None  # an encoded audio file whose melody conditions the piece (melody models only)
    stream_audio: bool = False  # also send the audio as it is made, in AudioChunks between the progress events

    @property
    def frames(self) -> int:
        return to_frames(self.duration)


@dataclass(frozen=True)
class RenderedAudio:
    """A finished clip: the encoded file and what a client needs to know about it."""

    data: bytes
    format: AudioFormat
    mime_type: str
    sample_rate: int
    channels: int
    duration: float  # seconds
    seed: int


@dataclass(frozen=True)
class AudioChunk:
    """A stretch of the piece as it is being made (`stream_audio`): the chunks of one piece are contiguous, in order,
    and together exactly its duration. Their levels are the preview's (see `audio.loudness.preview`)."""

    pcm: bytes  # 16-bit little-endian PCM, channels interleaved, no header
    offset: float  # seconds from the start of the returned audio
    duration: float  # seconds
    sample_rate: int
    channels: int


class GenerationCancelled(Exception):
    """Raised by `stop_if_cancelled` when the caller asked the generation to stop (the client went away)."""


class JobControl(Protocol):
    """The service's side of one running generation, handed to the pipeline: where progress goes, and whether the
    client still wants the result."""

    def report(self, done: float) -> None:
        """The whole job is `done` (0 … 1) complete; never goes down."""

    def stop_if_cancelled(self) -> None:
        """Raise GenerationCancelled if the job was cancelled; otherwise return at once."""

    def audio(self, chunk: AudioChunk) -> None:
        """The next stretch of audio of a `stream_audio` request."""


# `read(start)`: the codes [K, complete - start] of the frames from `start` on that are final so far.
ReadFrames = Callable[[int], "Tensor"]


class Progress(Protocol):
    """What the decode loops are handed, the same object through long pieces and every window: they count the decode
    steps they finish and, between steps, offer the job a place to stop."""

    def advance(self, steps: int) -> None:
        """`steps` more decode steps are done."""

    def stop_if_cancelled(self) -> None:
        """Raise GenerationCancelled if the job was cancelled; otherwise return at once."""

    def frames_ready(self, complete: int, read: ReadFrames) -> None:
        """The first `complete` frames of the window being made (its prompt included) will not change any more. A
        decode loop says so as they settle (the delay pattern completes frame n at step n + K_ch - 1) and always
        once with every frame of the window at its end; `read` is valid only during the call."""


class Unwatched:
    """A `JobControl` and `Progress` for callers that watch nothing and never cancel (the benchmark)."""

    def report(self, done: float) -> None:
        pass

    def advance(self, steps: int) -> None:
        pass

    def stop_if_cancelled(self) -> None:
        pass

    def audio(self, chunk: AudioChunk) -> None:
        pass

    def frames_ready(self, complete: int, read: ReadFrames) -> None:
        pass
