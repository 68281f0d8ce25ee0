"""The fast decode loop: text → audio codes, one static-shape step at a time, CUDA-graph replayed on GPU.

Everything a step touches is allocated once, when the engine is built, for the longest request the server accepts:
the KV cache, the cross-attention keys/values, the delayed token sequence and the sampling parameters. A step reads
its position from a device tensor and advances it itself, so on CUDA the whole step (decoder, CFG mix, sampling,
delay pattern) is one graph replay and the host never waits on the GPU except to report progress.

A step attends only to what exists: the cache positions up to its own and the request's real text tokens. Eager (on
CPU) it slices exactly; a captured graph has static shapes, so on CUDA one graph is captured per length bucket
(`Buckets`) and the host, which counts the steps itself, replays the graph of the bucket the position falls in.
"""

import logging
import time
from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor

from musicgen_api.config import Quantize
from musicgen_api.engine.backend import BackendName
from musicgen_api.engine.conditioning import TextConditioner
from musicgen_api.engine.decoder import MusicgenDecoder
from musicgen_api.engine.delay import (
    complete_frames,
    delayed_positions,
    sequence_length,
    undelay,
    valid_positions,
)
from musicgen_api.engine.loading import MusicgenBundle, resolve_attention_dtype
from musicgen_api.engine.quantize import quantize_int8
from musicgen_api.engine.sampling import sample_next
from musicgen_api.generation import FRAME_RATE, GenerationParams, Progress, to_frames

log = logging.getLogger(__name__)

PROGRESS_EVERY = 8  # on CUDA, steps between host syncs: progress and cancellation lag by at most two such chunks


@dataclass(frozen=True)
class Buckets:
    """The attention lengths steps are shaped for: self-attention over kv, 2·kv, 4·kv, … cache positions and
    cross-attention over text, 2·text, … text slots, each capped at its buffer's size. Doubling keeps the number of
    captured graphs (and compilations) logarithmic while a step reads at most twice what exists."""

    kv: int = 256  # shortest self-attention length
    text: int = 64  # shortest cross-attention length (most descriptions are shorter)


def bucket(n: int, smallest: int, limit: int) -> int:
    """The attended length for `n` valid positions: the first of smallest·2^i (i ≥ 0) that holds them, or `limit`."""
    size = smallest
    while size < n:
        size *= 2
    return min(size, limit)


def bucket_sizes(smallest: int, limit: int) -> list[int]:
    """Every length `bucket` gives for 1 … limit valid positions, ascending."""
    sizes = [min(smallest, limit)]
    while sizes[-1] < limit:
        sizes.append(min(2 * sizes[-1], limit))
    return sizes


