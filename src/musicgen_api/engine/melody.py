"""The MusicGen-Melody backend: transformers' `MusicgenMelodyForConditionalGeneration.generate`.

Melody checkpoints put the melody's chroma and the text in front of the decoded tokens (not in cross-attention),
which the fast engine does not model, so these run on transformers' own sampler whatever `--backend` says: the
reference backend's loop, progress and cancellation hook, with the chroma added to what it is conditioned on. The
melody arrives as an encoded file (`params.melody`); without one the model generates from the text alone.
"""

from typing import Any

from torch import Tensor

from musicgen_api.audio.formats import decode_audio
from musicgen_api.engine.conditioning import TextConditioner
from musicgen_api.engine.loading import MusicgenBundle
from musicgen_api.engine.reference import TransformersEngine
from musicgen_api.generation import GenerationParams


class MelodyEngine(TransformersEngine):
    def __init__(self, bundle: MusicgenBundle, conditioner: TextConditioner) -> None:
        if bundle.chroma is None:
            raise ValueError(f"{bundle.source} is not a MusicGen-Melody checkpoint")
        super().__init__(bundle, conditioner)
        self.chroma = bundle.chroma

    def features(self, melody: bytes) -> Tensor:
        """An encoded audio file → the chroma [1, frames, 12] the model conditions on, on the model's device."""
        waveform, rate = decode_audio(melody)
        return self.chroma(waveform, rate).to(self.bundle.device, self.bundle.dtype)

    def conditioning(self, params: GenerationParams) -> dict[str, Any]:
        """The description's tokens and, when a melody is given, its chroma (`input_features`)."""
        inputs = super().conditioning(params)
        if params.melody is not None:
            inputs["input_features"] = self.features(params.melody)
        return inputs
