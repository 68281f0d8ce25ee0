"""Pieces longer than MusicGen's window, and continuations of a prompt, the way audiocraft makes them.

MusicGen was trained on 30 s windows. A longer piece is made window by window: after the first, each window keeps
the last `window - stride` seconds of codes as its prompt and adds `stride` seconds, with the same text
conditioning. The pieces join in code space, so there is no seam from decoding them separately.
"""

from typing import Protocol

import torch
from torch import Tensor

from musicgen_api.engine.params import GenerationParams, StepHook


class PromptedEngine(Protocol):
    num_codebooks: int
    channels: int

    def generate(
        self, params: GenerationParams, on_step: StepHook, prompt: Tensor | None = None, frames: int | None = None
    ) -> Tensor: ...


def plan_windows(total: int, prompt: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(frames kept as the window's prompt, new frames) for each window, in frames."""
    windows = [(prompt, min(total, window) - prompt)]
    made = min(total, window)
    while made < total:
        keep = min(window - stride, made)
        new = min(stride, total - made, window - keep)
        windows.append((keep, new))
        made += new
    return windows


def generate_long(
    engine: PromptedEngine,
    params: GenerationParams,
    on_step: StepHook,
    total_frames: int,
    window: int,
    stride: int,
    prompt: Tensor | None = None,
) -> Tensor:
    """Codes [K, total_frames], starting with `prompt` [K, P] when given."""
    codes = prompt if prompt is not None else torch.empty(engine.num_codebooks, 0, dtype=torch.long)
    windows = plan_windows(total_frames, codes.shape[1], window, stride)
    tail = engine.num_codebooks // engine.channels - 1  # the delay pattern's extra steps per window
    total_steps = sum(new + tail for _, new in windows)
    done = 0
    for keep, new in windows:
        context = codes[:, codes.shape[1] - keep :] if keep else None

        def report(step: int, steps: int, offset: int = done) -> None:
            on_step(offset + step, total_steps)

        out = engine.generate(params, report, prompt=context, frames=keep + new)
        codes = torch.cat([codes.to(out.device), out[:, keep:]], dim=1)
        done += new + tail
    return codes
