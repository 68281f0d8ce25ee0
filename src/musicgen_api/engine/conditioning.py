"""Text conditioning: description → T5 hidden states in the decoder's width, computed once per request.

Both decode backends need the same thing here, and the fast one also needs to know the token count before it
starts, so tokenizing lives apart from the decode loop.
"""

import torch

from musicgen_api.engine.loading import MusicgenBundle
from musicgen_api.errors import InvalidRequest


class TextConditioner:
    def __init__(self, bundle: MusicgenBundle, max_tokens: int) -> None:
        self.bundle = bundle
        self.max_tokens = max_tokens

    def tokenize(self, description: str) -> dict[str, torch.Tensor]:
        tokens = self.bundle.tokenizer([description], return_tensors="pt", padding=True)
        count = int(tokens["input_ids"].shape[-1])
        if count > self.max_tokens:
            raise InvalidRequest(
                f"description is too long: it makes {count} text tokens and this server accepts at most "
                f"{self.max_tokens}; shorten it",
                field="description",
            )
        return {name: value.to(self.bundle.device) for name, value in tokens.items()}

    @torch.no_grad()
    def encode(self, description: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [1, S, C] (already projected and masked as MusicGen does) and the mask [1, S] (bool)."""
        model = self.bundle.model
        tokens = self.tokenize(description)
        mask = tokens["attention_mask"]
        hidden = model.text_encoder(input_ids=tokens["input_ids"], attention_mask=mask).last_hidden_state
        proj = getattr(model, "enc_to_dec_proj", None)
        if proj is not None:
            hidden = proj(hidden)
        hidden = hidden * mask[..., None].to(hidden.dtype)
        return hidden, mask.bool()
