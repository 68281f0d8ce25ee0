"""Level normalisation of the finished clip (`normalization`), so clips sound equally loud and never clip.

`loudness` (the default) follows audiocraft's `audio_write`: ITU-R BS.1770 integrated loudness to -14 LUFS (the
level streaming services play music at), then a limiter so peaks stay below full scale. `peak` scales the highest
sample to -1 dBFS, `rms` scales the RMS level to -20 dBFS with the same limiter, `clip` only clips to full scale, and
`none` leaves the model's levels (samples beyond full scale are clipped, never wrapped, when written).
"""

import math

import pyloudnorm
import torch

from musicgen_api.generation import Normalization

TARGET_LUFS = -14.0
PEAK_DBFS = -1.0
RMS_DBFS = -20.0
LIMIT = 10 ** (PEAK_DBFS / 20)  # the limiter's ceiling: -1 dBFS
KNEE = 0.8 * LIMIT  # samples below this pass unchanged


def _db(gain_db: float) -> float:
    return 10 ** (gain_db / 20)


def limit(waveform: torch.Tensor) -> torch.Tensor:
    """Soft limiter: identity below the knee, then a tanh curve that approaches the ceiling and never reaches it."""
    magnitude = waveform.abs()
    span = LIMIT - KNEE
    squashed = KNEE + span * torch.tanh((magnitude - KNEE) / span)
    return torch.where(magnitude > KNEE, waveform.sign() * squashed, waveform)


def preview(waveform: torch.Tensor, mode: Normalization) -> torch.Tensor:
    """The levels of audio streamed while the piece is made, before its whole is known: `none` and `clip` are
    per-sample, so the preview is levelled exactly as the final file; `loudness`, `peak` and `rms` scale by a
    gain measured on the whole piece, so the preview keeps the model's own levels through the same limiter (the
    final file is the same audio times that one gain, then limited)."""
    waveform = waveform.float()
    return normalize(waveform, 0, mode) if mode in ("none", "clip") else limit(waveform)


def integrated_loudness(waveform: torch.Tensor, sample_rate: int) -> float:
    """BS.1770 integrated loudness in LUFS (-inf for silence or clips shorter than one 400 ms block)."""
    if waveform.shape[-1] < 0.4 * sample_rate:
        return -math.inf
    meter = pyloudnorm.Meter(sample_rate)
    return float(meter.integrated_loudness(waveform.detach().double().cpu().numpy().T))


def normalize(waveform: torch.Tensor, sample_rate: int, mode: Normalization) -> torch.Tensor:
    """Float waveform [channels, samples] → the same, levelled as `mode` says."""
    waveform = waveform.float()
    if mode == "none":
        return waveform
    if mode == "clip":
        return waveform.clamp(-1.0, 1.0)
    if mode == "peak":
        peak = float(waveform.abs().max())
        return waveform * (LIMIT / peak) if peak > 0 else waveform
    if mode == "rms":
        rms = float(waveform.pow(2).mean().sqrt())
        return limit(waveform * (_db(RMS_DBFS) / rms)) if rms > 0 else waveform
    loudness = integrated_loudness(waveform, sample_rate)
    if not math.isfinite(loudness):  # silence or too short to measure: fall back to the RMS level
        return normalize(waveform, sample_rate, "rms")
    levelled = limit(waveform * _db(TARGET_LUFS - loudness))
    # The limiter takes a little loudness off loud peaks: one more measured correction lands on the target.
    return limit(levelled * _db(TARGET_LUFS - integrated_loudness(levelled, sample_rate)))
