"""Benchmark: transformers' `generate` against the fast engine, same process, same inputs, end to end.

    python -m musicgen_api.bench --models small medium large          # on a GPU
    python -m musicgen_api.bench --models tiny --device cpu --duration 5
    python -m musicgen_api.bench --models --mbd --duration 30                # MultiBand Diffusion alone
    python -m musicgen_api.bench --models tiny --device cpu --slots 1 2 4 8 16   # several generations at once

Random weights of the real shapes (`bench.random_model`), so no download is needed; decoding cost does not depend on
the weights' values. Each run prints one JSON line: text in, WAV bytes out, wall time synchronised with the device.
"""

import argparse
import dataclasses
import functools
import io
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import soundfile
import torch
from torch import Tensor

from musicgen_api.audio.codec import EncodecCodec
from musicgen_api.audio.mbd import MultiBandDiffusion, unet_dtype
from musicgen_api.audio.wav import to_wav_bytes
from musicgen_api.bench import fidelity
from musicgen_api.bench.random_model import build_random_codec, build_random_mbd, build_random_musicgen, build_tokenizer
from musicgen_api.config import DType, Quantize
from musicgen_api.engine.conditioning import TextConditioner
from musicgen_api.engine.delay import sequence_length
from musicgen_api.engine.fast import FastEngine
from musicgen_api.engine.loading import (
    MusicgenBundle,
    dtype_name,
    resolve_decoder_dtype,
    resolve_device,
    resolve_dtype,
)
from musicgen_api.engine.quantize import PackedLinear
from musicgen_api.generation import AudioChunk, GenerationParams, Unwatched
from musicgen_api.pipeline import MusicPipeline

PROMPT = "80s pop track with bassy drums and synth"
GIB = 2**30


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    sync(device)
    started = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - started, result


def emit(record: dict[str, Any], out: Any) -> None:
    line = json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()})
    print(line, flush=True)  # noqa: T201 (a benchmark prints its figures)
    if out is not None:
        out.write(line + "\n")
        out.flush()


def tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def reference_run(bundle: MusicgenBundle, duration: int) -> tuple[float, int]:
    """transformers as its users call it: processor-style inputs → generate (which also decodes) → WAV."""
    model, tokenizer = bundle.model, bundle.tokenizer
    steps = sequence_length(duration * 50, bundle.num_codebooks, bundle.audio_channels) - 1

    def run() -> bytes:
        inputs = tokenizer([PROMPT], return_tensors="pt", padding=True).to(bundle.device)
        audio = model.generate(**inputs, do_sample=True, guidance_scale=3.0, top_k=250, max_new_tokens=steps)
        return to_wav_bytes(audio[0], bundle.sampling_rate)

    return timed(bundle.device, run)[0], steps


