"""The 1-D U-Net that denoises one frequency band of MultiBand Diffusion (audiocraft's `DiffusionUnet`).

Same parameter names as audiocraft's state dict, so a band's `model_state` loads strictly. Only the variant the
published MusicGen decoder uses is built: conditioning by EnCodec latents added to the deepest skip, no bottleneck
LSTM or transformer; `UnetConfig.from_cfg` refuses anything else by name.
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class UnetConfig:
    channels: int  # audio channels in and out (1)
    hidden: int  # width of the first level
    depth: int  # levels
    growth: float  # width factor per level
    max_channels: int  # width cap
    kernel: int  # (transposed) convolution kernel of the resampling layers
    stride: int  # down/up-sampling factor per level
    norm_groups: int  # GroupNorm groups
    res_blocks: int  # residual blocks per level, dilations 1, 2, 4, ...
    emb_all_layers: bool  # step embedding added at every encoder level, not only the first
    codec_dim: int  # width of the EnCodec latent that conditions the model
    num_steps: int  # rows of the step embeddings (the schedule's training steps)

    @classmethod
    def from_cfg(cls, cfg: dict[str, Any], band: int) -> "UnetConfig":
        unet = dict(cfg.get("diffusion_unet") or {})
        refused = [flag for flag in ("transformer", "bilstm", "cross_attention") if unet.get(flag)]
        if refused:
            raise ValueError(f"band {band}: U-Net variant with {', '.join(refused)} is not implemented")
        if not unet.get("codec_dim"):
            raise ValueError(f"band {band}: an unconditional U-Net (codec_dim unset) cannot decode codes")
        if float(unet.get("dropout", 0.0)) > 0:
            raise ValueError(f"band {band}: dropout {unet['dropout']} would be applied at inference by audiocraft")
        # Missing keys take audiocraft's constructor defaults.
        return cls(
            channels=int(cfg.get("channels", 1)),
            hidden=int(unet.get("hidden", 24)),
            depth=int(unet.get("depth", 3)),
            growth=float(unet.get("growth", 2.0)),
            max_channels=int(unet.get("max_channels", 10_000)),
            kernel=int(unet.get("kernel", 4)),
            stride=int(unet.get("stride", 2)),
            norm_groups=int(unet.get("norm_groups", 4)),
            res_blocks=int(unet.get("res_blocks", 1)),
            emb_all_layers=bool(unet.get("emb_all_layers", False)),
            codec_dim=int(unet["codec_dim"]),
            num_steps=int((cfg.get("schedule") or {}).get("num_steps", 1000)),
        )

    def widths(self) -> list[int]:
        widths = [self.hidden]
        for _ in range(self.depth - 1):
            widths.append(min(int(widths[-1] * self.growth), self.max_channels))
        return widths


class ResBlock(nn.Module):
    def __init__(self, channels: int, dilation: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        return x + self.conv2(F.relu(self.norm2(h)))


def _res_blocks(c: UnetConfig, channels: int) -> nn.Sequential:
    return nn.Sequential(*(ResBlock(channels, 2**r, c.norm_groups) for r in range(c.res_blocks)))


class EncoderLayer(nn.Module):
    def __init__(self, c: UnetConfig, chin: int, chout: int) -> None:
        super().__init__()
        self.stride = c.stride
        self.conv = nn.Conv1d(chin, chout, c.kernel, c.stride, padding=(c.kernel - c.stride) // 2, bias=False)
        self.norm = nn.GroupNorm(c.norm_groups, chout)
        self.res_blocks = _res_blocks(c, chout)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (0, -x.shape[-1] % self.stride))  # right-pad to a multiple of the stride
        return self.res_blocks(F.relu(self.norm(self.conv(x))))


class DecoderLayer(nn.Module):
    def __init__(self, c: UnetConfig, chin: int, chout: int) -> None:
        super().__init__()
        self.res_blocks = _res_blocks(c, chin)
        self.norm = nn.GroupNorm(c.norm_groups, chin)
        self.convtr = nn.ConvTranspose1d(
            chin, chout, c.kernel, c.stride, padding=(c.kernel - c.stride) // 2, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.convtr(F.relu(self.norm(self.res_blocks(x))))


class DiffusionUnet(nn.Module):
    def __init__(self, c: UnetConfig) -> None:
        super().__init__()
        widths = c.widths()
        inputs = [c.channels, *widths[:-1]]
        self.emb_all_layers = c.emb_all_layers
        self.encoders = nn.ModuleList(EncoderLayer(c, cin, cout) for cin, cout in zip(inputs, widths, strict=True))
        decoders = [DecoderLayer(c, cout, cin) for cin, cout in zip(inputs, widths, strict=True)]
        self.decoders = nn.ModuleList(reversed(decoders))  # deepest first
        self.embedding = nn.Embedding(c.num_steps, widths[0])
        if c.emb_all_layers:
            self.embeddings = nn.ModuleList(nn.Embedding(c.num_steps, w) for w in widths[1:])
        self.conv_codec = nn.Conv1d(c.codec_dim, widths[-1], 1)

    def forward(self, x: Tensor, step: int, condition: Tensor) -> Tensor:
        """Noise estimate for x [B, C, T] at schedule step `step`, conditioned on the latent [B, codec_dim, F]."""
        b, t = x.shape[0], x.shape[-1]
        steps = torch.full((b,), step, dtype=torch.long, device=x.device)
        skips = []
        z = x
        for depth, encoder in enumerate(self.encoders):
            z = encoder(z)
            if depth == 0:
                z = z + self.embedding(steps)[:, :, None]
            elif self.emb_all_layers:
                z = z + self.embeddings[depth - 1](steps)[:, :, None]
            skips.append(z)
        # The condition joins the deepest skip; the bottleneck itself carries nothing further.
        skips[-1] = skips[-1] + F.interpolate(self.conv_codec(condition), size=z.shape[-1])
        z = torch.zeros_like(z)
        for decoder in self.decoders:
            skip = skips.pop()
            z = decoder(z[:, :, : skip.shape[-1]] + skip)
        return z[:, :, :t]
