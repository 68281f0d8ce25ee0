"""The fast engine against transformers on the tiny checkpoints: same codes, same logits, faithful sampling."""

import pathlib
from typing import Any

import pytest
import torch

from musicgen_api.audio.codec import EncodecCodec
from musicgen_api.bench import fidelity
from musicgen_api.config import Settings
from musicgen_api.engine.conditioning import TextConditioner
from musicgen_api.engine.decoder import MusicgenDecoder
from musicgen_api.engine.delay import sequence_length
from musicgen_api.engine.fast import Buckets, FastEngine
from musicgen_api.engine.loading import MusicgenBundle, load_musicgen
from musicgen_api.engine.long_form import generate_long
from musicgen_api.engine.quantize import Int8Linear, PackedLinear
from musicgen_api.engine.reference import TransformersEngine
from musicgen_api.engine.sampling import sample_next
from musicgen_api.generation import GenerationCancelled, GenerationParams, Unwatched
from musicgen_api.pipeline import build_pipeline
from tests.conftest import Recorder

no_progress = Unwatched()


@pytest.fixture(params=["mono", "stereo"])
def bundle(request: pytest.FixtureRequest) -> MusicgenBundle:
    """A fresh load per test: a FastEngine takes the decoder's weights out of the bundle it is built from."""
    path: pathlib.Path = request.getfixturevalue(f"{request.param}_model")
    return load_musicgen(str(path), device="cpu", dtype="float32")  # the equivalence tests compare float32


@pytest.mark.parametrize("cfg_coef", [3.0, 1.0])
@pytest.mark.parametrize("description", ["电子音乐，带有强烈的鼓点", "a calm piano melody with soft strings and rain"])
def test_greedy_codes_match_transformers(bundle: MusicgenBundle, description: str, cfg_coef: float) -> None:
    conditioner = TextConditioner(bundle, max_tokens=64)
    params = GenerationParams(description, duration=2, top_k=1, cfg_coef=cfg_coef)
    reference = TransformersEngine(bundle, conditioner).generate(params, no_progress)
    fast = FastEngine(bundle, conditioner, window_seconds=3).generate(params, no_progress)
    assert fast.shape == (bundle.num_codebooks, 100)
    assert torch.equal(fast, reference)


def test_greedy_codes_depend_on_the_text_and_audio_on_the_codes(bundle: MusicgenBundle) -> None:
    """The equality above would hold trivially on a degenerate model: here the tiny model's codes follow the text,
    and its codec's audio follows the codes."""
    engine = FastEngine(bundle, TextConditioner(bundle, max_tokens=64), window_seconds=2)
    calm, loud = (engine.generate(GenerationParams(text, 2, top_k=1), no_progress) for text in ("calm", "loud"))
    assert (calm != loud).float().mean() > 0.5
    assert len(calm.unique()) > 4  # not one repeated token
    codec = EncodecCodec(bundle.codec, bundle.audio_channels)
    calm_audio, loud_audio = codec.decode(calm), codec.decode(loud)
    assert (calm_audio - loud_audio).abs().max() > 0.5 * calm_audio.std()


