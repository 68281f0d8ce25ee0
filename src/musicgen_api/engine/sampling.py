"""Next-token sampling with audiocraft's semantics, written with static shapes so it runs inside a CUDA graph.

audiocraft (where the API's parameters come from) mixes the two CFG streams as
`uncond + (cond - uncond) * cfg_coef`, divides by `temperature`, then samples from the nucleus when `top_p > 0`
(top_k is then ignored) and from the `top_k` most likely tokens otherwise. Here every parameter is a 0-d tensor and
both filters are a mask over the sorted distribution, so one captured graph serves any request; the draw uses the
exponential race (argmax of p / Exp(1), gpt-fast's trick), which samples from p without a host sync. The Exp(1)
noise is the caller's, drawn from each request's own generator, so requests decoding side by side
(`--slots`) never share a random stream.
"""

import torch
from torch import Tensor


def sample_next(
    cond: Tensor,
    uncond: Tensor,
    cfg_coef: Tensor,
    temperature: Tensor,
    top_k: Tensor,
    top_p: Tensor,
    race: Tensor,
) -> Tensor:
    """cond/uncond logits [B, K, V] (float32) and Exp(1) noise `race` [B, K, V] → sampled token ids [B, K]; the
    parameters are 0-d or one per row ([B, 1, 1])."""
    logits = uncond + (cond - uncond) * cfg_coef
    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    rank = torch.arange(probs.shape[-1], device=probs.device)
    in_top_k = rank < top_k
    in_nucleus = (sorted_probs.cumsum(-1) - sorted_probs) <= top_p  # audiocraft keeps the token that crosses top_p
    keep = torch.where(top_p > 0, in_nucleus, in_top_k)
    kept = sorted_probs * keep
    race = race.clamp_min(torch.finfo(kept.dtype).tiny)
    choice = torch.argmax(kept / race, dim=-1, keepdim=True)  # [B, K, 1] index into the sorted order
    return order.gather(-1, choice).squeeze(-1)
