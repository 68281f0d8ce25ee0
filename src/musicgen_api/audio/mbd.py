"""MultiBand Diffusion decoding (`mbd: true`): MusicGen codes → waveform with audiocraft's diffusion decoder.

The EnCodec latent of the codes conditions four band models; each denoises its own full-length noise over 20 steps,
their outputs are summed, and the sum is equalised, band by band over 32 mel bands, to the energy of the plain
EnCodec decode of the same codes. Stereo checkpoints decode left and right as a batch of two (audiocraft's demo
does the same), so both channels share the EQ gains.
"""

import logging
import time
from collections.abc import Callable
from typing import cast

import julius
import torch
from torch import Tensor, nn
from transformers import EncodecModel

from musicgen_api.audio.diffusion import DiffusionBand, Schedule, build_processor
from musicgen_api.audio.mbd_checkpoint import BandCheckpoint, MBDCheckpoint, MBDLoadError, load_checkpoint
from musicgen_api.audio.unet import DiffusionUnet, UnetConfig

log = logging.getLogger(__name__)

EQ_BANDS = 32  # mel bands of the final energy match

# (band, draw index within the band, shape) → noise: lets a test replay a reference run's exact draws.
BandNoise = Callable[[int, int, torch.Size], Tensor]


def _build_band(i: int, band: BandCheckpoint, sample_rate: int, codec: EncodecModel) -> DiffusionBand:
    try:
        config = UnetConfig.from_cfg(band.cfg, i)
        schedule = Schedule.from_cfg(band.cfg, i)
        processor = build_processor(band.cfg, sample_rate, i)
    except (ValueError, TypeError, KeyError) as exc:
        raise MBDLoadError(f"unsupported MultiBand Diffusion checkpoint: {exc}") from exc
    if config.channels != 1:
        raise MBDLoadError(f"band {i} works on {config.channels} channels; MusicGen's MBD is mono (1)")
    if config.codec_dim != codec.config.codebook_dim:
        raise MBDLoadError(
            f"band {i} is conditioned on {config.codec_dim}-wide EnCodec latents but this model's EnCodec has "
            f"{codec.config.codebook_dim}; these MBD weights belong to another codec"
        )
    unet = DiffusionUnet(config)
    try:
        unet.load_state_dict(band.model_state, strict=True)
        processor.load_state_dict(band.processor_state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise MBDLoadError(f"band {i}'s weights do not fit its config ({first})") from exc
    return DiffusionBand(unet, schedule, processor)


class MultiBandDiffusion(nn.Module):
    def __init__(self, checkpoint: MBDCheckpoint, codec: EncodecModel) -> None:
        super().__init__()
        self.codec = codec
        sample_rate = int(codec.config.sampling_rate)
        if checkpoint.sample_rate != sample_rate:
            raise MBDLoadError(
                f"the MBD weights are for {checkpoint.sample_rate} Hz audio but this model's EnCodec makes "
                f"{sample_rate} Hz; use MusicGen's MBD weights (mbd_musicgen_32khz.th)"
            )
        bands = nn.ModuleList(_build_band(i, b, sample_rate, codec) for i, b in enumerate(checkpoint.bands))
        self.bands = cast(list[DiffusionBand], bands)
        self.eq_split = julius.SplitBands(sample_rate, n_bands=EQ_BANDS)

    @property
    def calls(self) -> int:
        """U-Net passes per decode: the unit of progress and of cancellation."""
        return sum(band.calls for band in self.bands)

    def latent(self, codes: Tensor) -> Tensor:
        """Codes [B, K, F] → EnCodec's quantized latent [B, D, F] (the sum of the codebook vectors)."""
        return self.codec.quantizer.decode(codes.transpose(0, 1))

    @torch.no_grad()
    def decode(
        self,
        codes: Tensor,
        reference: Tensor,
        on_call: Callable[[], None],
        noise: BandNoise | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Codes [B, K, F] and their EnCodec decode [B, 1, T] → the diffusion decode [B, 1, T] (float32).

        The U-Nets run in their own precision (`self.dtype`), whatever the MusicGen model's: the EnCodec latent is
        cast to it; the noise, the sampler's arithmetic, the band filters (FFTs) and the EQ stay float32."""
        condition = self.latent(codes).to(self.dtype)
        reference = reference.float()
        out = torch.zeros_like(reference)
        for i, band in enumerate(self.bands):

            def draw(index: int, shape: torch.Size, i: int = i) -> Tensor:
                if noise is not None:
                    return noise(i, index, shape)
                return torch.randn(shape, device=reference.device, dtype=reference.dtype, generator=generator)

            out += band.generate(condition, reference.shape, draw, on_call)
        return self.match_eq(out, reference)

    @property
    def dtype(self) -> torch.dtype:
        """The precision the U-Nets run in."""
        return next(self.bands[0].unet.parameters()).dtype

    def match_eq(self, wav: Tensor, reference: Tensor) -> Tensor:
        """Rescale each mel band of `wav` to the energy of the same band of `reference` (one gain per band)."""
        bands, reference_bands = self.eq_split(wav), self.eq_split(reference)
        out = torch.zeros_like(reference)
        for band, target in zip(bands, reference_bands, strict=True):
            out += band * (target.std() / band.std())
        return out


def unet_dtype(device: torch.device) -> torch.dtype:
    """float16 U-Nets on CUDA: against float32 they keep a 64 dB waveform SNR on audiocraft's reference checkpoint
    (bfloat16 only 46 dB) and halve the 4.6 GB of weights. float32 on a CPU, where half-precision convolutions are no
    faster."""
    return torch.float16 if device.type == "cuda" else torch.float32


def load_mbd(source: str, codec: EncodecModel, device: torch.device) -> MultiBandDiffusion:
    """Load the published (or a compatible) MBD checkpoint for this model's codec, logging time and size; the U-Nets
    in `unet_dtype(device)`, the band filters in float32."""
    started = time.perf_counter()
    mbd = MultiBandDiffusion(load_checkpoint(source), codec).to(device).eval()
    for band in mbd.bands:
        band.unet.to(unet_dtype(device))
    size = sum(t.numel() * t.element_size() for band in mbd.bands for t in band.parameters())
    log.info(
        "loaded MultiBand Diffusion from %s in %.1f s: %d bands, %.0f MB of weights (U-Nets in %s)",
        source,
        time.perf_counter() - started,
        len(mbd.bands),
        size / 1e6,
        str(mbd.dtype).removeprefix("torch."),
    )
    return mbd
