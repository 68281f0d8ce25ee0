"""The reference backend: transformers' own `MusicgenForConditionalGeneration.generate`.

Kept so that equivalence tests and the benchmark can compare the fast engine against the library everyone trusts,
and as a fallback (`--backend transformers`). Progress and cancellation ride on a stopping-criterion hook, which also
keeps the sampled tokens so this backend returns codes like the fast one.
"""

from typing import Any

import torch
from torch import Tensor
from transformers import StoppingCriteria, StoppingCriteriaList

from musicgen_api.config import Quantize
from musicgen_api.engine.backend import BackendName
from musicgen_api.engine.conditioning import TextConditioner
from musicgen_api.engine.delay import complete_frames, sequence_length, undelay
from musicgen_api.engine.loading import MusicgenBundle, dtype_name
from musicgen_api.generation import GenerationParams, Progress


class _StepWatcher(StoppingCriteria):
    """Sees the whole token sequence after every step: reports progress and keeps the last sequence.

    (MusicGen's `generate` in transformers 5.x does not forward its `streamer` argument, so a stopping criterion,
    which is called after every step, is the hook.)"""

    def __init__(self, progress: Progress, frames: int, channels: int) -> None:
        self.progress, self.frames, self.channels = progress, frames, channels
        self.sequence: Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        self.sequence = sequence = input_ids
        self.progress.advance(1)
        complete = complete_frames(sequence.shape[1] - 1, self.frames, sequence.shape[0], self.channels)
        self.progress.frames_ready(complete, lambda start: undelay(sequence, complete, self.channels)[:, start:])
        self.progress.stop_if_cancelled()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class TransformersEngine:
    name: BackendName = "transformers"
    supports_prompts = False  # one window from the text alone: no long pieces, no continuations
    quantize: Quantize = "none"
    slots = 1  # transformers' generate runs one request at a time

    def __init__(self, bundle: MusicgenBundle, conditioner: TextConditioner) -> None:
        self.bundle, self.conditioner = bundle, conditioner
        self.num_codebooks, self.channels = bundle.num_codebooks, bundle.audio_channels
        self.dtype = bundle.dtype  # transformers runs the whole model in the loaded precision
        self.weights = dtype_name(bundle.dtype)

    @torch.no_grad()
    def generate(
        self,
        params: GenerationParams,
        progress: Progress,
        prompt: Tensor | None = None,
        frames: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Codes [K, frames], sampled by transformers with the same parameters mapped to its names. transformers
        draws from the global generator, so `generator`'s seed seeds that (one request at a time: `slots` is 1)."""
        if prompt is not None:
            raise ValueError("the transformers backend does not continue prompts")
        if generator is not None:
            torch.manual_seed(generator.initial_seed())
        frames = params.frames if frames is None else frames
        channels = self.bundle.audio_channels
        steps = sequence_length(frames, self.bundle.num_codebooks, channels) - 1
        watcher = _StepWatcher(progress, frames, channels)
        nucleus = params.top_p > 0
        self.bundle.model.generate(
            **self.conditioning(params),
            do_sample=True,
            # transformers guides only above 1, and below it would add a generic CFG processor that MusicGen's
            # model cannot run: no guidance at all, as the README says.
            guidance_scale=params.cfg_coef if params.cfg_coef > 1 else None,
            temperature=params.temperature,
            top_k=0 if nucleus else params.top_k,  # audiocraft's rule: top_p > 0 ignores top_k
            top_p=params.top_p if nucleus else 1.0,
            max_new_tokens=steps,
            stopping_criteria=StoppingCriteriaList([watcher]),
        )
        assert watcher.sequence is not None
        return undelay(watcher.sequence, frames, channels)  # [K, steps + 1] before the pattern's padding

    def conditioning(self, params: GenerationParams) -> dict[str, Any]:
        """What `generate` is conditioned on: the description's tokens."""
        tokens = self.conditioner.tokenize(params.description)
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
