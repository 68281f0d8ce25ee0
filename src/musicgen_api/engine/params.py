"""What one generation asks for, what it returns, and how it can end early.

Plain data: no torch, so the HTTP side can import it.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from musicgen_api.errors import InvalidRequest

FRAME_RATE = 50  # MusicGen's EnCodec emits 50 code frames per second of 32 kHz audio


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
    format: "AudioFormat" = "wav"
    normalization: "Normalization" = "loudness"
    audio_prompt: bytes | None = None  # an encoded audio file (WAV, FLAC, MP3, OGG) to continue
    return_prompt: bool = True  # with audio_prompt: return prompt + continuation, `duration` seconds in all
    melody: bytes | None = None  # an encoded audio file whose melody conditions the piece (melody models only)

    @property
    def frames(self) -> int:
        return self.duration * FRAME_RATE


AudioFormat = Literal["wav", "flac", "mp3", "ogg"]
Normalization = Literal["loudness", "peak", "rms", "clip", "none"]


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


class GenerationCancelled(Exception):
    """Raised inside the decode loop when the caller asked it to stop (the client went away)."""


class PromptTooLong(InvalidRequest):
    """The description tokenizes to more tokens than the text-conditioning buffer holds."""


# Called after each unit of work with (done, total); may raise GenerationCancelled to stop the work.
StepHook = Callable[[int, int], None]
