"""The fast decode loop: text → audio codes, one static-shape step at a time, CUDA-graph replayed on GPU.

Everything a step touches is allocated once, when the engine is built, for `slots` of the longest request the
server accepts: the KV cache, the cross-attention keys/values, the delayed token sequences and the sampling
parameters, one row pair (conditional, unconditional) per slot. A step reads each slot's position from a device
tensor and advances it itself, so on CUDA the whole step (decoder, CFG mix, sampling, delay pattern) is one graph
replay and the host never waits on the GPU except to report progress. The steps are taken by `decode_loop`, which
batches every running generation into them; with one slot that is one generation at a time.

A step attends only to what exists: the cache positions up to the furthest slot's and the real text tokens. Eager
with one slot (on CPU) it slices exactly; a captured graph has static shapes, so on CUDA one graph is captured per
length bucket (`Buckets`) and the host, which counts the steps itself, replays the graph of the bucket the
positions fall in. With several slots the lengths are bucketed on a CPU too: a slot's results then do not depend on
how far the others are (attention over a different length rounds differently), so a seeded or greedy request gives
the same codes alone or beside others.
"""

import logging
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from musicgen_api.config import Quantize
from musicgen_api.engine.backend import BackendName
from musicgen_api.engine.conditioning import TextConditioner
from musicgen_api.engine.decode_loop import DecodeLoop, Mark, Seat
from musicgen_api.engine.decoder import MusicgenDecoder
from musicgen_api.engine.delay import (
    complete_frames,
    delayed_positions,
    sequence_length,
    undelay,
    valid_positions,
)
from musicgen_api.engine.loading import MusicgenBundle, dtype_name, free_memory_bytes, resolve_attention_dtype
from musicgen_api.engine.quantize import fbgemm_available, pack_for_cpu, quantize_int8
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


@dataclass(frozen=True)
class Window:
    """One window of a generation as it joins the decode loop: everything its slot's buffers are loaded with."""

    params: GenerationParams
    frames: int  # frames of the window, its prompt included
    prompt: Tensor | None  # [K, P] codes it starts from
    cross: list[tuple[Tensor, Tensor]]  # the text's cross-attention keys/values [2, H, text_len, D] per layer
    text_mask: Tensor  # [S] bool: the description's real tokens
    text_len: int  # text slots its steps attend to (its tokens, or their bucket)
    generator: torch.Generator  # its sampling noise