class FastEngine:
    name: BackendName = "fast"
    supports_prompts = True

    def __init__(
        self,
        bundle: MusicgenBundle,
        conditioner: TextConditioner,
        window_seconds: int,
        compile_step: bool = False,
        buckets: Buckets | None = None,
        quantize: Quantize = "none",
    ) -> None:
        """`buckets`: round attention lengths up to these buckets (always on CUDA, where each bucket is a captured
        graph; default `Buckets()` there); without, eager steps attend to exactly what exists. `quantize`: "int8"
        stores the decoder's matrices as int8 with one scale per output row."""
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
        device, dtype, dim = bundle.device, bundle.decoder_dtype or bundle.dtype, config.hidden_size
        self.dtype, self.quantize = dtype, quantize
        self.decoder = MusicgenDecoder.from_transformers(bundle.take_decoder(), config).to(dtype)
        if quantize == "int8":
            quantize_int8(self.decoder)
        self.attention_dtype = resolve_attention_dtype(dtype, device)
        self.decoder.setup_cache(2, self.length, self.attention_dtype)  # row 0 conditional, row 1 unconditional (CFG)
        self.buckets = Buckets() if buckets is None and device.type == "cuda" else buckets
        n_head, head_dim, text_len = (
            config.num_attention_heads,
            dim // config.num_attention_heads,
            conditioner.max_tokens,
        )
        self.cross = [
            (torch.zeros(2, n_head, text_len, head_dim, device=device, dtype=self.attention_dtype),
             torch.zeros(2, n_head, text_len, head_dim, device=device, dtype=self.attention_dtype))
            for _ in range(config.num_hidden_layers)
        ]  # fmt: skip
        self.cross_mask = torch.zeros(2, 1, 1, text_len, dtype=torch.bool, device=device)
        self.text_len = text_len  # cross-attention slots the current request attends to (its tokens, or their bucket)
        self.sequence = torch.full((1, self.num_codebooks, self.length), self.start_id, device=device)
        self.valid = torch.zeros(self.num_codebooks, self.length, dtype=torch.bool, device=device)
        self.forced = torch.zeros(self.num_codebooks, self.length, dtype=torch.bool, device=device)  # prompt slots
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.cfg_coef = torch.tensor(3.0, device=device)
        self.temperature = torch.tensor(1.0, device=device)
        self.top_k = torch.tensor(250, device=device)
        self.top_p = torch.tensor(0.0, device=device)
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}  # (kv_len, text_len) → the step captured
        self.step = self._step
        if device.type == "cuda":
            self._capture(compile_step)

    def attended(self, pos: int) -> int:
        """Cache positions the step at `pos` reads: 0 … pos, rounded up to its bucket when bucketing."""
        if self.buckets is None:
            return pos + 1
        return bucket(pos + 1, self.buckets.kv, self.length)

    def _capture(self, compile_step: bool) -> None:
        """Warm up and capture the step once per (KV length, text length) bucket; with `compile_step`, fuse it with
        torch.compile first (at start-up), and fall back to the plain step if compiling fails on this machine."""
        assert self.buckets is not None
        started = time.perf_counter()
        free_before = torch.cuda.mem_get_info()[0]
        if compile_step:
            # Inductor fuses the step's many small kernels (norms, residual adds, sampling); the graphs then replay
            # the fused kernels. The lengths are Python ints, so a new bucket recompiles; after the second, dynamo
            # treats them as symbolic and the remaining buckets reuse that compilation.
            self.step = torch.compile(self._step, fullgraph=True)
            try:
                self._record_all()
            except Exception:
                log.warning("torch.compile failed; capturing the uncompiled decode step instead", exc_info=True)
                self.step = self._step
                self.graphs.clear()
        if not self.graphs:
            self._record_all()
        seconds = time.perf_counter() - started
        used = (free_before - torch.cuda.mem_get_info()[0]) / 2**20
        compiled = " (compiled)" if self.step is not self._step else ""
        log.info(
            "captured the decode step%s in %d CUDA graphs (KV lengths %s × text lengths %s) in %.1f s, using %.0f MiB",
            compiled,
            len(self.graphs),
            bucket_sizes(self.buckets.kv, self.length),
            bucket_sizes(self.buckets.text, self.conditioner.max_tokens),
            seconds,
            used,
        )

    @torch.no_grad()
    def _step(self, kv_len: int, text_len: int) -> None:
        """Decode position pos, write the sampled tokens at pos + 1 (pad where the delay pattern says) and advance.
        Attends to the first `kv_len` cache positions (> pos) and the first `text_len` text slots."""
        tokens = self.sequence.index_select(2, self.pos).expand(2, -1, -1)  # [2, K, 1]
        cross = [(k[:, :, :text_len], v[:, :, :text_len]) for k, v in self.cross]
        logits = self.decoder(tokens, self.pos, kv_len, cross, self.cross_mask[..., :text_len])[:, :, 0]  # [2, K, V]
        sampled = sample_next(logits[:1], logits[1:], self.cfg_coef, self.temperature, self.top_k, self.top_p)
        nxt = self.pos + 1
        keep = self.valid.index_select(1, nxt).T  # [1, K]
        sampled = torch.where(keep, sampled, self.start_id)
        known = self.forced.index_select(1, nxt).T  # [1, K]: the delayed tail of a prompt is kept, not sampled
        sampled = torch.where(known, self.sequence.index_select(2, nxt)[..., 0], sampled)
        self.sequence.index_copy_(2, nxt, sampled[..., None])
        self.pos.copy_(nxt)

    def _record_all(self) -> None:
        """One graph per bucket pair, all in one memory pool: replays never overlap and every step writes its
        results into the engine's own buffers, so a replay needs nothing another graph's left in the pool."""
        assert self.buckets is not None
        self.pool = torch.cuda.graph_pool_handle()
        for kv_len in bucket_sizes(self.buckets.kv, self.length):
            for text_len in bucket_sizes(self.buckets.text, self.conditioner.max_tokens):
                self.graphs[kv_len, text_len] = self._record(kv_len, text_len)

    def _record(self, kv_len: int, text_len: int) -> torch.cuda.CUDAGraph:
        self.cross_mask[..., 0] = True  # warm up on a well-formed input: no fully masked attention row
        self.pos.zero_()  # the warm-up steps advance it; keep them inside the cache
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.step(kv_len, text_len)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.step(kv_len, text_len)
        torch.cuda.synchronize()
        return graph

    @torch.no_grad()
    def _prepare(self, params: GenerationParams, frames: int, prompt: Tensor | None) -> int:
        """Load one window into the static buffers and prefill its prompt; returns the first decode position."""
        hidden, mask = self.conditioner.encode(params.description)  # [1, S, C], [1, S]
        s = hidden.shape[1]
        limit = self.conditioner.max_tokens
        self.text_len = s if self.buckets is None else bucket(s, self.buckets.text, limit)
        text = torch.zeros(2, self.text_len, hidden.shape[-1], device=hidden.device, dtype=self.dtype)
        text[0, :s] = hidden[0]  # the unconditional stream sees zeros, as in MusicGen's CFG
        for (k_buf, v_buf), (k, v) in zip(self.cross, self.decoder.cross_keys_values(text), strict=True):
            k_buf[:, :, : self.text_len].copy_(k)
            v_buf[:, :, : self.text_len].copy_(v)
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
            cross = [(k[:, :, : self.text_len], v[:, :, : self.text_len]) for k, v in self.cross]
            positions = torch.arange(given, device=tokens.device)
            self.decoder(tokens, positions, self.attended(given - 1), cross, self.cross_mask[..., : self.text_len])
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
        self._settled(progress, first, frames, first)  # the prompt's frames
        if not self.graphs:
            for t in range(steps):
                self.step(self.attended(first + t), self.text_len)
                progress.advance(1)
                self._settled(progress, first + t + 1, frames, first)
                progress.stop_if_cancelled()
        else:
            self._replay(first, steps, frames, progress)
        return undelay(self.sequence[0], frames, self.channels)

    def _settled(self, progress: Progress, last_position: int, frames: int, given: int) -> None:
        """Tell `progress` which frames are final once the sequence is written up to `last_position` (the `given`
        prompt frames are, whole, from the start)."""
        complete = max(given, complete_frames(last_position, frames, self.num_codebooks, self.channels))
        progress.frames_ready(complete, lambda start: undelay(self.sequence[0], complete, self.channels)[:, start:])

    def _replay(self, first: int, steps: int, frames: int, progress: Progress) -> None:
        """Keep one chunk of steps queued on the GPU while reporting the chunk before it; the host counts positions
        itself, so choosing each step's graph never waits on the GPU."""
        in_flight: deque[tuple[torch.cuda.Event, int]] = deque()
        chunk, done = 0, 0
        for t in range(steps):
            self.graphs[self.attended(first + t), self.text_len].replay()
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
                done += finished
                progress.advance(finished)
                self._settled(progress, first + done, frames, first)
                progress.stop_if_cancelled()
        for event, finished in in_flight:
            event.synchronize()
            done += finished
            progress.advance(finished)
            self._settled(progress, first + done, frames, first)
            progress.stop_if_cancelled()
