"""Waveform → the file a client asked for (`format`), and the audio files clients send (`audio_prompt`) → waveform.

WAV is the spec's 16-bit PCM, written with the standard library; FLAC, MP3 and OGG/Vorbis go through libsndfile
(`soundfile`), which also reads every format a prompt may come in.
"""

import io

import numpy as np
import soundfile
import torch

from musicgen_api.audio.wav import to_wav_bytes
from musicgen_api.generation import AudioFormat

MIME_TYPES: dict[str, str] = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg"}
_SOUNDFILE: dict[str, tuple[str, str]] = {
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "ogg": ("OGG", "VORBIS"),
}


def encode_audio(waveform: torch.Tensor, sample_rate: int, fmt: AudioFormat) -> bytes:
    """Float waveform [channels, samples] in [-1, 1] → the encoded file."""
    if fmt == "wav":
        return to_wav_bytes(waveform, sample_rate)
    container, subtype = _SOUNDFILE[fmt]
    buffer = io.BytesIO()
    samples = np.ascontiguousarray(waveform.detach().float().clamp(-1.0, 1.0).cpu().numpy().T)  # [samples, channels]
    soundfile.write(buffer, samples, sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()


def probe_audio(data: bytes) -> tuple[float, int]:
    """(seconds, channels) of an encoded file, reading only its header; ValueError if it is no audio we can read."""
    try:
        info = soundfile.info(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise ValueError("not a WAV, FLAC, MP3 or OGG file") from exc
    if info.frames <= 0 or info.samplerate <= 0:
        raise ValueError("the file holds no audio")
    return info.frames / info.samplerate, info.channels


def decode_audio(data: bytes) -> tuple[torch.Tensor, int]:
    """Encoded file → (float waveform [channels, samples], sample rate)."""
    samples, sample_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(samples.T)), int(sample_rate)
