"""A request's whole path through the model: description (+ prompt audio) → codes (engine) → waveform (audio) →
levelled, encoded file.

This is the one object the generation slots drive, one call per generation, several at once with `--slots`. It
seeds the request's own random generator (the sampler's and MBD's noise), makes long pieces window by window,
chooses the decoder (EnCodec, or MultiBand Diffusion for `mbd: true`, one piece at a time), reports whole-job
progress, and turns failures the user can act on (out of memory, unsupported options) into the project's error
types.
"""

import logging
import secrets
import threading
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from musicgen_api import metrics
from musicgen_api.audio.codec import EncodecCodec
from musicgen_api.audio.formats import MIME_TYPES, decode_audio, encode_audio, probe_audio
from musicgen_api.audio.loudness import normalize
from musicgen_api.audio.mbd import MultiBandDiffusion
from musicgen_api.audio.mbd_supply import MBDSupply
from musicgen_api.audio.streaming import AudioStreamer
from musicgen_api.config import Settings
from musicgen_api.engine.backend import CodeGenerator
from musicgen_api.engine.conditioning import TextConditioner
from musicgen_api.engine.fast import FastEngine
from musicgen_api.engine.loading import MusicgenBundle, dtype_name, load_musicgen
from musicgen_api.engine.long_form import generate_long, total_steps
from musicgen_api.engine.melody import MelodyEngine
from musicgen_api.engine.reference import TransformersEngine
from musicgen_api.errors import GenerationFailed, InvalidRequest, NotReady
from musicgen_api.generation import GenerationParams, JobControl, RenderedAudio, to_frames, to_seconds
from musicgen_api.progress import JobProgress, StageCosts

log = logging.getLogger(__name__)

SEED_LIMIT = 2**63  # seeds are 0 ≤ seed < 2**63, what torch.Generator.manual_seed takes


