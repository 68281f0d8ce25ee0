"""Codes → waveform with the checkpoint's own EnCodec decoder (MusicGen's default path, `mbd: false`)."""

import torch
from torch import Tensor
from transformers import EncodecModel


class EncodecDecoder:
    def __init__(self, codec: EncodecModel, audio_channels: int) -> None:
        self.codec = codec
        self.channels = audio_channels  # stereo checkpoints interleave left/right codebooks

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
