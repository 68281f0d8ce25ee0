"""Audio while the piece is being made (`stream_audio`): settled code frames → contiguous PCM chunks.

The 32 kHz EnCodec decoder is not causal (its convolutions and LSTMs see both sides), so a stretch of audio decoded on
its own differs from the same stretch inside the whole piece, most near its edges. Each chunk is therefore decoded
with `left` frames of context before it and `right` after it, and only its own samples are kept: the last `right`
settled frames are held back until more arrive. Every frame is decoded a bounded number of times, so the work stays
linear in the piece's length. The final file is still one decode of the whole piece; the chunks join into something
that sounds like it (the tests bound the difference).
"""

import time
from collections.abc import Callable

import torch
from torch import Tensor

from musicgen_api.audio.codec import EncodecCodec
from musicgen_api.audio.loudness import preview
from musicgen_api.audio.wav import to_pcm16
from musicgen_api.generation import FRAME_RATE, AudioChunk, Normalization, ReadFrames


class AudioStreamer:
    """Listens to a piece's settled frames (as its `Progress.frames_ready`) and hands out audio chunks."""

    FIRST = FRAME_RATE // 5  # the first chunk: 0.2 s, so playback starts early
    EVERY = FRAME_RATE  # later chunks: 1 s
    LEFT = FRAME_RATE  # context decoded before a chunk: 1 s
    RIGHT = FRAME_RATE // 2  # context after it, and so the settled frames held back: 0.5 s

    def __init__(
        self,
        codec: EncodecCodec,
        total_frames: int,
        skip_frames: int,
        normalization: Normalization,
        emit: Callable[[AudioChunk], None],
    ) -> None:
        """`total_frames` of the piece, of which the first `skip_frames` (a prompt not returned) are context only."""
        self.codec, self.total, self.normalization, self.emit = codec, total_frames, normalization, emit
        self.codes: Tensor | None = None  # [K, fetched]: every settled frame so far
        self.sent = skip_frames  # frames whose audio has gone out (or is not returned)
        self.skip = skip_frames
        self.decode_seconds = 0.0  # spent decoding chunks: what streaming costs on top of the piece

    @property
    def fetched(self) -> int:
        return 0 if self.codes is None else self.codes.shape[1]

    def frames_ready(self, complete: int, read: ReadFrames) -> None:
        """Take every newly settled frame (always: `read` is gone after the call), and send what is due."""
        if complete > self.fetched:
            new = read(self.fetched)
            self.codes = new if self.codes is None else torch.cat([self.codes, new.to(self.codes.device)], dim=1)
        size = self.FIRST if self.sent == self.skip else self.EVERY
        if self.fetched >= self.total:
            self._send_until(self.total)
        elif self.fetched - self.RIGHT >= self.sent + size:
            self._send_until(self.fetched - self.RIGHT)

    def finish(self) -> None:
        """Send the rest (every frame has settled)."""
        if self.fetched < self.total:
            raise RuntimeError(f"the stream has {self.fetched} of the piece's {self.total} frames")
        self._send_until(self.total)

    def _send_until(self, end: int) -> None:
        if end <= self.sent:
            return
        assert self.codes is not None
        start = max(0, self.sent - self.LEFT)
        stop = min(self.fetched, end + self.RIGHT)
        started = time.perf_counter()
        waveform = self.codec.decode(self.codes[:, start:stop])  # [C, (stop - start) * hop]
        self.decode_seconds += time.perf_counter() - started
        hop = self.codec.hop
        own = waveform[:, (self.sent - start) * hop : (end - start) * hop]
        self.emit(
            AudioChunk(
                pcm=to_pcm16(preview(own, self.normalization)),
                offset=(self.sent - self.skip) / FRAME_RATE,
                duration=(end - self.sent) / FRAME_RATE,
                sample_rate=self.codec.sample_rate,
                channels=own.shape[0],
            )
        )
        self.sent = end
