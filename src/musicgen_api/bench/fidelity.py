"""What a cheaper decoder precision costs: the fast decoder with float16, bfloat16 or int8 weights against float32,
on the same weights and the same token sequence.

Free-running outputs diverge after the first differing sample, so they cannot be compared token by token. Instead
every variant is teacher-forced, step by step, over one sequence the float32 decoder made, and at each position the
next-token distributions it would sample from (CFG-mixed, before top-k) are compared: how often the most likely
token agrees, and the mean KL divergence from float32's. The EnCodec part is a fixed code sequence decoded in
float32 and bfloat16.
"""

import copy

import torch
from torch import Tensor

from musicgen_api.audio.codec import EncodecCodec
from musicgen_api.engine.decode_loop import Seat
from musicgen_api.engine.delay import valid_positions
from musicgen_api.engine.fast import FastEngine
from musicgen_api.generation import GenerationParams, Unwatched


@torch.no_grad()
def reference_sequence(engine: FastEngine, params: GenerationParams) -> Tensor:
    """The delayed token sequence [K, L] that `engine` samples for `params` (seeded)."""
    generator = torch.Generator(engine.bundle.device).manual_seed(params.seed or 0)
    engine.generate(params, Unwatched(), generator=generator)
    return engine.sequence[0].clone()  # slot 0's: the engine has one


@torch.no_grad()
def next_token_log_probs(engine: FastEngine, params: GenerationParams, sequence: Tensor) -> Tensor:
    """log p(next token) [K, L - 1, V] at every position of `sequence` [K, L], teacher-forced, CFG-mixed with
    `params.cfg_coef` and divided by `params.temperature`, as the sampler sees them."""
    window = engine._window(params, params.frames, None, torch.Generator(engine.bundle.device))
    seat = Seat(window, 0, 0, index=0)
    engine.install(seat)  # the request's text in slot 0's buffers; the decoder is then called directly
    engine.park(seat)
    length = sequence.shape[1] - 1
    tokens = sequence[None, :, :length].expand(2, -1, -1).to(engine.sequence.device)
    text = window.text_len
    cross = [(k[:2, :, :text], v[:2, :, :text]) for k, v in engine.cross]
    mask = engine.cross_mask[:2, ..., :text]
    steps = []  # one position at a time, as decoding runs: int8 on a CPU quantizes each call's rows together
    for t in range(length):
        position = torch.full((2, 1), t, device=tokens.device)
        steps.append(engine.decoder(tokens[..., t : t + 1], position, t + 1, cross, mask, rows=slice(0, 2)))
    logits = torch.cat(steps, dim=2)
    cond, uncond = logits[0].float(), logits[1].float()  # [K, L - 1, V]
    mixed = uncond + (cond - uncond) * params.cfg_coef
    return torch.log_softmax(mixed / params.temperature, dim=-1)


def compare(reference: Tensor, candidate: Tensor, params: GenerationParams, channels: int) -> dict[str, float]:
    """Top-1 agreement and mean KL(reference ‖ candidate) over the positions that predict a real token."""
    k, length, vocab = reference.shape
    mask = valid_positions(params.frames, length + 1, k, channels)[:, 1:].to(reference.device)  # targets 1 … L - 1
    agree = (reference.argmax(-1) == candidate.argmax(-1))[mask].float().mean()
    kl = (reference.exp() * (reference - candidate)).sum(-1)[mask].mean()
    entropy = -(reference.exp() * reference).sum(-1)[mask].mean()
    return {
        "top1_agreement": float(agree),
        "mean_kl": float(kl),
        "reference_entropy": float(entropy),  # nats; ln(vocab) would mean the reference is uniform (degenerate)
        "uniform_entropy": float(torch.log(torch.tensor(float(vocab)))),
    }


@torch.no_grad()
def codec_fidelity(codec: EncodecCodec, num_codebooks: int, frames: int, seed: int = 0) -> dict[str, float]:
    """A fixed random code sequence [num_codebooks, frames] decoded by the codec in float32 and in bfloat16."""
    generator = torch.Generator().manual_seed(seed)
    size = int(codec.codec.config.codebook_size)
    codes = torch.randint(0, size, (num_codebooks, frames), generator=generator)
    device = next(codec.codec.parameters()).device
    reference = codec.decode(codes.to(device))
    half = EncodecCodec(copy.deepcopy(codec.codec).bfloat16(), codec.channels).decode(codes.to(device))
    ref, cand = reference.flatten().double(), half.flatten().double()
    correlation = torch.corrcoef(torch.stack([ref, cand]))[0, 1]
    return {
        "codec_correlation": float(correlation),
        "codec_max_abs_error": float((ref - cand).abs().max()),
        "codec_peak": float(ref.abs().max()),
    }
