"""The fast decode loop: text → audio codes, one static-shape step at a time, CUDA-graph replayed on GPU.

Everything a step touches is allocated once, when the engine is built, for the longest request the server accepts:
the KV cache, the cross-attention keys/values, the delayed token sequence and the sampling parameters. A step reads
its position from a device tensor and advances it itself, so on CUDA the whole step (decoder, CFG mix, sampling,
delay pattern) is one graph replay and the host never waits on the GPU except to report progress.
"""

import logging
import time
from collections import deque

import torch
from torch import Tensor

from musicgen_api.engine.backend import BackendName
from musicgen_api.engine.conditioning import TextConditioner
from musicgen_api.engine.decoder import MusicgenDecoder
from musicgen_api.engine.delay import delayed_positions, sequence_length, undelay, valid_positions
from musicgen_api.engine.loading import MusicgenBundle
from musicgen_api.engine.sampling import sample_next
from musicgen_api.generation import FRAME_RATE, GenerationParams, Progress, to_frames

log = logging.getLogger(__name__)

PROGRESS_EVERY = 8  # on CUDA, steps between host syncs: progress and cancellation lag by at most two such chunks


class FastEngine:
    name: BackendName = "fast"
    supports_prompts = True

    def __init__(
        self, bundle: MusicgenBundle, conditioner: TextConditioner, window_seconds: int, compile_step: bool = False
    ) -> None:
        config = bundle.decoder_config
        self.bundle, self.conditioner = bundle, conditioner
        self.start_id = bundle.start_token_id
        self.channels = bundle.audio_channels
        self.num_codebooks = bundle.num_codebooks
        self.max_frames = to_frames(window_seconds)  # the longest window: longer pieces are made window by window
        self.length = sequence_length(self.max_frames, self.num_codebooks, self.channels)
        if self.length > config.max_position_embeddings:
            longest = (config.max_position_embeddings - self.num_codebooks // self.channels) // FRAME_RATE
            raise ValueError(
                f"a {window_seconds} s window needs {self.length} decoder positions but this model has "
                f"{config.max_position_embeddings}; use --window {longest} or less"
            )
        self.decoder = MusicgenDecoder.from_transformers(bundle.take_decoder(), config)
        self.decoder.setup_cache(batch=2, length=self.length)  # row 0 conditional, row 1 unconditional (CFG)
        device, dtype, dim = bundle.device, bundle.dtype, config.hidden_size
        n_head, head_dim, text_len = (
            config.num_attention_heads,
            dim // config.num_attention_heads,
            conditioner.max_tokens,
        )
        self.cross = [
            (torch.zeros(2, n_head, text_len, head_dim, device=device, dtype=dtype),
             torch.zeros(2, n_head, text_len, head_dim, device=device, dtype=dtype))
            for _ in range(config.num_hidden_layers)
        ]  # fmt: skip
        self.cross_mask = torch.zeros(2, 1, 1, text_len, dtype=torch.bool, device=device)
        self.sequence = torch.full((1, self.num_codebooks, self.length), self.start_id, device=device)
        self.valid = torch.zeros(self.num_codebooks, self.length, dtype=torch.bool, device=device)
        self.forced = torch.zeros(self.num_codebooks, self.length, dtype=torch.bool, device=device)  # prompt slots
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.cfg_coef = torch.tensor(3.0, device=device)
        self.temperature = torch.tensor(1.0, device=device)
        self.top_k = torch.tensor(250, device=device)
        self.top_p = torch.tensor(0.0, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.step = self._step
        if device.type == "cuda":
            self._capture(compile_step)

    def _capture(self, compile_step: bool) -> None:
        """Warm up and capture the step; with `compile_step`, fuse it with torch.compile first (at start-up), and
        fall back to the plain step if compiling fails on this machine."""
        started = time.perf_counter()
        if compile_step:
            # Inductor fuses the step's many small kernels (norms, residual adds, sampling); the graph then replays
            # the fused kernels.
            self.step = torch.compile(self._step, fullgraph=True, dynamic=False)
            try:
                self.graph = self._record()
            except Exception:
                log.warning("torch.compile failed; capturing the uncompiled decode step instead", exc_info=True)
                self.step = self._step
        if self.graph is None:
            self.graph = self._record()
        seconds = time.perf_counter() - started
        compiled = " (compiled)" if self.step is not self._step else ""
        log.info("captured the decode step%s in a CUDA graph in %.1f s", compiled, seconds)

    @torch.no_grad()
    def _step(self) -> None:
        """Decode position pos, write the sampled tokens at pos + 1 (pad where the delay pattern says) and advance."""
        tokens = self.sequence.index_select(2, self.pos).expand(2, -1, -1)  # [2, K, 1]
        logits = self.decoder(tokens, self.pos, self.cross, self.cross_mask)[:, :, 0]  # [2, K, V]
        sampled = sample_next(logits[:1], logits[1:], self.cfg_coef, self.temperature, self.top_k, self.top_p)
        nxt = self.pos + 1
        keep = self.valid.index_select(1, nxt).T  # [1, K]
        sampled = torch.where(keep, sampled, self.start_id)
        known = self.forced.index_select(1, nxt).T  # [1, K]: the delayed tail of a prompt is kept, not sampled
        sampled = torch.where(known, self.sequence.index_select(2, nxt)[..., 0], sampled)
        self.sequence.index_copy_(2, nxt, sampled[..., None])
        self.pos.copy_(nxt)

    def _record(self) -> torch.cuda.CUDAGraph:
        self.cross_mask[..., 0] = True  # warm up on a well-formed input: no fully masked attention row
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.step()
        torch.cuda.synchronize()
        return graph

    @torch.no_grad()
    def _prepare(self, params: GenerationParams, frames: int, prompt: Tensor | None) -> int:
        """Load one window into the static buffers and prefill its prompt; returns the first decode position."""
        hidden, mask = self.conditioner.encode(params.description)  # [1, S, C], [1, S]
        s = hidden.shape[1]
        text = torch.zeros(2, self.conditioner.max_tokens, hidden.shape[-1], device=hidden.device, dtype=hidden.dtype)
        text[0, :s] = hidden[0]  # the unconditional stream sees zeros, as in MusicGen's CFG
        for (k_buf, v_buf), (k, v) in zip(self.cross, self.decoder.cross_keys_values(text), strict=True):
            k_buf.copy_(k)
            v_buf.copy_(v)
        self.cross_mask.zero_()
        self.cross_mask[:, 0, 0, :s] = mask[0]
        self.valid.copy_(valid_positions(frames, self.length, self.num_codebooks, self.channels))
        self.sequence.fill_(self.start_id)
        self.forced.zero_()
        self.decoder.reset_cache()
        self.cfg_coef.fill_(params.cfg_coef)
        self.temperature.fill_(params.temperature)
        self.top_k.fill_(min(params.top_k, self.decoder.args.codebook_size))
        self.top_p.fill_(params.top_p)
        given = 0 if prompt is None else prompt.shape[1]
        if prompt is not None and given:
            slots = delayed_positions(given, self.num_codebooks, self.channels).to(self.sequence.device)
            self.sequence[0].scatter_(1, slots, prompt.to(self.sequence.device))
            self.forced.scatter_(1, slots, True)
            tokens = self.sequence[:, :, :given].expand(2, -1, -1)  # positions 0 .. P-1, all known
            self.decoder(tokens, torch.arange(given, device=tokens.device), self.cross, self.cross_mask)
        self.pos.fill_(given)
        return given

    def generate(
        self, params: GenerationParams, progress: Progress, prompt: Tensor | None = None, frames: int | None = None
    ) -> Tensor:
        frames = params.frames if frames is None else frames
        if frames > self.max_frames:
            raise ValueError(f"{frames} frames are longer than this engine's window of {self.max_frames}")
        first = self._prepare(params, frames, prompt)
        steps = sequence_length(frames, self.num_codebooks, self.channels) - 1 - first
        if self.graph is None:
            for _ in range(steps):
                self.step()
                progress.advance(1)
                progress.stop_if_cancelled()
        else:
            self._replay(steps, progress)
        return undelay(self.sequence[0], frames, self.channels)

    def _replay(self, steps: int, progress: Progress) -> None:
        """Keep one chunk of steps queued on the GPU while reporting the chunk before it."""
        assert self.graph is not None
        in_flight: deque[tuple[torch.cuda.Event, int]] = deque()
        chunk = 0
        for t in range(steps):
            self.graph.replay()
            chunk += 1
            if chunk < PROGRESS_EVERY and t + 1 != steps:
                continue
            mark = torch.cuda.Event()
            mark.record()
            in_flight.append((mark, chunk))
            chunk = 0
            if len(in_flight) > 1:
                event, finished = in_flight.popleft()
                event.synchronize()
                progress.advance(finished)
                progress.stop_if_cancelled()
        for event, finished in in_flight:
            event.synchronize()
            progress.advance(finished)
            progress.stop_if_cancelled()