def test_teacher_forced_logits_match_transformers(bundle: MusicgenBundle) -> None:
    conditioner = TextConditioner(bundle, max_tokens=64)
    hidden, mask = conditioner.encode("techno beat at 128 bpm with a deep kick")
    k, t = bundle.num_codebooks, 40
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, bundle.model.config.decoder.vocab_size + 1, (1, k, t), generator=generator)
    expected = bundle.model.decoder(
        input_ids=tokens.reshape(k, t), encoder_hidden_states=hidden, encoder_attention_mask=mask.long()
    ).logits.reshape(1, k, t, -1)
    ours = MusicgenDecoder.from_transformers(bundle.model.decoder, bundle.model.config.decoder)
    ours.setup_cache(batch=1, length=t)
    with torch.no_grad():
        logits = ours(tokens, torch.arange(t)[None], t, ours.cross_keys_values(hidden), mask[:, None, None, :])
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_fixed_seed_reproduces_codes_and_sampling_varies(bundle: MusicgenBundle) -> None:
    engine = FastEngine(bundle, TextConditioner(bundle, max_tokens=64), window_seconds=2)
    params = GenerationParams("jazz trio", duration=1, top_k=50)
    runs = []
    for seed in (7, 7, 8):
        runs.append(engine.generate(params, no_progress, generator=torch.Generator().manual_seed(seed)))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_progress_reaches_every_step_and_cancellation_stops(bundle: MusicgenBundle) -> None:
    engine = FastEngine(bundle, TextConditioner(bundle, max_tokens=64), window_seconds=2)
    params = GenerationParams("x", duration=2)
    seen = Recorder()
    engine.generate(params, seen)
    steps = sequence_length(params.frames, bundle.num_codebooks, bundle.audio_channels) - 1
    assert seen.advances == list(range(1, steps + 1))

    cancelled = Recorder(cancel_after=5)
    with pytest.raises(GenerationCancelled):
        engine.generate(params, cancelled)
    assert cancelled.advances == [1, 2, 3, 4, 5]  # nothing reported after the cancellation was seen
    assert int(engine.pos[0]) < steps  # the decode thread stopped the window (it may have run a step or two on)
    assert engine.loop.in_use == 0  # and its slot is free
    assert seen.advances == list(range(1, steps + 1)) and engine.generate(params, Recorder()).shape[1] == params.frames