def memory_gib() -> dict[str, float]:
    """This process's resident memory now and its high-water mark so far (Linux), in GiB."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    kib = {name: float(fields[name].split()[0]) for name in ("VmRSS", "VmHWM") if name in fields}
    return {"rss_gib": kib.get("VmRSS", 0.0) / 2**20, "peak_rss_gib": kib.get("VmHWM", 0.0) / 2**20}


def profile_step(engine: FastEngine, steps: int = 20) -> dict[str, Any]:
    """GPU time per decode step by kernel (the step run outside its graph, so each kernel is visible)."""
    engine.generate(GenerationParams(PROMPT, 1), Unwatched())  # a realistic state to step from
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step_fn(engine.attended(int(engine.pos[0])), engine.buckets.text if engine.buckets else 64)
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        device_us = getattr(event, "device_time_total", 0) or getattr(event, "cuda_time_total", 0)
        if device_us > 0:
            rows.append((event.key[:90], round(device_us / steps, 1), round(event.count / steps, 1)))
    rows.sort(key=lambda row: -row[1])
    kernels = sum(count for _, _, count in rows)
    return {"gpu_us_per_step": round(sum(us for _, us, _ in rows), 1), "kernels_per_step": kernels, "top": rows[:25]}


def fast_runs(
    bundle: MusicgenBundle,
    conditioner: TextConditioner,
    duration: int,
    compile_step: bool,
    runs: int,
    quantize: Quantize = "none",
    profile_steps: bool = False,
) -> dict[str, Any]:
    device = bundle.device
    startup, engine = timed(
        device, lambda: FastEngine(bundle, conditioner, duration, compile_step=compile_step, quantize=quantize)
    )
    pipeline = MusicPipeline(bundle, engine, conditioner)
    params = GenerationParams(PROMPT, duration)
    ignore = Unwatched()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    first, _ = timed(device, lambda: pipeline.render(params, ignore))
    walls = [timed(device, lambda: pipeline.render(params, ignore))[0] for _ in range(runs)]
    transient = (torch.cuda.max_memory_allocated() - before) if device.type == "cuda" else 0
    text_s, _ = timed(device, lambda: conditioner.encode(PROMPT))
    codes = torch.randint(0, engine.decoder.args.codebook_size, (engine.num_codebooks, params.frames), device=device)
    codec_s, _ = timed(device, lambda: pipeline.codec.decode(codes))
    model = bundle.model
    cache = sum(tensor_bytes((layer.cache.k, layer.cache.v)) for layer in engine.decoder.layers if layer.cache)
    # The decoder's buffers hold int8 weights (--quantize int8) and the KV caches, which count under kv; fbgemm's
    # packed matrices (CPU) are not tensors and say their size.
    weights = tensor_bytes(engine.decoder.parameters()) + tensor_bytes(engine.decoder.buffers()) - cache
    weights += sum(m.weight_bytes for m in engine.decoder.modules() if isinstance(m, PackedLinear))
    weights += tensor_bytes(model.text_encoder.parameters()) + tensor_bytes(model.audio_encoder.parameters())
    kv = cache + tensor_bytes(t for pair in engine.cross for t in pair)
    profile = profile_step(engine) if profile_steps and device.type == "cuda" else None
    wall = statistics.median(walls)
    return {
        "profile": profile,
        "decoder_dtype": dtype_name(engine.dtype),
        "decoder_weights": engine.weights,
        "attention_dtype": dtype_name(engine.attention_dtype),
        "quantize": quantize,
        "graphs": len(engine.graphs),
        "startup_s": startup,
        "first_request_s": first,
        "wall_s": wall,
        "wall_min_s": min(walls),
        "tokens_s": wall - text_s - codec_s,  # the decode steps: the rest of the request
        "text_encode_s": text_s,
        "codec_decode_s": codec_s,
        "weights_gib": weights / GIB,
        "kv_gib": kv / GIB,
        "peak_gpu_gib": (weights + kv + transient) / GIB if device.type == "cuda" else None,
        "peak_over_weights_kv": (weights + kv + transient) / (weights + kv) if device.type == "cuda" else None,
        **memory_gib(),
    }


# name: (compile the step, quantize, dtype override); CUDA: graph, compiled; CPU: eager, float32, bfloat16, int8
VARIANTS: dict[str, tuple[bool, Quantize, DType | None]] = {
    "graph": (False, "none", None),
    "compiled": (True, "none", None),
    "eager": (False, "none", None),
    "float32": (False, "none", "float32"),
    "bfloat16": (False, "none", "bfloat16"),
    "int8": (False, "int8", None),
}


def bench_model(name: str, args: argparse.Namespace, out: Any) -> None:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)

    def random_bundle(requested: DType = args.dtype) -> MusicgenBundle:
        """A fresh model for each backend: a FastEngine takes the decoder's weights out of its bundle."""
        model = build_random_musicgen(name, device=str(device), dtype=dtype)
        decoder_dtype = resolve_decoder_dtype(requested, device)
        return MusicgenBundle(
            model=model, tokenizer=build_tokenizer(), device=device, dtype=dtype, decoder_dtype=decoder_dtype
        )

    build_s, bundle = timed(device, random_bundle)
    conditioner = TextConditioner(bundle, max_tokens=args.text_tokens)
    base = {"model": name, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "dtype": dtype_name(dtype)}  # fmt: skip
    steps = sequence_length(args.duration * 50, bundle.num_codebooks, bundle.audio_channels) - 1

    reference_ms_per_step = None
    reference_wall = None
    if args.reference_duration > 0:
        # transformers' first pass over a sequence length pays one-time costs (kernels, allocator, caches sized to
        # it): the cold figure is that pass, the warm one (the comparison) a second pass of the same length.
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        cold, ref_steps = reference_run(bundle, args.reference_duration)
        wall, _ = reference_run(bundle, args.reference_duration)
        reference_ms_per_step = 1000 * wall / ref_steps
        reference_wall = wall if args.reference_duration == args.duration else None
        emit({**base, "backend": "transformers", "audio_seconds": args.reference_duration, "steps": ref_steps,
              "wall_s": wall, "cold_wall_s": cold, "ms_per_step": reference_ms_per_step,
              "x_realtime": args.reference_duration / wall,
              "peak_gpu_gib": torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else None,
              "model_build_s": build_s, **memory_gib()}, out)  # fmt: skip

    variants = args.variants or (["graph", "compiled"] if device.type == "cuda" else ["eager", "int8"])
    for variant in variants:
        compile_step, quantize, dtype_override = VARIANTS[variant]
        if time.perf_counter() - START > args.budget_s:
            emit({**base, "backend": f"fast-{variant}", "skipped": "time budget spent"}, out)
            continue
        if not bundle.has_decoder or dtype_override:
            del bundle, conditioner
            if device.type == "cuda":
                torch.cuda.empty_cache()
            bundle = random_bundle(dtype_override or args.dtype)
            conditioner = TextConditioner(bundle, max_tokens=args.text_tokens)
        try:
            figures = fast_runs(bundle, conditioner, args.duration, compile_step, args.runs, quantize, args.profile)
        except Exception as exc:  # report and go on: one failing variant must not lose the others' figures
            emit({**base, "backend": f"fast-{variant}", "error": f"{type(exc).__name__}: {exc}"[:500]}, out)
            continue
        ms_per_step = 1000 * figures["wall_s"] / steps
        emit({**base, "backend": f"fast-{variant}", "audio_seconds": args.duration, "steps": steps, **figures,
              "ms_per_step": ms_per_step, "x_realtime": args.duration / figures["wall_s"],
              "speedup_vs_transformers": reference_wall / figures["wall_s"] if reference_wall else None,
              "step_speedup_vs_transformers": reference_ms_per_step / ms_per_step if reference_ms_per_step else None,
              }, out)  # fmt: skip
    del bundle, conditioner
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_fidelity(name: str, args: argparse.Namespace, out: Any) -> None:
    """float16, bfloat16 and int8 decoders against float32 on one model's random weights (see `bench.fidelity`)."""
    device = resolve_device(args.device)
    seconds = min(args.duration, 10)
    params = GenerationParams(PROMPT, seconds, seed=0)
    variants: list[tuple[str, torch.dtype, Quantize]] = [
        ("float32", torch.float32, "none"),
        ("float16", torch.float16, "none"),  # on a CPU: fbgemm's packed float16 weights, float32 activations
        ("bfloat16", torch.bfloat16, "none"),
        ("int8", resolve_decoder_dtype("auto", device), "int8"),
    ]
    reference: Tensor | None = None
    sequence: Tensor | None = None
    for variant, decoder_dtype, quantize in variants:
        record: dict[str, Any] = {"model": name, "device": str(device), "backend": "fidelity", "variant": variant,
                                  "audio_seconds": seconds, "quantize": quantize}  # fmt: skip
        try:
            model = build_random_musicgen(name, device=str(device), dtype=torch.float32, seed=0)
            bundle = MusicgenBundle(model=model, tokenizer=build_tokenizer(), device=device, dtype=torch.float32,
                                    decoder_dtype=decoder_dtype)  # fmt: skip
            engine = FastEngine(bundle, TextConditioner(bundle, args.text_tokens), seconds, quantize=quantize)
            if sequence is None:
                sequence = fidelity.reference_sequence(engine, params)
            log_probs = fidelity.next_token_log_probs(engine, params, sequence)
            record["decoder_dtype"] = dtype_name(engine.dtype)
            record["decoder_weights"] = engine.weights
            record["attention_dtype"] = dtype_name(engine.attention_dtype)
            if reference is None:
                reference = log_probs
                codec = EncodecCodec(bundle.codec, bundle.audio_channels)
                record.update(fidelity.codec_fidelity(codec, bundle.num_codebooks, params.frames))
            else:
                record.update(fidelity.compare(reference, log_probs, params, bundle.audio_channels))
        except Exception as exc:  # report and go on, as the timing runs do
            record["error"] = f"{type(exc).__name__}: {exc}"[:500]
        emit(record, out)
        if device.type == "cuda":
            torch.cuda.empty_cache()


