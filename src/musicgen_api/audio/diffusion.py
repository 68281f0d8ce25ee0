"""One band of MultiBand Diffusion: its noise schedule, its sampler, and its output processor.

The arithmetic follows audiocraft's `NoiseSchedule.generate_subsampled` operation for operation (same dtypes, same
order, `prod` where it uses `prod` and `cumprod` where it uses `cumprod`), because the decoder is verified against
audiocraft's own output to 1e-5.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import julius
import torch
from torch import Tensor, nn

from musicgen_api.audio.unet import DiffusionUnet

# audiocraft samples on every 50th of its 1000 training steps, from 999 down to 49, then 0 (20 U-Net calls).
STEP_LIST = [*range(999, -1, -50), 0]

# (step index within the band, shape) → noise; every draw of one band comes from here, so tests can replay
# audiocraft's exact draws.
NoiseSource = Callable[[int, torch.Size], Tensor]


@dataclass(frozen=True)
class Schedule:
    num_steps: int
    beta_t0: float
    beta_t1: float
    beta_exp: float
    clip: float
    noise_scale: float

    @classmethod
    def from_cfg(cls, cfg: dict[str, Any], band: int) -> "Schedule":
        s = dict(cfg.get("schedule") or {})
        if s.get("repartition", "power") != "power":
            raise ValueError(f"band {band}: noise schedule repartition '{s['repartition']}' is not implemented")
        if s.get("n_bands") is not None:
            raise ValueError(f"band {band}: a per-band noise schedule (schedule.n_bands) is not implemented")
        # Missing keys take audiocraft's NoiseSchedule defaults (which differ from its yaml defaults).
        return cls(
            num_steps=int(s.get("num_steps", 1000)),
            beta_t0=float(s.get("beta_t0", 1e-4)),
            beta_t1=float(s.get("beta_t1", 0.02)),
            beta_exp=float(s.get("beta_exp", 1.0)),
            clip=float(s.get("clip", 5.0)),
            noise_scale=float(s.get("noise_scale", 1.0)),
        )

    def betas(self) -> Tensor:
        lo, hi = self.beta_t0 ** (1 / self.beta_exp), self.beta_t1 ** (1 / self.beta_exp)
        return torch.linspace(lo, hi, self.num_steps, dtype=torch.float32) ** self.beta_exp


class MultiBandProcessor(nn.Module):
    """Maps a band model's diffusion-space sample back to audio: per mel band, rescale by the stored statistics."""

    def __init__(self, sample_rate: int, n_bands: int, power_std: float) -> None:
        super().__init__()
        self.power_std = power_std
        self.split_bands = julius.SplitBands(sample_rate, n_bands=n_bands)
        for name in ("counts", "sum_x", "sum_x2", "sum_target_x2"):
            self.register_buffer(name, torch.zeros(1 if name == "counts" else n_bands))
        self.counts: Tensor
        self.sum_x: Tensor
        self.sum_x2: Tensor
        self.sum_target_x2: Tensor

    def forward(self, x: Tensor) -> Tensor:
        mean = self.sum_x / self.counts
        std = (self.sum_x2 / self.counts - mean**2).clamp(min=0).sqrt()
        target_std = self.sum_target_x2 / self.counts  # not square-rooted, as in audiocraft
        rescale = (std / target_std) ** self.power_std
        bands = self.split_bands(x)
        return (bands * rescale.view(-1, 1, 1, 1) + mean.view(-1, 1, 1, 1)).sum(dim=0)


def build_processor(cfg: dict[str, Any], sample_rate: int, band: int) -> nn.Module:
    p = dict(cfg.get("processor") or {})
    if not p.get("use"):
        return nn.Identity()
    if p.get("name") != "multi_band_processor":
        raise ValueError(f"band {band}: sample processor '{p.get('name')}' is not implemented")
    return MultiBandProcessor(sample_rate, int(p.get("n_bands", 8)), float(p.get("power_std", 1.0)))


class DiffusionBand(nn.Module):
    def __init__(self, unet: DiffusionUnet, schedule: Schedule, processor: nn.Module) -> None:
        super().__init__()
        self.unet, self.schedule, self.processor = unet, schedule, processor
        betas = schedule.betas()
        needed = [schedule.num_steps - 1, *STEP_LIST[1:]]
        self.alpha_bars = {t: (1 - betas[: t + 1]).prod() for t in needed}  # audiocraft's prod, not cumprod
        cumprod = (1 - betas).cumprod(0)
        ascending = cumprod[list(reversed(STEP_LIST))]
        alphas = torch.cat([ascending[:1], ascending[1:] / ascending[:-1]])
        self.alphas = list(reversed((1 - (1 - alphas)).unbind()))  # per call, in sampling order

    @property
    def calls(self) -> int:
        return len(STEP_LIST) - 1

    def generate(self, condition: Tensor, shape: torch.Size, noise: NoiseSource, on_call: Callable[[], None]) -> Tensor:
        """Sample this band's waveform [B, C, T] from noise, conditioned on the EnCodec latent."""
        s = self.schedule
        device = condition.device
        current = noise(0, shape) * s.noise_scale
        alpha_bar = self.alpha_bars[s.num_steps - 1].to(device)
        previous = current
        for idx, step in enumerate(STEP_LIST[:-1]):
            estimate = self.unet(current.to(condition.dtype), step, condition).float() * s.noise_scale
            alpha = self.alphas[idx]
            previous = (current - (1 - alpha) / (1 - alpha_bar).sqrt() * estimate) / alpha.sqrt()
            last = idx == len(STEP_LIST) - 2
            previous_alpha_bar = torch.tensor(1.0) if last else self.alpha_bars[STEP_LIST[idx + 1]]
            previous_alpha_bar = previous_alpha_bar.to(device)
            if not last:
                sigma2 = (1 - previous_alpha_bar) / (1 - alpha_bar) * (1 - alpha)
                previous = previous + sigma2**0.5 * noise(idx + 1, shape) * s.noise_scale
            previous = previous.clamp(-s.clip, s.clip)
            current, alpha_bar = previous, previous_alpha_bar
            on_call()
        return self.processor(previous)
