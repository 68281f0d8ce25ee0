"""A request's whole path through the model: description (+ prompt audio) → codes (engine) → waveform (audio) →
levelled, encoded file.

This is the one object the generation slot drives. It seeds the sampler, makes long pieces window by window,
chooses the decoder (EnCodec, or MultiBand Diffusion for `mbd: true`), reports whole-job progress, and turns
failures the user can act on (out of memory, unsupported options) into the project's error types.
"""

import logging
import secrets
import time
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from musicgen_api import metrics
from musicgen_api.audio.codec import EncodecCodec
from musicgen_api.audio.formats import MIME_TYPES, decode_audio, encode_audio, probe_audio
from musicgen_api.audio.loudness import normalize
from musicgen_api.audio.mbd import MultiBandDiffusion, load_mbd
from musicgen_api.config import Quantize, Settings
from musicgen_api.engine.conditioning import TextConditioner
from musicgen_api.engine.fast import FastEngine
from musicgen_api.engine.loading import MusicgenBundle, load_musicgen
from musicgen_api.engine.long_form import generate_long, total_steps
from musicgen_api.engine.melody import MelodyEngine
from musicgen_api.engine.params import FRAME_RATE, GenerationParams, RenderedAudio, StepHook
from musicgen_api.engine.reference import TransformersEngine
from musicgen_api.errors import GenerationFailed, InvalidRequest
from musicgen_api.progress import JobProgress, StageCosts

log = logging.getLogger(__name__)

SEED_LIMIT = 2**63  # seeds are 0 ≤ seed < 2**63, what torch.manual_seed takes


class CodeGenerator(Protocol):
    num_codebooks: int
    channels: int
    supports_prompts: bool
    dtype: torch.dtype  # the precision its decoder runs in
    quantize: Quantize  # "none", or how its decoder's weights are stored ("int8")

    def generate(
        self, params: GenerationParams, on_step: StepHook, prompt: Tensor | None = None, frames: int | None = None
    ) -> Tensor: ...


