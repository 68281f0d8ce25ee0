"""GPU correctness check: the CUDA-graph engine against transformers on a random musicgen-small, fp32 and fp16.

Greedy codes (top_k=1) should match token for token in fp32; a fixed seed should reproduce the same codes through
graph replays; four requests on a 4-slot engine should give what each gives alone. Prints one JSON line.
"""

import argparse
import json
import threading

import torch

from musicgen_api.bench.random_model import build_random_musicgen, build_tokenizer
from musicgen_api.engine.conditioning import TextConditioner
from musicgen_api.engine.fast import FastEngine
from musicgen_api.engine.loading import MusicgenBundle
from musicgen_api.engine.reference import TransformersEngine
from musicgen_api.generation import GenerationParams, Unwatched

ignore = Unwatched()


def side_by_side(shape: str, device_name: str, dtype: torch.dtype) -> dict[str, float]:
    """Four seeded requests on a 4-slot engine, alone and then at once: the share of codes that agree (on CUDA the
    batched attention lengths differ with the others' positions, so agreement may fall short of 1)."""
    device = torch.device(device_name)
    model = build_random_musicgen(shape, device=device_name, dtype=dtype)
    bundle = MusicgenBundle(model=model, tokenizer=build_tokenizer(), device=device, dtype=dtype)
    engine = FastEngine(bundle, TextConditioner(bundle, max_tokens=512), window_seconds=4, slots=4)
    asks = [GenerationParams(f"take {i}", duration=1 + i, top_k=1 if i == 0 else 250) for i in range(4)]

    def run(i: int) -> torch.Tensor:
        return engine.generate(asks[i], ignore, generator=torch.Generator(device).manual_seed(i))

    alone = [run(i) for i in range(4)]
    beside: list[torch.Tensor] = [torch.empty(0)] * 4
    threads = [threading.Thread(target=lambda i=i: beside.__setitem__(i, run(i))) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    agree = [round((a == b).float().mean().item(), 4) for a, b in zip(alone, beside, strict=True)]
    return {"greedy": agree[0], "sampled_min": min(agree[1:])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="small")
    parser.add_argument("--device", default="cuda", help="cpu for a dry run")
    args = parser.parse_args()
    report: dict = {}
    for dtype in (torch.float32, torch.float16) if args.device == "cuda" else (torch.float32,):
        model = build_random_musicgen(args.shape, device=args.device, dtype=dtype)
        device = torch.device(args.device)
        bundle = MusicgenBundle(model=model, tokenizer=build_tokenizer(), device=device, dtype=dtype)
        conditioner = TextConditioner(bundle, max_tokens=512)
        greedy = GenerationParams("80s pop track with bassy drums and synth", duration=4, top_k=1)
        theirs = TransformersEngine(bundle, conditioner).generate(greedy, ignore)
        engine = FastEngine(bundle, conditioner, window_seconds=4)  # takes the decoder's weights from the bundle
        ours = engine.generate(greedy, ignore)
        name = str(dtype).removeprefix("torch.")
        report[f"greedy_match_{name}"] = round((ours == theirs).float().mean().item(), 4)
        first_diff = (ours != theirs).any(0).nonzero()
        report[f"greedy_first_mismatch_frame_{name}"] = int(first_diff[0]) if len(first_diff) else None
        sampled = GenerationParams("80s pop track with bassy drums and synth", duration=4, top_k=250)
        runs = []
        for seed in (3, 3, 4):
            runs.append(engine.generate(sampled, ignore, generator=torch.Generator(device).manual_seed(seed)))
        report[f"seed_reproduces_{name}"] = bool(torch.equal(runs[0], runs[1]))
        report[f"seed_changes_codes_{name}"] = not torch.equal(runs[0], runs[2])
        nucleus = GenerationParams("x", duration=4, top_p=0.9)
        report[f"top_p_runs_{name}"] = list(engine.generate(nucleus, ignore).shape)
        del engine, model, bundle
        report[f"slots_side_by_side_{name}"] = side_by_side(args.shape, args.device, dtype)
        if args.device == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(report))  # noqa: T201


if __name__ == "__main__":
    main()
