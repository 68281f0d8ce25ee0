"""Waveform → the chroma that conditions a MusicGen-Melody checkpoint: one 12-pitch-class one-hot vector per hop.

The same computation as transformers' `MusicgenMelodyFeatureExtractor` (mono mix, first `chunk_length` seconds,
power spectrogram, librosa's chroma filter bank, the strongest pitch class per frame), with the settings read from
the checkpoint's `preprocessor_config.json`. It is written out here because that class builds its spectrogram with
torchaudio, which has no build for the torch this project pins; this needs only `torch.stft` and julius.
"""

from dataclasses import dataclass
from typing import Any

import julius
import torch
from torch import Tensor
from transformers.audio_utils import chroma_filter_bank
from transformers.feature_extraction_utils import FeatureExtractionMixin


@dataclass(frozen=True)
class ChromaSettings:
    sampling_rate: int = 32_000  # the rate the chroma is computed at
    n_fft: int = 16_384  # spectrogram window (and FFT) size in samples
    hop_length: int = 4_096  # samples per chroma frame
    num_chroma: int = 12  # pitch classes
    chunk_length: int = 30  # seconds of melody used; the rest is cut

    @classmethod
    def from_pretrained(cls, source: str) -> "ChromaSettings":
        """Read a checkpoint's feature-extractor settings (hub id or folder, from the cache when offline)."""
        config: dict[str, Any] = FeatureExtractionMixin.get_feature_extractor_dict(source)[0]
        names = ("sampling_rate", "n_fft", "hop_length", "num_chroma", "chunk_length")
        return cls(**{name: int(config[name]) for name in names if name in config})

    def to_dict(self) -> dict[str, Any]:
        """The `preprocessor_config.json` a MusicGen-Melody checkpoint ships, with these settings."""
        return {
            "feature_extractor_type": "MusicgenMelodyFeatureExtractor",
            "processor_class": "MusicgenMelodyProcessor",
            "feature_size": self.num_chroma,
            "sampling_rate": self.sampling_rate,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "num_chroma": self.num_chroma,
            "chunk_length": self.chunk_length,
            "padding_side": "right",
            "padding_value": 0.0,
            "return_attention_mask": True,
            "stem_indices": [3, 2],
        }


class ChromaExtractor:
    def __init__(self, settings: ChromaSettings) -> None:
        self.settings = settings
        filters = chroma_filter_bank(
            num_frequency_bins=settings.n_fft, num_chroma=settings.num_chroma, sampling_rate=settings.sampling_rate
        )
        self.filters = torch.from_numpy(filters).float()  # [chroma, n_fft // 2 + 1]
        self.window = torch.hann_window(settings.n_fft)

    @torch.no_grad()
    def __call__(self, waveform: Tensor, sample_rate: int) -> Tensor:
        """Any waveform [channels, samples] → one-hot chroma [1, frames, num_chroma] (float32, on the CPU)."""
        s = self.settings
        mono = waveform.float().mean(0)  # [T]
        if sample_rate != s.sampling_rate:
            mono = julius.resample_frac(mono, sample_rate, s.sampling_rate)
        mono = mono[: s.chunk_length * s.sampling_rate]
        if mono.shape[0] < s.n_fft:
            pad = s.n_fft - mono.shape[0]
            mono = torch.nn.functional.pad(mono, (pad // 2, pad - pad // 2))
        spec = torch.stft(
            mono, s.n_fft, s.hop_length, window=self.window, center=True, pad_mode="reflect", return_complex=True
        )  # [F, frames]
        power = (spec / self.window.pow(2).sum().sqrt()).abs().pow(2)  # torchaudio's normalized=True, power=2
        strongest = (self.filters @ power).argmax(0)  # [frames]: the max-normalized chroma's peak, one-hot below
        return torch.nn.functional.one_hot(strongest, s.num_chroma).float()[None]  # [1, frames, chroma]