# Memory a server keeps free beside the slots' caches: the step's activations, the CUDA graphs, the EnCodec decode,
# and MultiBand Diffusion's U-Nets (2.3 GB in float16) when they arrive.
HEADROOM_BYTES = {"cuda": 3 * 2**30, "cpu": 2**30}


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
        slots: int = 1,
    ) -> None:
        """`buckets`: round attention lengths up to these buckets (default `Buckets()` on CUDA, where each bucket is
        a captured graph, and with several slots); without, eager steps attend to exactly what exists. `quantize`:
        "int8" stores the decoder's matrices as int8 with one scale per output row. `slots`: generations that decode
        together (each has its own caches, allocated here; too many for the device's memory is a ValueError)."""
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
        device, weights, dim = bundle.device, bundle.decoder_dtype or bundle.dtype, config.hidden_size
        # On x86 CPUs float16 and int8 weights are fbgemm's packed matrices, multiplied with float32 activations.
        packing = device.type == "cpu" and fbgemm_available() and (quantize == "int8" or weights == torch.float16)
        self.dtype = torch.float32 if packing else weights  # the decoder's activations and other parameters
        self.weights = "int8" if quantize == "int8" else dtype_name(weights)  # its matrices, as stored
        self.quantize, self.slots = quantize, slots
        self.attention_dtype = resolve_attention_dtype(self.dtype, device)
        n_head, head_dim, text_len = (
            config.num_attention_heads,
            dim // config.num_attention_heads,
            conditioner.max_tokens,
        )
        self._check_memory(config.num_hidden_layers * 2 * 2 * n_head * (self.length + text_len) * head_dim)
        self.decoder = MusicgenDecoder.from_transformers(bundle.take_decoder(), config).to(self.dtype)
        if packing:
            pack_for_cpu(self.decoder, "int8" if quantize == "int8" else "float16")
            log.info("fast decoder: %s weights packed for fbgemm, float32 activations", self.weights)
        elif quantize == "int8":
            quantize_int8(self.decoder)
        rows = 2 * slots  # slot n: row 2n conditional, row 2n + 1 unconditional (CFG)
        self.decoder.setup_cache(rows, self.length, self.attention_dtype)
        self.buckets = Buckets() if buckets is None and (device.type == "cuda" or slots > 1) else buckets
        self.cross = [
            (torch.zeros(rows, n_head, text_len, head_dim, device=device, dtype=self.attention_dtype),
             torch.zeros(rows, n_head, text_len, head_dim, device=device, dtype=self.attention_dtype))
            for _ in range(config.num_hidden_layers)
        ]  # fmt: skip
        self.cross_mask = torch.zeros(rows, 1, 1, text_len, dtype=torch.bool, device=device)
        self.cross_mask[..., 0] = True  # an idle slot attends to one (zero) slot: finite, never a fully masked row
        k, length = self.num_codebooks, self.length
        self.sequence = torch.full((slots, k, length), self.start_id, device=device)
        self.valid = torch.zeros(slots, k, length, dtype=torch.bool, device=device)
        self.forced = torch.zeros(slots, k, length, dtype=torch.bool, device=device)  # prompt slots
        self.pos = torch.zeros(slots, dtype=torch.long, device=device)
        self.active = torch.zeros(slots, dtype=torch.bool, device=device)  # slots the steps advance
        self.cfg_coef = torch.full((slots, 1, 1), 3.0, device=device)
        self.temperature = torch.ones(slots, 1, 1, device=device)
        self.top_k = torch.full((slots, 1, 1), 250, device=device)
        self.top_p = torch.zeros(slots, 1, 1, device=device)
        self.race = torch.ones(slots, k, self.decoder.args.codebook_size, device=device)  # each step's Exp(1) noise
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}  # (kv_len, text_len) → the step captured
        self.step_fn = self._step
        self.chunk = 1  # steps between marks: eager steps are done when they return
        if device.type == "cuda":
            self._capture(compile_step)
            self.chunk = PROGRESS_EVERY
        self.loop: DecodeLoop[Window] = DecodeLoop(self, slots)

    def _check_memory(self, elements_per_slot: int) -> None:
        """Refuse, before allocating anything, more slots than the device's free memory holds beside the rest."""
        per_slot = elements_per_slot * torch.finfo(self.attention_dtype).bits // 8
        device = self.bundle.device
        usable = free_memory_bytes(device) - HEADROOM_BYTES.get(device.type, 2**30)
        fits = max(0, usable // per_slot)
        log.info(
            "%d slot(s) of %d positions: %.0f MiB of KV cache (%.1f MiB per slot)",
            self.slots,
            self.length,
            self.slots * per_slot / 2**20,
            per_slot / 2**20,
        )
        if self.slots > fits:
            fit = f"the largest that fits is --slots {fits}" if fits else "not even one fits; use a shorter --window"
            raise ValueError(
                f"--slots {self.slots} needs {self.slots * per_slot / 2**30:.1f} GiB of KV cache and {device} has "
                f"{max(usable, 0) / 2**30:.1f} GiB free beside the model; {fit}"
            )

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
            self.step_fn = torch.compile(self._step, fullgraph=True)
            try:
                self._record_all()
            except Exception:
                log.warning("torch.compile failed; capturing the uncompiled decode step instead", exc_info=True)
                self.step_fn = self._step
                self.graphs.clear()
        if not self.graphs:
            self._record_all()
        seconds = time.perf_counter() - started
        used = (free_before - torch.cuda.mem_get_info()[0]) / 2**20
        compiled = " (compiled)" if self.step_fn is not self._step else ""
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
        """Decode every slot's position, write the sampled tokens one position on (pad where the delay pattern says)
        and advance the active slots. Attends to the first `kv_len` cache positions (> every active position) and
        the first `text_len` text slots; parked slots compute too (static shapes) but change nothing."""
        slots, k = self.pos.shape[0], self.num_codebooks
        at = self.pos[:, None, None].expand(slots, k, 1)
        tokens = self.sequence.gather(2, at).repeat_interleave(2, dim=0)  # [2N, K, 1]
        positions = self.pos.repeat_interleave(2)[:, None]  # [2N, 1]
        cross = [(ck[:, :, :text_len], cv[:, :, :text_len]) for ck, cv in self.cross]
        logits = self.decoder(tokens, positions, kv_len, cross, self.cross_mask[..., :text_len])[:, :, 0]  # [2N, K, V]
        sampled = sample_next(
            logits[0::2], logits[1::2], self.cfg_coef, self.temperature, self.top_k, self.top_p, self.race
        )  # [N, K]
        nxt = (self.pos + 1).clamp_max(self.length - 1)  # a parked slot may sit at the last position
        at = nxt[:, None, None].expand(slots, k, 1)
        sampled = torch.where(self.valid.gather(2, at)[..., 0], sampled, self.start_id)
        kept = self.forced.gather(2, at)[..., 0] | ~self.active[:, None]  # a prompt's delayed tail; parked slots
        sampled = torch.where(kept, self.sequence.gather(2, at)[..., 0], sampled)
        self.sequence.scatter_(2, at, sampled[..., None])
        self.pos.copy_(torch.where(self.active, nxt, self.pos))

    def _record_all(self) -> None:
        """One graph per bucket pair, all in one memory pool: replays never overlap and every step writes its
        results into the engine's own buffers, so a replay needs nothing another graph's left in the pool."""
        assert self.buckets is not None
        self.pool = torch.cuda.graph_pool_handle()
        for kv_len in bucket_sizes(self.buckets.kv, self.length):
            for text_len in bucket_sizes(self.buckets.text, self.conditioner.max_tokens):
                self.graphs[kv_len, text_len] = self._record(kv_len, text_len)

    def _record(self, kv_len: int, text_len: int) -> torch.cuda.CUDAGraph:
        self.pos.zero_()  # the warm-up steps advance it; keep them inside the cache
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.step_fn(kv_len, text_len)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.step_fn(kv_len, text_len)
        torch.cuda.synchronize()
        return graph

    @torch.no_grad()
    def _window(
        self, params: GenerationParams, frames: int, prompt: Tensor | None, generator: torch.Generator
    ) -> Window:
        """Encode the description and its cross-attention keys/values (on the worker's own thread, before it joins)."""
        hidden, mask = self.conditioner.encode(params.description)  # [1, S, C], [1, S]
        s = hidden.shape[1]
        text_len = s if self.buckets is None else bucket(s, self.buckets.text, self.conditioner.max_tokens)
        text = torch.zeros(2, text_len, hidden.shape[-1], device=hidden.device, dtype=self.dtype)
        text[0, :s] = hidden[0]  # the unconditional stream sees zeros, as in MusicGen's CFG
        return Window(params, frames, prompt, self.decoder.cross_keys_values(text), mask[0], text_len, generator)

    @torch.no_grad()
    def install(self, seat: Seat[Window]) -> None:
        """Load the window into its slot's buffers and prefill its prompt (by the loop's leader, between steps)."""
        w, n = seat.request, seat.index
        rows = slice(2 * n, 2 * n + 2)
        for (k_buf, v_buf), (k, v) in zip(self.cross, w.cross, strict=True):
            k_buf[rows, :, : w.text_len].copy_(k)
            v_buf[rows, :, : w.text_len].copy_(v)
        self.cross_mask[rows] = False
        self.cross_mask[rows, 0, 0, : w.text_mask.shape[0]] = w.text_mask
        for layer in self.decoder.layers:
            assert layer.cache is not None
            layer.cache.reset(rows)
        self.valid[n] = valid_positions(w.frames, self.length, self.num_codebooks, self.channels)
        self.sequence[n] = self.start_id
        self.forced[n] = False
        self.cfg_coef[n] = w.params.cfg_coef
        self.temperature[n] = w.params.temperature
        self.top_k[n] = min(w.params.top_k, self.decoder.args.codebook_size)
        self.top_p[n] = w.params.top_p
        given = seat.first
        if w.prompt is not None and given:
            slots = delayed_positions(given, self.num_codebooks, self.channels).to(self.sequence.device)
            self.sequence[n].scatter_(1, slots, w.prompt.to(self.sequence.device))
            self.forced[n].scatter_(1, slots, True)
            tokens = self.sequence[n : n + 1, :, :given].expand(2, -1, -1)  # positions 0 .. P-1, all known
            cross = [(k[rows, :, : w.text_len], v[rows, :, : w.text_len]) for k, v in self.cross]
            positions = torch.arange(given, device=tokens.device).expand(2, -1)
            mask = self.cross_mask[rows, ..., : w.text_len]
            self.decoder(tokens, positions, self.attended(given - 1), cross, mask, rows=rows)
        self.pos[n] = given
        self.active[n] = True

    def step(self, running: list[Seat[Window]]) -> None:
        """One step of every running window: the bucket the furthest position and the longest text fall in."""
        kv_len = self.attended(max(seat.position for seat in running))
        text_len = max(seat.request.text_len for seat in running)
        for seat in running:
            self.race[seat.index].exponential_(1, generator=seat.request.generator)
        if self.graphs:
            self.graphs[kv_len, text_len].replay()
        else:
            self.step_fn(kv_len, text_len)

    def park(self, seat: Seat[Window]) -> None:
        self.active[seat.index] = False

    def mark(self) -> Mark | None:
        if not self.graphs:
            return None
        event = torch.cuda.Event()
        event.record()
        return event

    def generate(
        self,
        params: GenerationParams,
        progress: Progress,
        prompt: Tensor | None = None,
        frames: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        frames = params.frames if frames is None else frames
        if frames > self.max_frames:
            raise ValueError(f"{frames} frames are longer than this engine's window of {self.max_frames}")
        if generator is None:
            generator = torch.Generator(self.bundle.device)
            generator.seed()
        first = 0 if prompt is None else prompt.shape[1]
        steps = sequence_length(frames, self.num_codebooks, self.channels) - 1 - first
        seat = Seat(self._window(params, frames, prompt, generator), first, steps)
        self.loop.join(seat)
        try:
            self._settled(progress, seat.index, first, frames, first)  # the prompt's frames
            done = 0
            while done < steps:
                now = self.loop.advance(seat, done)
                progress.advance(now - done)
                done = now
                self._settled(progress, seat.index, first + done, frames, first)
                progress.stop_if_cancelled()
            return undelay(self.sequence[seat.index], frames, self.channels).clone()
        finally:
            self.loop.leave(seat)

    def _settled(self, progress: Progress, slot: int, last_position: int, frames: int, given: int) -> None:
        """Tell `progress` which frames are final once the slot's sequence is written up to `last_position` (the
        `given` prompt frames are, whole, from the start)."""
        complete = max(given, complete_frames(last_position, frames, self.num_codebooks, self.channels))
        sequence = self.sequence[slot]
        progress.frames_ready(complete, lambda start: undelay(sequence, complete, self.channels)[:, start:])
