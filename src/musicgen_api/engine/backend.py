"""The one interface every decode backend offers (the fast engine, transformers' `generate`, MusicGen-Melody), so
the long-piece loop and the pipeline never need to know which one runs."""

from typing import Literal, Protocol

import torch
from torch import Tensor

from musicgen_api.config import Quantize
from musicgen_api.generation import GenerationParams, Progress

BackendName = Literal["fast", "transformers"]


class CodeGenerator(Protocol):
    name: BackendName  # what /api/info reports as `backend`
    supports_prompts: bool  # can continue a prompt: long pieces (window by window) and audio_prompt
    num_codebooks: int
    channels: int
    dtype: torch.dtype  # the precision its decoder runs in
    quantize: Quantize  # "none", or how its decoder's weights are stored ("int8")
    weights: str  # how its decoder's weight matrices are stored: a dtype's name ("float16") or "int8"
    slots: int  # generations it decodes at once

    def generate(
        self,
        params: GenerationParams,
        progress: Progress,
        prompt: Tensor | None = None,
        frames: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Codes [K, frames] (default: the request's duration) for one window, starting with `prompt` [K, P] when
        given, sampled with noise from `generator` (the request's; a fresh random one when None). Calls
        `progress.advance` as decode steps finish, `progress.frames_ready` as frames settle and
        `progress.stop_if_cancelled` between them."""