def _distribution(batch: int = 3, codebooks: int = 4, vocab: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    cond = torch.randn(batch, codebooks, vocab, generator=generator) * 3
    uncond = torch.randn(batch, codebooks, vocab, generator=generator) * 3
    return cond, uncond


def _race(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The Exp(1) noise the engine draws for each step, from a seeded generator: the same draws every run."""
    return torch.empty_like(like).exponential_(1, generator=generator)


def _mixed_probs(cond: torch.Tensor, uncond: torch.Tensor, cfg: float, temperature: float) -> torch.Tensor:
    return torch.softmax((uncond + (cond - uncond) * cfg) / temperature, dim=-1)


@pytest.mark.parametrize("top_k", [1, 5, 20])
def test_top_k_never_leaves_the_k_most_likely(top_k: int) -> None:
    cond, uncond = _distribution()
    probs = _mixed_probs(cond, uncond, 3.0, 0.8)
    allowed = probs.topk(top_k, dim=-1).indices
    t, noise = torch.tensor, torch.Generator().manual_seed(2)
    for _ in range(300):
        token = sample_next(cond, uncond, t(3.0), t(0.8), t(top_k), t(0.0), _race(cond, noise))
        assert (allowed == token[..., None]).any(-1).all()


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9])
def test_top_p_never_leaves_the_nucleus(top_p: float) -> None:
    cond, uncond = _distribution()
    probs = _mixed_probs(cond, uncond, 2.0, 1.0)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    in_nucleus = (sorted_probs.cumsum(-1) - sorted_probs) <= top_p
    t, noise = torch.tensor, torch.Generator().manual_seed(3)
    seen_outside_top_1 = False
    for _ in range(300):
        token = sample_next(cond, uncond, t(2.0), t(1.0), t(1), t(top_p), _race(cond, noise))  # top_k=1 ignored
        rank = (order == token[..., None]).float().argmax(-1)
        assert in_nucleus.gather(-1, rank[..., None]).all()
        seen_outside_top_1 |= bool((rank > 0).any())
    assert seen_outside_top_1 or top_p < 0.1


def test_sampling_follows_the_distribution() -> None:
    cond, uncond = _distribution(batch=1, codebooks=1, vocab=8)
    probs = _mixed_probs(cond, uncond, 3.0, 1.5)[0, 0]
    t, noise = torch.tensor, torch.Generator().manual_seed(0)
    draws = torch.stack(
        [sample_next(cond, uncond, t(3.0), t(1.5), t(8), t(0.0), _race(cond, noise)) for _ in range(4000)]
    ).flatten()
    freq = torch.bincount(draws, minlength=8).float() / draws.numel()
    torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)


def test_pipeline_rejects_prompt_over_token_capacity(mono_model: pathlib.Path) -> None:
    pipeline = build_pipeline(
        Settings(model=str(mono_model), device="cpu", max_text_tokens=8, max_duration=2, mbd=False)
    )
    with pytest.raises(ValueError, match="at most 8"):
        pipeline.check(GenerationParams("a long description that makes many text tokens", duration=1))


def test_window_beyond_the_model_positions_is_refused(mono_model: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="--window"):
        build_pipeline(Settings(model=str(mono_model), device="cpu", window=60, mbd=False))


def test_stale_cache_contents_cannot_leak_into_a_request(bundle: MusicgenBundle) -> None:
    """Masked positions get weight 0, and 0 × NaN is NaN: whatever a previous request or the CUDA-graph warm-up
    left in the KV cache must not change the next request."""
    engine = FastEngine(bundle, TextConditioner(bundle, max_tokens=64), window_seconds=2)
    params = GenerationParams("techno", duration=1, top_k=1)
    fresh = engine.generate(params, no_progress)
    for layer in engine.decoder.layers:
        assert layer.cache is not None
        layer.cache.k.fill_(float("nan"))
        layer.cache.v.fill_(float("inf"))
    assert torch.equal(engine.generate(params, no_progress), fresh)


def test_the_reference_backend_maps_top_p_and_a_weak_cfg_as_transformers_does(bundle: MusicgenBundle) -> None:
    """top_p > 0 samples from the nucleus with top_k off (audiocraft's rule); cfg_coef <= 1 turns guidance off in
    transformers, so greedy codes then equal those with no guidance at all (cfg_coef 1)."""
    engine = TransformersEngine(bundle, TextConditioner(bundle, max_tokens=64))
    calls: list[dict[str, Any]] = []
    real = bundle.model.generate

    def spy(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(**kwargs)

    bundle.model.generate = spy  # type: ignore[method-assign]
    engine.generate(GenerationParams("x", 1, top_k=7, top_p=0.9), no_progress)
    assert (calls[-1]["top_k"], calls[-1]["top_p"]) == (0, 0.9)
    engine.generate(GenerationParams("x", 1, top_k=7), no_progress)
    assert (calls[-1]["top_k"], calls[-1]["top_p"]) == (7, 1.0)
    weak, none, strong = (
        engine.generate(GenerationParams("a calm melody", 2, top_k=1, cfg_coef=cfg), no_progress)
        for cfg in (0.5, 1.0, 3.0)
    )
    assert torch.equal(weak, none)
    assert not torch.equal(none, strong)


def test_attention_over_buckets_gives_the_sliced_codes(bundle: MusicgenBundle) -> None:
    """CUDA rounds attention lengths up to buckets (more positions, masked); a CPU slices exactly. Greedy codes agree
    in float32 for one window, a piece of several windows and a continuation."""
    again = load_musicgen(bundle.source, device="cpu", dtype="float32")
    sliced = FastEngine(bundle, TextConditioner(bundle, max_tokens=64), window_seconds=2)
    bucketed = FastEngine(again, TextConditioner(again, max_tokens=64), window_seconds=2, buckets=Buckets(16, 8))
    assert (sliced.attended(20), bucketed.attended(20)) == (21, 32)
    params = GenerationParams("bucketed", duration=5, top_k=1)
    long = [generate_long(e, params, no_progress, 250, window=100, stride=50) for e in (sliced, bucketed)]
    assert torch.equal(long[0], long[1])
    prompt = long[0][:, :30]
    cont = [
        generate_long(e, params, no_progress, 120, window=100, stride=50, prompt=prompt) for e in (sliced, bucketed)
    ]
    assert torch.equal(cont[0], cont[1])


@pytest.mark.parametrize(
    ("weights", "quantize", "least_top1", "most_kl"),
    [
        (torch.float16, "none", 0.99, 1e-4),  # the CPU default: fbgemm's packed float16 weights
        (torch.bfloat16, "none", 0.95, 2e-3),
        (torch.float16, "int8", 0.93, 5e-3),  # fbgemm's dynamic int8
    ],
)
def test_cheaper_decoders_stay_close_to_float32(
    mono_model: pathlib.Path, weights: torch.dtype, quantize: Any, least_top1: float, most_kl: float
) -> None:
    """Teacher-forced next-token distributions against float32's on one sequence: measured on the tiny model at
    top-1 agreement 1.000 / mean KL 4e-7 (float16 weights), 0.991 / 2e-4 (bfloat16), and for int8 0.987 / 7e-4
    with AVX-512 VNNI (8-bit activations), 0.959 / 2.5e-3 on AVX2 (7-bit); the bounds leave a margin."""
    params = GenerationParams("fidelity", 5, seed=0)
    engines = []
    for decoder_dtype, q in ((torch.float32, "none"), (weights, quantize)):
        bundle = load_musicgen(str(mono_model), device="cpu", dtype="float32")
        bundle.decoder_dtype = decoder_dtype
        engines.append(FastEngine(bundle, TextConditioner(bundle, 64), 5, quantize=q))
    sequence = fidelity.reference_sequence(engines[0], params)
    reference, candidate = (fidelity.next_token_log_probs(e, params, sequence) for e in engines)
    figures = fidelity.compare(reference, candidate, params, channels=1)
    assert figures["reference_entropy"] < 0.9 * figures["uniform_entropy"]  # the reference is not uniform noise
    assert figures["top1_agreement"] >= least_top1 and figures["mean_kl"] <= most_kl, figures
    assert figures["top1_agreement"] < 1 or quantize == "none"  # int8 changes something
    packed = quantize == "int8" or weights == torch.float16  # x86: fbgemm, float32 activations
    assert engines[1].dtype == (torch.float32 if packed else weights) and engines[1].attention_dtype == torch.float32
    assert engines[1].weights == ("int8" if quantize == "int8" else str(weights).removeprefix("torch."))
    kinds = {type(m) for m in engines[1].decoder.modules()}
    assert (PackedLinear in kinds) == packed and (torch.nn.Linear in kinds) == (not packed and quantize == "none")


@pytest.mark.parametrize("make", [Int8Linear, lambda lin: PackedLinear(lin, "float16"),
                                  lambda lin: PackedLinear(lin, "int8")])  # fmt: skip
def test_stored_matrices_multiply_like_the_linear_they_replace(make: Any) -> None:
    """Each storage against the float32 product it stands for, on rows of a decode step and of a prefill: close,
    and not merely a constant (the product follows the input)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 512, bias=False)
    stored = make(linear)
    for x in (torch.randn(2, 1, 256), torch.randn(2, 7, 256)):
        want, got = linear(x), stored(x)
        assert got.shape == want.shape and got.dtype == x.dtype
        assert (got - want).norm() / want.norm() < 0.02
        assert torch.corrcoef(torch.stack([got.flatten(), want.flatten()]))[0, 1] > 0.999


def test_settled_frames_arrive_in_order_and_are_the_final_codes(bundle: MusicgenBundle) -> None:
    """What `stream_audio` listens to: every decode loop says which frames are final as they settle, and those
    frames are the codes it returns (fast engine, transformers, a long piece with a prompt)."""
    conditioner = TextConditioner(bundle, max_tokens=64)
    params = GenerationParams("settle", duration=2, top_k=5)
    k_ch = bundle.num_codebooks // bundle.audio_channels
    for make in (TransformersEngine, lambda b, c: FastEngine(b, c, window_seconds=2)):  # fast takes the weights
        engine = make(bundle, conditioner)
        seen = Recorder()
        torch.manual_seed(0)
        codes = engine.generate(params, seen)
        assert seen.settled == sorted(seen.settled) and seen.settled[-1] == 100
        before_first_step = 1 if isinstance(engine, FastEngine) else 0  # the fast engine reports the prompt first
        assert seen.settled.index(1) == before_first_step + k_ch - 1  # frame 0 is whole after K_ch steps
        assert seen.frames is not None and torch.equal(seen.frames, codes)
    seen = Recorder()
    prompt = codes[:, :30]
    piece = generate_long(engine, params, seen, 250, window=100, stride=50, prompt=prompt)
    assert seen.settled[0] == 30  # the prompt is settled before the first step
    assert seen.frames is not None and torch.equal(seen.frames, piece) and piece.shape[1] == 250