class MusicPipeline:
    def __init__(
        self,
        bundle: MusicgenBundle,
        engine: CodeGenerator,
        conditioner: TextConditioner,
        mbd: MultiBandDiffusion | None = None,
        window: int = 30,
        stride: int = 18,
    ) -> None:
        self.bundle, self.engine, self.conditioner, self.mbd = bundle, engine, conditioner, mbd
        self.codec = EncodecCodec(bundle.codec, bundle.audio_channels)
        self.window, self.stride = window * FRAME_RATE, stride * FRAME_RATE  # in code frames
        self.costs = StageCosts()
        if bundle.device.type == "cuda":
            metrics.GPU_MEMORY_BYTES.set_function(lambda: torch.cuda.memory_allocated(bundle.device))

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.bundle.source,
            "channels": self.bundle.audio_channels,
            "sample_rate": self.bundle.sampling_rate,
            "melody": self.bundle.melody,
            "window": self.window // FRAME_RATE,
            "backend": "fast" if self.engine.supports_prompts else "transformers",
            "device": str(self.bundle.device),
            "dtype": _name(self.bundle.dtype),
            "decoder_dtype": _name(self.engine.dtype),
            "quantize": self.engine.quantize,
        }

    def check(self, params: GenerationParams) -> None:
        """Refuse, before any work starts, what this server cannot do with this request."""
        if params.mbd and self.mbd is None:
            raise InvalidRequest(
                'mbd: MultiBand Diffusion is turned off on this server (started with --no-mbd); send "mbd": false'
            )
        self._check_melody(params)
        self.conditioner.tokenize(params.description)
        prompt_frames = self._check_prompt(params)
        if (prompt_frames or params.frames > self.window) and not self.engine.supports_prompts:
            field = "audio_prompt" if prompt_frames else "duration"
            why = "a MusicGen-Melody model" if self.bundle.melody else "--backend transformers"
            raise InvalidRequest(
                f"{field}: pieces longer than {self.window // FRAME_RATE} s and audio_prompt need the fast backend; "
                f"this server runs {why}"
            )

    def _check_melody(self, params: GenerationParams) -> None:
        if params.melody is None:
            return
        if not self.bundle.melody:
            raise InvalidRequest(
                f"melody: this server's model ({self.bundle.source}) cannot use a melody. Melody conditioning needs a "
                "MusicGen-Melody checkpoint (facebook/musicgen-melody, facebook/musicgen-melody-large or their "
                "stereo variants); start the server with one of those as --model, or leave melody out"
            )
        try:
            probe_audio(params.melody)
        except ValueError as exc:
            raise InvalidRequest(f"melody: {exc}; send a base64 WAV, FLAC, MP3 or OGG file") from exc

    def _check_prompt(self, params: GenerationParams) -> int:
        if params.audio_prompt is None:
            return 0
        try:
            seconds, _ = probe_audio(params.audio_prompt)
        except ValueError as exc:
            raise InvalidRequest(f"audio_prompt: {exc}; send a base64 WAV, FLAC, MP3 or OGG file") from exc
        frames = int(seconds * FRAME_RATE)
        longest = self.window - FRAME_RATE
        if frames < 1:
            raise InvalidRequest(f"audio_prompt is {seconds:.3f} s long; send at least 0.02 s of audio")
        if frames > longest:
            raise InvalidRequest(f"audio_prompt is {seconds:.1f} s long; at most {longest / FRAME_RATE:.0f} s is used")
        if params.return_prompt and frames >= params.frames:
            raise InvalidRequest(
                f"duration ({params.duration} s) must be longer than the audio_prompt ({seconds:.1f} s) it includes; "
                'or send "return_prompt": false to get duration seconds of new audio after it'
            )
        return frames

    def render(self, params: GenerationParams, on_progress: StepHook) -> RenderedAudio:
        """The finished clip of exactly `params.duration` seconds; `on_progress(done, total)` may raise to cancel."""
        try:
            return self._render(params, on_progress)
        except torch.cuda.OutOfMemoryError as exc:
            raise GenerationFailed("the GPU ran out of memory; try a shorter duration") from exc
        finally:
            if self.bundle.device.type == "cuda":
                torch.cuda.empty_cache()

    def _render(self, params: GenerationParams, on_progress: StepHook) -> RenderedAudio:
        seed = params.seed if params.seed is not None else secrets.randbelow(SEED_LIMIT)
        torch.manual_seed(seed)  # seeds every device's generator: the sampler's and MBD's noise come from them
        prompt = self._prompt_codes(params)
        given = 0 if prompt is None else prompt.shape[1]
        total = given + params.frames if not params.return_prompt else params.frames
        channels = self.bundle.audio_channels
        steps = total_steps(total, given, self.window, self.stride, self.bundle.num_codebooks, channels)
        mbd = self.mbd if params.mbd else None
        seconds = total / FRAME_RATE
        progress = JobProgress(self.costs, on_progress, steps, seconds, mbd.calls if mbd else 0)

        started = time.perf_counter()
        codes = generate_long(self.engine, params, progress.token_step, total, self.window, self.stride, prompt)
        self._sync()
        metrics.DECODE_STEPS_PER_SECOND.set(steps / (time.perf_counter() - started))
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

        rate = self.bundle.sampling_rate
        if not params.return_prompt:
            waveform = waveform[:, given * self.codec.hop :]
        samples = params.duration * rate
        waveform = F.pad(waveform[:, :samples], (0, max(0, samples - waveform.shape[1])))
        waveform = normalize(waveform, rate, params.normalization)
        data = encode_audio(waveform, rate, params.format)
        progress.finish()
        return RenderedAudio(
            data=data,
            format=params.format,
            mime_type=MIME_TYPES[params.format],
            sample_rate=rate,
            channels=channels,
            duration=float(params.duration),
            seed=seed,
        )

    def _prompt_codes(self, params: GenerationParams) -> Tensor | None:
        if params.audio_prompt is None:
            return None
        waveform, rate = decode_audio(params.audio_prompt)
        return self.codec.encode(waveform, rate)

    def _sync(self) -> None:
        if self.bundle.device.type == "cuda":
            torch.cuda.synchronize()


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def build_pipeline(settings: Settings) -> MusicPipeline:
    if settings.extend_stride >= settings.window:
        stride, window = settings.extend_stride, settings.window
        raise ValueError(f"--extend-stride ({stride}) must be shorter than --window ({window})")
    bundle = load_musicgen(settings.model, settings.device, settings.dtype)
    conditioner = TextConditioner(bundle, settings.max_text_tokens)
    window = min(settings.window, settings.max_duration)
    engine: CodeGenerator
    if bundle.melody:
        log.info(
            "%s is a MusicGen-Melody checkpoint: it runs on transformers' generate, not the fast engine", bundle.source
        )
        engine = MelodyEngine(bundle, conditioner)
    elif settings.backend == "transformers":
        engine = TransformersEngine(bundle, conditioner)
    else:
        engine = FastEngine(bundle, conditioner, window, compile_step=settings.compile, quantize=settings.quantize)
        del bundle.model.decoder  # the fast engine now owns these weights; keep one copy in memory
    mbd = load_mbd(settings.mbd_weights, bundle.codec, bundle.device) if settings.mbd else None
    return MusicPipeline(bundle, engine, conditioner, mbd, window, settings.extend_stride)
