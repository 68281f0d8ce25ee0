"""A request's whole path through the model: description → codes (engine) → waveform (audio) → WAV bytes.

This is the one object the generation slot drives. It chooses the decoder (EnCodec, or MultiBand Diffusion for
`mbd: true`), reports whole-job progress, and turns failures the user can act on (out of memory, unsupported
options) into the project's error types.
"""

import logging
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from musicgen_api.audio.codec import EncodecDecoder
from musicgen_api.audio.mbd import MultiBandDiffusion, load_mbd
from musicgen_api.audio.wav import to_wav_bytes
from musicgen_api.config import Settings
from musicgen_api.engine.conditioning import TextConditioner
from musicgen_api.engine.delay import sequence_length
from musicgen_api.engine.fast import FastEngine
from musicgen_api.engine.loading import MusicgenBundle, load_musicgen
from musicgen_api.engine.params import GenerationParams, StepHook
from musicgen_api.engine.reference import TransformersEngine
from musicgen_api.errors import GenerationFailed, InvalidRequest
from musicgen_api.progress import JobProgress, StageCosts

log = logging.getLogger(__name__)


class CodeGenerator(Protocol):
    def generate(self, params: GenerationParams, on_step: StepHook) -> Tensor: ...


class MusicPipeline:
    def __init__(
        self,
        bundle: MusicgenBundle,
        engine: CodeGenerator,
        conditioner: TextConditioner,
        mbd: MultiBandDiffusion | None = None,
    ) -> None:
        self.bundle, self.engine, self.conditioner, self.mbd = bundle, engine, conditioner, mbd
        self.codec = EncodecDecoder(bundle.codec, bundle.audio_channels)
        self.costs = StageCosts()

    def check(self, params: GenerationParams) -> None:
        """Refuse, before any work starts, what this server cannot do."""
        if params.mbd and self.mbd is None:
            raise InvalidRequest(
                'mbd: MultiBand Diffusion is turned off on this server (started with --no-mbd); send "mbd": false'
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
        channels = self.bundle.audio_channels
        steps = sequence_length(params.frames, self.bundle.num_codebooks, channels) - 1
        mbd = self.mbd if params.mbd else None
        progress = JobProgress(self.costs, on_progress, steps, params.duration, mbd.calls if mbd else 0)
        codes = self.engine.generate(params, progress.token_step)
        self._sync()
        progress.stage_done("tokens")
        waveform = self.codec.decode(codes)  # [C, T]
        self._sync()
        progress.stage_done("codec")
        if mbd is not None:

            def on_call() -> None:
                self._sync()  # report (and allow cancelling) only what the GPU has actually done
                progress.diffusion_call()

            per_channel = torch.stack([codes[c::channels] for c in range(channels)])  # [C, K / C, F]
            waveform = mbd.decode(per_channel, waveform[:, None, :], on_call)[:, 0]
            progress.stage_done("diffusion")
        samples = params.duration * self.bundle.sampling_rate
        waveform = F.pad(waveform[:, :samples], (0, max(0, samples - waveform.shape[1])))
        wav = to_wav_bytes(waveform, self.bundle.sampling_rate)
        progress.finish()
        return wav

    def _sync(self) -> None:
        if self.bundle.device.type == "cuda":
            torch.cuda.synchronize()


def build_pipeline(settings: Settings) -> MusicPipeline:
    bundle = load_musicgen(settings.model, settings.device, settings.dtype)
    conditioner = TextConditioner(bundle, settings.max_text_tokens)
    engine: CodeGenerator
    if settings.backend == "transformers":
        engine = TransformersEngine(bundle, conditioner)
    else:
        engine = FastEngine(bundle, conditioner, settings.max_duration, compile_step=settings.compile)
        del bundle.model.decoder  # the fast engine now owns these weights; keep one copy in memory
    mbd = load_mbd(settings.mbd_weights, bundle.codec, bundle.device) if settings.mbd else None
    return MusicPipeline(bundle, engine, conditioner, mbd)
