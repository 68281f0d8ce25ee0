"""A request's whole path through the model: description → codes (engine) → waveform (audio) → WAV bytes.

This is the one object the generation slot drives. It turns engine progress into whole-job progress, and turns
failures the user can act on (out of memory, unsupported options) into the project's error types.
"""

import logging
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from musicgen_api.audio.codec import EncodecDecoder
from musicgen_api.audio.wav import to_wav_bytes
from musicgen_api.config import Settings
from musicgen_api.engine.conditioning import TextConditioner
from musicgen_api.engine.fast import FastEngine
from musicgen_api.engine.loading import MusicgenBundle, load_musicgen
from musicgen_api.engine.params import GenerationParams, StepHook
from musicgen_api.engine.reference import TransformersEngine
from musicgen_api.errors import GenerationFailed, InvalidRequest

log = logging.getLogger(__name__)

DECODE_SHARE = 0.05  # the waveform decode's share of the progress bar, about its share of the wall time on a GPU


class CodeGenerator(Protocol):
    def generate(self, params: GenerationParams, on_step: StepHook) -> Tensor: ...


class MusicPipeline:
    def __init__(self, bundle: MusicgenBundle, engine: CodeGenerator, conditioner: TextConditioner) -> None:
        self.bundle, self.engine, self.conditioner = bundle, engine, conditioner
        self.codec = EncodecDecoder(bundle.codec, bundle.audio_channels)

    def check(self, params: GenerationParams) -> None:
        """Refuse, before any work starts, what this server cannot do."""
        if params.mbd:
            raise InvalidRequest(
                'mbd: MultiBand Diffusion decoding is not available on this server yet; send "mbd": false'
            )
        self.conditioner.tokenize(params.description)

    def render(self, params: GenerationParams, on_progress: StepHook) -> bytes:
        """WAV bytes of exactly `params.duration` seconds; `on_progress(done, total)` may raise to cancel."""
        try:
            return self._render(params, on_progress)
        except torch.cuda.OutOfMemoryError as exc:
            raise GenerationFailed("the GPU ran out of memory; try a shorter duration") from exc
        finally:
            if self.bundle.device.type == "cuda":
                torch.cuda.empty_cache()

    def _render(self, params: GenerationParams, on_progress: StepHook) -> bytes:
        def on_step(done: int, steps: int) -> None:
            on_progress(done, round(steps / (1 - DECODE_SHARE)))

        codes = self.engine.generate(params, on_step)
        waveform = self.codec.decode(codes)
        samples = params.duration * self.bundle.sampling_rate
        waveform = F.pad(waveform[:, :samples], (0, max(0, samples - waveform.shape[1])))
        wav = to_wav_bytes(waveform, self.bundle.sampling_rate)
        on_progress(1, 1)
        return wav


def build_pipeline(settings: Settings) -> MusicPipeline:
    bundle = load_musicgen(settings.model, settings.device, settings.dtype)
    conditioner = TextConditioner(bundle, settings.max_text_tokens)
    engine: CodeGenerator
    if settings.backend == "transformers":
        engine = TransformersEngine(bundle, conditioner)
    else:
        engine = FastEngine(bundle, conditioner, settings.max_duration, compile_step=settings.compile)
        del bundle.model.decoder  # the fast engine now owns these weights; keep one copy in memory
    return MusicPipeline(bundle, engine, conditioner)