class _FirstAudio(Unwatched):
    """Notes when the first audio chunk arrives and keeps every chunk."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first: float | None = None
        self.chunks: list[AudioChunk] = []

    def audio(self, chunk: AudioChunk) -> None:
        if self.first is None:
            self.first = time.perf_counter() - self.started
        self.chunks.append(chunk)


def served_model(name: str, args: argparse.Namespace) -> tuple[MusicgenBundle, TextConditioner]:
    """Fresh random weights of `name`'s shape, in the precisions a server started with --dtype would use."""
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model = build_random_musicgen(name, device=str(device), dtype=dtype)
    bundle = MusicgenBundle(model=model, tokenizer=build_tokenizer(), device=device, dtype=dtype,
                            decoder_dtype=resolve_decoder_dtype(args.dtype, device))  # fmt: skip
    return bundle, TextConditioner(bundle, max_tokens=args.text_tokens)


def bench_stream(name: str, args: argparse.Namespace, out: Any) -> None:
    """`stream_audio`: time to first audio, what the chunk decodes add, and how the joined chunks compare with the
    finished piece (levels left alone) on this model's codec."""
    bundle, conditioner = served_model(name, args)
    device = bundle.device
    engine = FastEngine(bundle, conditioner, min(args.duration, 30), compile_step=device.type == "cuda")
    pipeline = MusicPipeline(bundle, engine, conditioner)
    plain = GenerationParams(PROMPT, args.duration, seed=0, normalization="none")
    streamed = dataclasses.replace(plain, stream_audio=True)
    pipeline.render(streamed, Unwatched())  # warm-up: every length the chunks and the piece decode
    walls, stream_walls, firsts = [], [], []
    for _ in range(max(1, args.runs)):
        walls.append(timed(device, lambda: pipeline.render(plain, Unwatched()))[0])
        job = _FirstAudio()
        wall, done = timed(device, functools.partial(pipeline.render, streamed, job))
        stream_walls.append(wall)
        firsts.append(job.first)
    final = torch.from_numpy(soundfile.read(io.BytesIO(done.data), dtype="float64", always_2d=True)[0])
    joined = torch.cat([torch.frombuffer(bytearray(c.pcm), dtype=torch.int16) for c in job.chunks]).double() / 32767
    final = final.flatten()
    jumps = joined.diff().abs()
    edges = torch.tensor([round(c.offset * bundle.sampling_rate) * bundle.audio_channels for c in job.chunks[1:]])
    elsewhere = jumps.clone()
    elsewhere[edges - 1] = 0
    wall, stream_wall = statistics.median(walls), statistics.median(stream_walls)
    emit({"model": name, "device": str(device), "backend": "fast-stream", "audio_seconds": args.duration,
          "wall_s": wall, "stream_wall_s": stream_wall, "stream_overhead": stream_wall / wall - 1,
          "first_audio_s": statistics.median(f for f in firsts if f is not None), "chunks": len(job.chunks),
          "correlation": float(torch.corrcoef(torch.stack([joined, final]))[0, 1]),
          "max_abs_error": float((joined - final).abs().max()), "peak": float(final.abs().max()),
          "max_jump_at_chunk_edges": float(jumps[edges - 1].max()) if len(edges) else None,
          "max_jump_elsewhere": float(elsewhere.max()), "max_jump_in_final": float(final.diff().abs().max())},
         out)  # fmt: skip


