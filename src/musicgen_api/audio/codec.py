"""Codes ↔ waveform with the checkpoint's own EnCodec: decoding is MusicGen's default output path (`mbd: false`);
encoding turns an audio prompt into the codes a continuation starts from.

On a CPU the decode is a large share of a short clip, so it reports how far it is after each of the decoder's
layers, weighted by the share of the time each layer took in the decodes before (equal shares at first). Those
reports are hooks on the shared layers, so decodes take turns: generations side by side (`--slots`) decode their
chunks and clips one at a time.
"""

import threading
import time
from collections.abc import Callable

import julius
import torch
from torch import Tensor, nn
from transformers import EncodecModel

# Called with the share (0 … 1) of a decode that is done; may raise to stop the decode.
PartDone = Callable[[float], None]


class EncodecCodec:
    def __init__(self, codec: EncodecModel, audio_channels: int) -> None:
        self.codec = codec
        self.channels = audio_channels  # stereo checkpoints interleave left/right codebooks
        self.sample_rate = int(codec.config.sampling_rate)
        self.hop = int(torch.tensor(codec.config.upsampling_ratios).prod())  # samples per code frame
        self._layers: list[nn.Module] = list(codec.decoder.layers)
        self._shares = [1 / len(self._layers)] * len(self._layers)  # of the decode's time, learned per decode
        self._turn = threading.Lock()  # one decode at a time: another's hooks would fire in this one

    @torch.no_grad()
    def decode(self, codes: Tensor, on_part: PartDone | None = None) -> Tensor:
        """Codes [K, frames] → float waveform [channels, frames * hop]; `on_part` hears how far it is."""
        with self._turn:
            return self._decode(codes, on_part)

    def _decode(self, codes: Tensor, on_part: PartDone | None) -> Tensor:
        per_channel = [codes[c :: self.channels] for c in range(self.channels)]  # each [K / channels, frames]
        if on_part is None:
            return torch.stack([self._decode_one(c) for c in per_channel]).float()
        shares, seconds = list(self._shares), [0.0] * len(self._layers)
        waves = []
        for channel, channel_codes in enumerate(per_channel):
            done = channel / self.channels
            started = time.perf_counter()

            def after_layer(index: int) -> None:
                nonlocal done, started
                now = time.perf_counter()
                seconds[index] += now - started
                started = now
                done += shares[index] / self.channels
                on_part(min(done, 1.0))

            hooks = [
                layer.register_forward_hook(lambda *_, i=i: after_layer(i)) for i, layer in enumerate(self._layers)
            ]
            try:
                waves.append(self._decode_one(channel_codes))
            finally:
                for hook in hooks:
                    hook.remove()
        total = sum(seconds)
        if total > 0:
            self._shares = [0.5 * old + 0.5 * s / total for old, s in zip(self._shares, seconds, strict=True)]
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
