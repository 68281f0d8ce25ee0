"""Codes ↔ waveform with the checkpoint's own EnCodec: decoding is MusicGen's default output path (`mbd: false`);
encoding turns an audio prompt into the codes a continuation starts from."""

import julius
import torch
from torch import Tensor
from transformers import EncodecModel


class EncodecCodec:
    def __init__(self, codec: EncodecModel, audio_channels: int) -> None:
        self.codec = codec
        self.channels = audio_channels  # stereo checkpoints interleave left/right codebooks
        self.sample_rate = int(codec.config.sampling_rate)
        self.hop = int(torch.tensor(codec.config.upsampling_ratios).prod())  # samples per code frame

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes [K, frames] → float waveform [channels, frames * hop]."""
        per_channel = [codes[c :: self.channels] for c in range(self.channels)]  # each [K / channels, frames]
        waves = [self._decode_one(c) for c in per_channel]
        return torch.stack(waves).float()

    def _decode_one(self, codes: Tensor) -> Tensor:
        """Codes [K, frames] of one channel → waveform [samples]."""
        output = self.codec.decode(codes[None, None], [None], return_dict=True)  # type: ignore[arg-type]
        return output.audio_values[0, 0]  # type: ignore[union-attr,index]

    @torch.no_grad()
    def encode(self, waveform: Tensor, sample_rate: int) -> Tensor:
        """Any waveform [channels, samples] → codes [K, frames] for this model (resampled, channels matched, cut to
        whole frames)."""
        device = next(self.codec.parameters()).device
        dtype = next(self.codec.parameters()).dtype
        if sample_rate != self.sample_rate:
            waveform = julius.resample_frac(waveform, sample_rate, self.sample_rate)
        if self.channels == 1:
            waveform = waveform.mean(0, keepdim=True)
        else:
            waveform = waveform[:2] if waveform.shape[0] >= 2 else waveform.expand(2, -1)
        frames = waveform.shape[-1] // self.hop
        waveform = waveform[:, : frames * self.hop].to(device=device, dtype=dtype)
        per_channel = [
            self.codec.encode(w[None, None], return_dict=True).audio_codes[0, 0]  # type: ignore[union-attr,index]
            for w in waveform
        ]  # each [K / channels, frames]
        return torch.stack(per_channel, dim=1).flatten(0, 1)  # interleave: [K, frames]