def bench_slots(name: str, args: argparse.Namespace, out: Any) -> None:
    """`--slots N`: N simultaneous requests of --duration seconds each, end to end through the pipeline on N worker
    threads as the service runs them; throughput (seconds of audio per second) and each request's latency, against
    the one-slot figures of the same run."""
    device = resolve_device(args.device)
    solo: dict[str, float] = {}
    for slots in sorted(args.slots):
        try:
            figures = slots_run(name, slots, args)
        except ValueError as exc:  # more slots than the device holds
            emit({"model": name, "device": str(device), "slots": slots, "error": str(exc)}, out)
            break
        solo = solo or figures
        ratios = {"throughput_vs_1_slot": figures["audio_s_per_s"] / solo["audio_s_per_s"],
                  "latency_vs_1_slot": figures["latency_median_s"] / solo["latency_median_s"]}  # fmt: skip
        emit({"model": name, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "backend": "fast-slots", "slots": slots, "audio_seconds": args.duration, **figures,
              **(ratios if 1 in args.slots else {}), **memory_gib()}, out)  # fmt: skip
        if device.type == "cuda":
            torch.cuda.empty_cache()


def slots_run(name: str, slots: int, args: argparse.Namespace) -> dict[str, float]:
    """One engine of `slots` slots on fresh random weights: a warm-up round, then a timed one."""
    bundle, conditioner = served_model(name, args)
    device = bundle.device
    window = min(args.duration, 30)
    startup, engine = timed(
        device, lambda: FastEngine(bundle, conditioner, window, compile_step=device.type == "cuda", slots=slots)
    )
    pipeline = MusicPipeline(bundle, engine, conditioner, window=window)
    requests = [GenerationParams(f"{PROMPT}, take {i}", args.duration, seed=i) for i in range(slots)]
    latencies = [0.0] * slots

    def render(i: int) -> None:
        started = time.perf_counter()
        pipeline.render(requests[i], Unwatched())
        sync(device)
        latencies[i] = time.perf_counter() - started

    def all_at_once() -> None:
        threads = [threading.Thread(target=render, args=(i,)) for i in range(slots)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    all_at_once()  # warm-up: the same lengths, every bucket, every slot
    wall, _ = timed(device, all_at_once)
    return {"wall_s": wall, "audio_s_per_s": slots * args.duration / wall,
            "latency_median_s": statistics.median(latencies), "latency_max_s": max(latencies),
            "startup_s": startup, "graphs": len(engine.graphs)}  # fmt: skip


def bench_mbd(args: argparse.Namespace, out: Any) -> None:
    """MultiBand Diffusion of the published shape decoding `--duration` seconds of random codes: float32, then the
    U-Net precision the server uses on this device, with the error of the latter against float32."""
    device = resolve_device(args.device)
    codec = build_random_codec(args.mbd_codec, device=str(device))
    checkpoint = build_random_mbd(int(codec.config.codebook_dim or 0), hidden=args.mbd_hidden)
    mbd = MultiBandDiffusion(checkpoint, codec).to(device).eval()
    params = sum(p.numel() for band in mbd.bands for p in band.parameters())
    frames = args.duration * 50
    codes = torch.randint(0, int(codec.config.codebook_size), (1, 4, frames), device=device)
    reference = EncodecCodec(codec, 1).decode(codes[0])[:, None, :]
    exact: Tensor | None = None
    for dtype in dict.fromkeys((torch.float32, unet_dtype(device))):
        for band in mbd.bands:
            band.unet.to(dtype)
        marks: list[float] = []

        def on_call(marks: list[float] = marks) -> None:
            sync(device)
            marks.append(time.perf_counter())

        mbd.decode(codes[:, :, : min(frames, 50)], reference[..., : min(frames, 50) * 640], lambda: None)  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(0)  # the same noise for both precisions
        wall, decoded = timed(device, lambda: mbd.decode(codes, reference, on_call))
        start = marks[0] - (marks[1] - marks[0])  # the first pass's start, estimated from the second's length
        per_band = len(marks) // len(mbd.bands)
        ends = [marks[(i + 1) * per_band - 1] for i in range(len(mbd.bands))]
        band_seconds = [end - begin for begin, end in zip([start, *ends[:-1]], ends, strict=True)]
        exact = decoded if exact is None else exact
        error = (decoded - exact).float()
        snr = 10 * torch.log10(exact.pow(2).mean() / error.pow(2).mean()).item() if error.abs().max() > 0 else None
        emit({"model": f"mbd-hidden{args.mbd_hidden}", "device": torch.cuda.get_device_name() if device.type ==
              "cuda" else "cpu", "dtype": dtype_name(dtype), "server_default": dtype ==
              unet_dtype(device), "params_m": params / 1e6, "audio_seconds": args.duration, "unet_passes":
              len(marks), "wall_s": wall, "ms_per_pass": 1000 * wall / len(marks), "band_seconds":
              [round(b, 3) for b in band_seconds], "max_abs_vs_float32": error.abs().max().item(),
              "snr_db_vs_float32": snr, "peak_gpu_gib": torch.cuda.max_memory_allocated() / GIB
              if device.type == "cuda" else None}, out)  # fmt: skip


START = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m musicgen_api.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["small", "medium", "large"], help="small medium large tiny")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--duration", type=int, default=30, help="seconds of audio per fast-engine run")
    parser.add_argument("--reference-duration", type=int, default=None,
                        help="seconds for the transformers run (default: --duration; 0 skips it)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3, help="timed fast-engine runs after the first request")
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS),
                        help="fast-engine variants (default: graph compiled on CUDA, eager int8 on CPU)")  # fmt: skip
    parser.add_argument("--text-tokens", type=int, default=512, help="text-conditioning capacity, as the server's")
    parser.add_argument("--profile", action="store_true", help="add a per-kernel GPU profile of one decode step")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="start no new variant after this")
    parser.add_argument("--mbd", action="store_true", help="also time MultiBand Diffusion on --duration seconds")
    parser.add_argument("--mbd-hidden", type=int, default=48, help="MBD U-Net width (48 is the published shape)")
    parser.add_argument("--mbd-codec", default="small", help="codec shape the MBD is conditioned on (tiny on CPU)")
    parser.add_argument("--stream", action="store_true",
                        help="instead, time stream_audio: first audio, its cost, chunks against file")  # fmt: skip
    parser.add_argument("--fidelity", action="store_true",
                        help="instead of timing, compare float16, bfloat16 and int8 decoders with float32")  # fmt: skip
    parser.add_argument("--slots", type=int, nargs="*",
                        help="instead, time this many simultaneous requests per engine (e.g. 1 2 4 8 16)")  # fmt: skip
    parser.add_argument("--out", type=argparse.FileType("a"), help="also append the JSON lines to this file")
    args = parser.parse_args()
    if args.reference_duration is None:
        args.reference_duration = args.duration
    for name in args.models:
        if args.slots:
            bench_slots(name, args, args.out)
        else:
            (bench_fidelity if args.fidelity else bench_stream if args.stream else bench_model)(name, args, args.out)
    if args.mbd:
        bench_mbd(args, args.out)
    sys.exit(0)


if __name__ == "__main__":
    main()