class MusicPipeline:
    def __init__(
        self,
        bundle: MusicgenBundle,
        engine: CodeGenerator,
        conditioner: TextConditioner,
        mbd: MBDSupply | None = None,
        window: int = 30,
        stride: int = 18,
    ) -> None:
        self.bundle, self.engine, self.conditioner, self.mbd_supply = bundle, engine, conditioner, mbd
        self.codec = EncodecCodec(bundle.codec, bundle.audio_channels)
        self.window, self.stride = to_frames(window), to_frames(stride)  # in code frames
        self.costs = StageCosts()
        self.slots = engine.slots
        self._diffusion_turn = threading.Lock()  # MBD's U-Nets and their activations: one piece at a time
        if bundle.device.type == "cuda":
            metrics.GPU_MEMORY_BYTES.set_function(lambda: torch.cuda.memory_allocated(bundle.device))

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.bundle.source,
            "channels": self.bundle.audio_channels,
            "sample_rate": self.bundle.sampling_rate,
            "melody": self.bundle.melody,
            "window": round(to_seconds(self.window)),
            "backend": self.engine.name,
            "device": str(self.bundle.device),
            "mbd": self.mbd_supply.describe() if self.mbd_supply else {"state": "off"},
            "dtype": dtype_name(self.bundle.dtype),
            "decoder_dtype": dtype_name(self.engine.dtype),
            "decoder_weights": self.engine.weights,
            "quantize": self.engine.quantize,
        }

    @property
    def mbd(self) -> MultiBandDiffusion | None:
        """MultiBand Diffusion when it is ready."""
        return self.mbd_supply.model if self.mbd_supply else None

    def check(self, params: GenerationParams) -> None:
        """Refuse, before any work starts, what this server cannot do with this request."""
        self._check_mbd(params)
        self._check_melody(params)
        self.conditioner.tokenize(params.description)
        prompt_frames = self._check_prompt(params)
        if (prompt_frames or params.frames > self.window) and not self.engine.supports_prompts:
            field = "audio_prompt" if prompt_frames else "duration"
            why = "a MusicGen-Melody model" if self.bundle.melody else "--backend transformers"
            raise InvalidRequest(
                f"{field}: pieces longer than {to_seconds(self.window):.0f} s and audio_prompt need the fast backend; "
                f"this server runs {why}",
                field=field,
            )

    def _check_mbd(self, params: GenerationParams) -> None:
        supply = self.mbd_supply
        if not params.mbd or (supply is not None and supply.state == "ready"):
            return
        if supply is not None and supply.state == "loading":
            raise NotReady(
                f"MultiBand Diffusion is still being fetched ({supply.loading_seconds:.0f} s so far; its weights are "
                'about 4.6 GB); try again in a minute, or send "mbd": false'
            )
        if supply is None or supply.state == "off":
            raise InvalidRequest(
                'MultiBand Diffusion is turned off on this server (started with --no-mbd); send "mbd": false',
                field="mbd",
            )
        raise InvalidRequest(
            f'MultiBand Diffusion is unavailable on this server ({supply.reason}); send "mbd": false, or have '
            "the server started with its weights reachable (--mbd-weights FILE or a hub cache under HF_HOME)",
            field="mbd",
        )

    def _check_melody(self, params: GenerationParams) -> None:
        if params.melody is None:
            return
        if not self.bundle.melody:
            raise InvalidRequest(
                f"melody: this server's model ({self.bundle.source}) cannot use a melody. Melody conditioning needs a "
                "MusicGen-Melody checkpoint (facebook/musicgen-melody, facebook/musicgen-melody-large or their "
                "stereo variants); start the server with one of those as --model, or leave melody out",
                field="melody",
            )
        try:
            probe_audio(params.melody)
        except ValueError as exc:
            raise InvalidRequest(f"melody: {exc}; send a base64 WAV, FLAC, MP3 or OGG file", field="melody") from exc

    def _check_prompt(self, params: GenerationParams) -> int:
        if params.audio_prompt is None:
            return 0
        try:
            seconds, _ = probe_audio(params.audio_prompt)
        except ValueError as exc:
            raise InvalidRequest(
                f"audio_prompt: {exc}; send a base64 WAV, FLAC, MP3 or OGG file", field="audio_prompt"
            ) from exc
        frames = to_frames(seconds)
        longest = self.window - to_frames(1)
        if frames < 1:
            raise InvalidRequest(
                f"audio_prompt is {seconds:.3f} s long; send at least 0.02 s of audio", field="audio_prompt"
            )
        if frames > longest:
            raise InvalidRequest(
                f"audio_prompt is {seconds:.1f} s long; at most {to_seconds(longest):.0f} s is used",
                field="audio_prompt",
            )
        if params.return_prompt and frames >= params.frames:
            raise InvalidRequest(
                f"duration ({params.duration} s) must be longer than the audio_prompt ({seconds:.1f} s) it includes; "
                'or send "return_prompt": false to get duration seconds of new audio after it',
                field="duration",
            )
        return frames

    def render(self, params: GenerationParams, job: JobControl) -> RenderedAudio:
        """The finished clip of exactly `params.duration` seconds, reporting to `job` and stopping when it says."""
        try:
            return self._render(params, job)
        except torch.cuda.OutOfMemoryError as exc:
            raise GenerationFailed("the GPU ran out of memory; try a shorter duration") from exc
        finally:
            if self.bundle.device.type == "cuda":
                torch.cuda.empty_cache()

    def _render(self, params: GenerationParams, job: JobControl) -> RenderedAudio:
        seed = params.seed if params.seed is not None else secrets.randbelow(SEED_LIMIT)
        generator = torch.Generator(self.bundle.device).manual_seed(seed)  # this request's alone, beside others
        prompt = self._prompt_codes(params)
        given = 0 if prompt is None else prompt.shape[1]
        total = given + params.frames if not params.return_prompt else params.frames
        channels = self.bundle.audio_channels
        steps = total_steps(total, given, self.window, self.stride, self.bundle.num_codebooks, channels)
        mbd = self.mbd if params.mbd else None
        streamer = None
        if params.stream_audio:  # chunks of the EnCodec decode as frames settle (with MBD too: a preview)
            skip = 0 if params.return_prompt else given
            streamer = AudioStreamer(self.codec, total, skip, params.normalization, job.audio)
        on_frames = streamer.frames_ready if streamer else None
        progress = JobProgress(self.costs, job, steps, to_seconds(total), mbd.calls if mbd else 0, on_frames)

        started = time.perf_counter()
        codes = generate_long(self.engine, params, progress, total, self.window, self.stride, prompt, generator)
        if streamer is not None:
            streamer.finish()
            log.debug("streamed the audio; decoding its chunks took %.2f s", streamer.decode_seconds)
        self._sync()
        metrics.DECODE_STEPS_PER_SECOND.set(steps / (time.perf_counter() - started))
        progress.stage_done("tokens")

        def on_codec_part(fraction: float) -> None:
            progress.codec_part(fraction)
            progress.stop_if_cancelled()

        waveform = self.codec.decode(codes, on_codec_part)  # [C, T]
        self._sync()
        progress.stage_done("codec")
        if mbd is not None:

            def on_call() -> None:
                self._sync()  # report (and allow cancelling) only what the GPU has actually done
                progress.diffusion_call()
                progress.stop_if_cancelled()

            per_channel = torch.stack([codes[c::channels] for c in range(channels)])  # [C, K / C, F]
            with self._diffusion_turn:
                waveform = mbd.decode(per_channel, waveform[:, None, :], on_call, generator=generator)[:, 0]
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


def build_pipeline(settings: Settings) -> MusicPipeline:
    bundle = load_musicgen(settings.model, settings.device, settings.dtype)
    conditioner = TextConditioner(bundle, settings.max_text_tokens)
    window = settings.decode_window
    engine: CodeGenerator
    if settings.slots > 1 and bundle.melody:
        raise ValueError(
            f"--slots {settings.slots} needs the fast backend; {bundle.source} is a MusicGen-Melody checkpoint, which "
            "runs one generation at a time on transformers' generate"
        )
    if bundle.melody:
        log.info(
            "%s is a MusicGen-Melody checkpoint: it runs on transformers' generate, not the fast engine", bundle.source
        )
        engine = MelodyEngine(bundle, conditioner)
    elif settings.backend == "transformers":
        engine = TransformersEngine(bundle, conditioner)
    else:
        engine = FastEngine(
            bundle, conditioner, window, compile_step=settings.compile, quantize=settings.quantize, slots=settings.slots
        )
    mbd = MBDSupply(settings.mbd, settings.mbd_weights, bundle.codec, bundle.device)
    return MusicPipeline(bundle, engine, conditioner, mbd, window, settings.extend_stride)
