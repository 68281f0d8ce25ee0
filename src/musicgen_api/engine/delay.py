"""MusicGen's codebook delay pattern: codebook k of a frame is predicted k steps after codebook 0.

A request of N frames takes N + K_ch - 1 decode steps after the BOS position (K_ch codebooks per channel; stereo
checkpoints interleave left/right codebooks, which share a delay). Both decode backends use these helpers, so the
pattern is written once.
"""

import torch
from torch import Tensor


def codebook_delays(num_codebooks: int, audio_channels: int) -> Tensor:
    return torch.arange(num_codebooks) // audio_channels  # [K]


def sequence_length(frames: int, num_codebooks: int, audio_channels: int) -> int:
    """Positions in the delayed sequence, BOS position included."""
    return frames + num_codebooks // audio_channels


def complete_frames(last_position: int, frames: int, num_codebooks: int, audio_channels: int) -> int:
    """How many leading frames (of `frames`) hold all their codebooks once positions 0 … `last_position` are written:
    frame n's last codebook sits at position n + K_ch."""
    return max(0, min(frames, last_position - (num_codebooks // audio_channels - 1)))


def valid_positions(frames: int, length: int, num_codebooks: int, audio_channels: int) -> Tensor:
    """[K, length] bool: where codebook k holds a real token (elsewhere the BOS/pad id)."""
    delays = codebook_delays(num_codebooks, audio_channels)[:, None]
    t = torch.arange(length)[None, :]
    return (t > delays) & (t <= delays + frames)


def delayed_positions(frames: int, num_codebooks: int, audio_channels: int) -> Tensor:
    """[K, frames]: the sequence position of codebook k's token for frame n."""
    delays = codebook_delays(num_codebooks, audio_channels)
    return delays[:, None] + 1 + torch.arange(frames)[None, :]


def undelay(sequence: Tensor, frames: int, audio_channels: int) -> Tensor:
    """Delayed sequence [K, L] → aligned codes [K, frames]."""
    index = delayed_positions(frames, sequence.shape[0], audio_channels).to(sequence.device)
    return sequence.gather(1, index)
