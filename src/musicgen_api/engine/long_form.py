"""Pieces longer than MusicGen's window, and continuations of a prompt, the way audiocraft makes them.

MusicGen was trained on 30 s windows. A longer piece is made window by window: after the first, each window keeps
the last `window - stride` seconds of codes as its prompt and adds `stride` seconds, with the same text
conditioning. The pieces join in code space, so there is no seam from decoding them separately.
"""

import torch
from torch import Tensor

from musicgen_api.engine.backend import CodeGenerator
from musicgen_api.engine.delay import sequence_length
from musicgen_api.generation import GenerationParams, Progress, ReadFrames


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


def window_steps(new: int, num_codebooks: int, channels: int) -> int:
    """Decode steps of a window adding `new` frames after its prompt (the delay pattern adds K_ch - 1)."""
    return sequence_length(new, num_codebooks, channels) - 1


def total_steps(total: int, prompt: int, window: int, stride: int, num_codebooks: int, channels: int) -> int:
    """Decode steps of a whole piece, all windows together: what whole-piece progress counts."""
    windows = plan_windows(total, prompt, window, stride)
    return sum(window_steps(new, num_codebooks, channels) for _, new in windows)


class _Window:
    """One window's `Progress` inside the whole piece's: its frames are counted from the start of the piece."""

    def __init__(self, piece: Progress, start: int) -> None:
        self.piece, self.start = piece, start  # the piece frame this window's frame 0 is

    def advance(self, steps: int) -> None:
        self.piece.advance(steps)

    def stop_if_cancelled(self) -> None:
        self.piece.stop_if_cancelled()

    def frames_ready(self, complete: int, read: ReadFrames) -> None:
        # The piece's listener has read every frame before this window's new ones (the last window ended with all
        # of its frames), so it only ever reads from inside this window.
        self.piece.frames_ready(self.start + complete, lambda start: read(start - self.start))


def generate_long(
    engine: CodeGenerator,
    params: GenerationParams,
    progress: Progress,
    total_frames: int,
    window: int,
    stride: int,
    prompt: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Codes [K, total_frames], starting with `prompt` [K, P] when given; every window counts its steps into the same
    `progress`, whose total is `total_steps`, and reports settled frames counted from the start of the piece. The
    windows draw their noise from one `generator`, one stream for the whole piece."""
    codes = prompt if prompt is not None else torch.empty(engine.num_codebooks, 0, dtype=torch.long)
    for keep, new in plan_windows(total_frames, codes.shape[1], window, stride):
        context = codes[:, codes.shape[1] - keep :] if keep else None
        in_piece = _Window(progress, codes.shape[1] - keep)
        out = engine.generate(params, in_piece, prompt=context, frames=keep + new, generator=generator)
        codes = torch.cat([codes.to(out.device), out[:, keep:]], dim=1)
    return codes
