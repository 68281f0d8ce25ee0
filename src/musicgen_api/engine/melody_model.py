"""transformers' `MusicgenMelodyForConditionalGeneration`, with its conditioning kept on the first decode step.

The melody model puts the chroma and the text in front of the decoded tokens on the first step only, then relies on
the KV cache; its `prepare_inputs_for_generation` drops them whenever a cache object exists. transformers 5.x makes
that cache before the first step, so its `generate` silently ignores both the melody and the text. This subclass
hands them over while the cache is still empty, which is what the library intends.
"""

from typing import Any

import torch
from transformers import Cache, MusicgenMelodyForConditionalGeneration


class MelodyModel(MusicgenMelodyForConditionalGeneration):
    def prepare_inputs_for_generation(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        if past_key_values is not None:  # newer transformers name it `cache`; pass whichever came
            kwargs["past_key_values"] = past_key_values
        inputs: dict[str, Any] = super().prepare_inputs_for_generation(
            decoder_input_ids, encoder_hidden_states=encoder_hidden_states, **kwargs
        )
        cache = kwargs.get("cache", past_key_values)
        if cache is not None and cache.get_seq_length() == 0:
            inputs["encoder_hidden_states"] = encoder_hidden_states  # [B, chroma + text, C] in front of step one
        return inputs
