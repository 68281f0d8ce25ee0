"""Load a MusicGen checkpoint exactly as a user of `transformers` would: `from_pretrained` on a hub id or a folder.

Failures become one `ModelLoadError` whose message says what to do next, because a server that cannot start should
say so in a line, not a stack trace.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    EncodecModel,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    MusicgenMelodyForConditionalGeneration,
    PreTrainedTokenizerBase,
)

from musicgen_api.audio.chroma import ChromaExtractor, ChromaSettings
from musicgen_api.config import Device, DType
from musicgen_api.engine.melody_model import MelodyModel
from musicgen_api.engine.quantize import fbgemm_available

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model named by --model could not be loaded."""


@dataclass
class MusicgenBundle:
    """The loaded checkpoint and the few facts about it the engine and audio code need."""

    model: MusicgenForConditionalGeneration | MusicgenMelodyForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    source: str = "(in memory)"  # the hub id or folder it was loaded from
    chroma: ChromaExtractor | None = None  # melody checkpoints only: melody audio → the chroma they condition on
    decoder_dtype: torch.dtype | None = None  # the fast engine's decoder precision where it differs from dtype

    @property
    def melody(self) -> bool:
        """A MusicGen-Melody checkpoint: conditioned on a melody's chroma as well as the text."""
        return isinstance(self.model, MusicgenMelodyForConditionalGeneration)

    def take_decoder(self) -> torch.nn.Module:
        """Hand the decoder's weights to an engine that keeps them in its own layout: the bundle lets go of them, so
        only one copy stays in memory (the text encoder and EnCodec stay here)."""
        decoder = self.model.decoder
        del self.model.decoder
        return decoder

    @property
    def has_decoder(self) -> bool:
        """False once an engine has taken the decoder's weights."""
        return hasattr(self.model, "decoder")

    @property
    def decoder_config(self) -> MusicgenDecoderConfig:
        return cast(MusicgenDecoderConfig, self.model.config.decoder)

    @property
    def codec(self) -> EncodecModel:
        return cast(EncodecModel, self.model.audio_encoder)

    @property
    def audio_channels(self) -> int:
        return int(self.decoder_config.audio_channels)

    @property
    def num_codebooks(self) -> int:
        """Codebooks the decoder predicts per step: 4 for mono, 8 (left/right interleaved) for stereo."""
        return int(self.decoder_config.num_codebooks)

    @property
    def start_token_id(self) -> int:
        """The BOS/padding id of the delay pattern (one past the codebook size, 2048 for the real models)."""
        token = self.model.generation_config.decoder_start_token_id
        return int(cast(int, token if token is not None else self.decoder_config.pad_token_id))

    @property
    def sampling_rate(self) -> int:
        return int(self.codec.config.sampling_rate)


def resolve_device(device: Device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(device)


def resolve_decoder_dtype(dtype: DType, device: torch.device) -> torch.dtype:
    """The fast engine's decoder weights. A CPU decode step is bound by streaming the weights, so `auto` on a CPU
    halves their bytes: float16 where PyTorch has fbgemm (x86), whose packed float16 product with float32
    activations (`quantize.PackedLinear`) is both the fastest and the most exact half-size product there, ahead of
    oneDNN's bfloat16 even where the CPU multiplies bfloat16 natively (4096 × 1024 by two rows: 0.27 against 0.47
    ms on a 2-core AVX-512 BF16 EPYC, 0.44 against 1.0 ms on AVX2); on a build without fbgemm, bfloat16 where the
    CPU multiplies it natively (AVX-512 BF16, AMX); else float32. The text encoder and EnCodec, run once per
    request, stay float32; elsewhere the decoder has the rest of the model's dtype."""
    if dtype == "auto" and device.type == "cpu":
        if fbgemm_available():
            return torch.float16
        if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            return torch.bfloat16
    return resolve_dtype(dtype, device)


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` → "bfloat16", as the log, /api/info and the benchmark write it."""
    return str(dtype).removeprefix("torch.")


def free_memory_bytes(device: torch.device) -> int:
    """Memory free for new tensors on `device`: the GPU's free memory, or the machine's available memory on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with open("/proc/meminfo") as meminfo:  # Linux, where the server runs; MemAvailable counts reclaimable cache
        fields = dict(line.split(":", 1) for line in meminfo)
    return int(fields["MemAvailable"].split()[0]) * 1024


def resolve_attention_dtype(decoder_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The precision of the fast decoder's KV cache and attention: float32 on a CPU (PyTorch's CPU attention for a
    one-token query is several times faster in float32 than in bfloat16, measured at 0.26 against 1.6 ms per layer
    over 500 positions on a 2-core AVX2 EPYC), the decoder's own elsewhere."""
    return torch.float32 if device.type == "cpu" else decoder_dtype


def resolve_dtype(dtype: DType, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if device.type == "cpu" and dtype == "float16":
        raise ModelLoadError(
            "--dtype float16 is not supported on CPU; use auto (the default: float32, with the fast decoder's "
            "weights in float16 or bfloat16 where that is faster), float32 or bfloat16"
        )
    return getattr(torch, dtype)


def load_musicgen(source: str, device: Device = "auto", dtype: DType = "auto") -> MusicgenBundle:
    """Load model and tokenizer (and, for a MusicGen-Melody checkpoint, its chroma settings) from a hub id or local
    folder onto the chosen device, in eval mode."""
    if source.startswith(("/", "./", "../", "~")) and not Path(source).expanduser().is_dir():
        raise ModelLoadError(
            f"the model folder '{source}' does not exist; pass --model with a folder holding a saved MusicGen "
            "checkpoint (config.json, weights, tokenizer), or a hub id such as facebook/musicgen-small"
        )
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    decoder_dtype = resolve_decoder_dtype(dtype, torch_device)
    started = time.perf_counter()
    try:
        melody = AutoConfig.from_pretrained(source).model_type == "musicgen_melody"
        tokenizer = AutoTokenizer.from_pretrained(source)
        architecture = MelodyModel if melody else MusicgenForConditionalGeneration
        model = architecture.from_pretrained(source, dtype=torch_dtype)
        chroma = ChromaExtractor(ChromaSettings.from_pretrained(source)) if melody else None
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"could not load the MusicGen model '{source}' ({reason}). Pass --model PATH to a local folder holding a "
            "saved MusicGen checkpoint, or download the hub model into the Hugging Face cache (set HF_HOME to it) "
            "on a machine with network access."
        ) from exc
    model.to(torch_device).eval()  # type: ignore[arg-type]  # transformers' stub types .to() narrowly
    bundle = MusicgenBundle(model, tokenizer, torch_device, torch_dtype, source, chroma, decoder_dtype)
    log.info(
        "loaded %s%s on %s (%s%s) in %.1f s: %d codebooks, %d channel(s)",
        source,
        " (MusicGen-Melody)" if melody else "",
        torch_device,
        dtype_name(torch_dtype),
        "" if decoder_dtype == torch_dtype else f"; fast decoder weights {dtype_name(decoder_dtype)}",
        time.perf_counter() - started,
        bundle.num_codebooks,
        bundle.audio_channels,
    )
    return bundle
