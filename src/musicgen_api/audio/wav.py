"""Waveform → WAV bytes: 16-bit signed PCM, the format the API promises."""

import io
import wave

import numpy as np
import torch


def to_pcm16(waveform: torch.Tensor) -> bytes:
    """Float waveform [channels, samples] in [-1, 1] → 16-bit little-endian PCM, channels interleaved, no header.
    Out-of-range samples are clipped, never wrapped."""
    pcm = (waveform.detach().float().clamp(-1.0, 1.0) * 32767.0).round().to(torch.int16)
    return np.ascontiguousarray(pcm.cpu().numpy().T).astype("<i2").tobytes()  # [samples, channels]


def to_wav_bytes(waveform: torch.Tensor, sample_rate: int) -> bytes:
    """Float waveform [channels, samples] in [-1, 1] → a complete WAV file (its samples as `to_pcm16`)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(waveform.shape[0])
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(to_pcm16(waveform))
    return buffer.getvalue()
