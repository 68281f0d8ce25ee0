"""Long pieces, seeds, continuation, loudness and formats: engine level on the tiny model, then through HTTP."""

import base64
import io
import math
import pathlib
import wave
from typing import Any

import numpy as np
import pytest
import requests
import soundfile
import torch

from musicgen_api.audio.formats import encode_audio
from musicgen_api.audio.loudness import integrated_loudness, normalize
from musicgen_api.config import Settings
from musicgen_api.engine.conditioning import TextConditioner
from musicgen_api.engine.fast import FastEngine
from musicgen_api.engine.loading import load_musicgen
from musicgen_api.engine.long_form import generate_long, plan_windows, total_steps
from musicgen_api.errors import InvalidRequest
from musicgen_api.generation import GenerationParams, Unwatched
from musicgen_api.pipeline import MusicPipeline, build_pipeline
from tests.conftest import Recorder, Server
from tests.test_api import stream_events

ignore = Unwatched()


@pytest.fixture(scope="module")
def pipeline(mono_model: pathlib.Path) -> MusicPipeline:
    return build_pipeline(Settings(model=str(mono_model), device="cpu", window=2, extend_stride=1, mbd=False))


def test_window_plan_matches_audiocraft() -> None:
    # 30 s windows, 18 s stride: 120 s = 30 + 5 × 18, each later window keeping the last 12 s.
    assert plan_windows(6000, 0, 1500, 900) == [(0, 1500)] + [(600, 900)] * 5
    assert plan_windows(1600, 0, 1500, 900) == [(0, 1500), (600, 100)]
    assert plan_windows(1000, 200, 1500, 900) == [(200, 800)]
    assert plan_windows(3000, 1000, 1500, 900) == [(1000, 500), (600, 900), (600, 600)]


def test_each_window_continues_exactly_from_the_last(mono_model: pathlib.Path) -> None:
    bundle = load_musicgen(str(mono_model), device="cpu")
    engine = FastEngine(bundle, TextConditioner(bundle, max_tokens=64), window_seconds=2)
    calls: list[tuple[torch.Tensor | None, torch.Tensor]] = []
    real = engine.generate

    def spy(
        params: GenerationParams, progress: Any, prompt: Any = None, frames: Any = None, generator: Any = None
    ) -> torch.Tensor:
        out = real(params, progress, prompt=prompt, frames=frames, generator=generator)
        calls.append((None if prompt is None else prompt.clone(), out.clone()))
        return out

    engine.generate = spy  # type: ignore[method-assign]
    progress = Recorder()
    codes = generate_long(engine, GenerationParams("long", 5), progress, 250, window=100, stride=50)
    assert codes.shape == (4, 250)
    assert len(calls) == 1 + 3  # 100 frames, then 3 × 50 new frames keeping 50
    made = calls[0][1]
    for prompt, out in calls[1:]:
        assert prompt is not None and torch.equal(prompt, made[:, -50:])
        assert torch.equal(out[:, :50], prompt)  # the window's output starts with its prompt, untouched
        made = torch.cat([made, out[:, 50:]], dim=1)
    assert torch.equal(made, codes)
    assert progress.steps == total_steps(250, 0, 100, 50, engine.num_codebooks, engine.channels)


def test_same_seed_same_bytes_other_seed_other_audio(pipeline: MusicPipeline) -> None:
    runs = [pipeline.render(GenerationParams("seeded", 3, seed=s), ignore) for s in (11, 11, 12)]
    assert runs[0].seed == 11 and runs[0].data == runs[1].data
    assert runs[0].data != runs[2].data
    fresh = [pipeline.render(GenerationParams("unseeded", 1), ignore).seed for _ in range(2)]
    assert fresh[0] != fresh[1]


def _wav_samples(data: bytes) -> np.ndarray:
    samples, _ = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples


def test_continuation_starts_with_the_prompt(pipeline: MusicPipeline) -> None:
    rate = 32000
    t = torch.arange(int(1.5 * rate)) / rate
    prompt = (0.3 * torch.sin(2 * math.pi * 220 * t))[None]
    prompt_file = encode_audio(prompt, rate, "flac")
    params = GenerationParams("continue", 3, audio_prompt=prompt_file, normalization="none", seed=5)
    out = _wav_samples(pipeline.render(params, ignore).data)
    assert out.shape == (3 * rate, 1)
    # What the model sees of the prompt is its EnCodec codes: the returned audio starts with their decoding.
    expected = pipeline.codec.decode(pipeline.codec.encode(prompt, rate))[0].numpy()
    head = int(1.0 * rate)  # away from the join, where the next codes' decoding overlaps
    np.testing.assert_allclose(out[:head, 0], np.clip(expected[:head], -1, 1), atol=2 / 32767)

    only_new = GenerationParams("continue", 2, audio_prompt=prompt_file, return_prompt=False, seed=5)
    assert _wav_samples(pipeline.render(only_new, ignore).data).shape == (2 * rate, 1)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        (GenerationParams("x", 1, audio_prompt=b"not audio"), "audio_prompt"),
        (GenerationParams("x", 1, melody=b"RIFF"), "MusicGen-Melody"),
    ],
)
def test_unusable_inputs_refused_before_work(pipeline: MusicPipeline, params: GenerationParams, named: str) -> None:
    with pytest.raises(InvalidRequest, match=named):
        pipeline.check(params)


def test_prompt_as_long_as_the_clip_is_refused(pipeline: MusicPipeline) -> None:
    prompt = encode_audio(torch.zeros(1, 32000), 32000, "wav")  # 1 s
    with pytest.raises(InvalidRequest, match="return_prompt"):
        pipeline.check(GenerationParams("x", 1, audio_prompt=prompt))


def _noise(seconds: float, level: float, channels: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(channels, int(seconds * 32000), generator=generator) * level


@pytest.mark.parametrize("level", [0.01, 0.3, 3.0])
def test_each_normalization_gives_its_level_and_never_clips(level: float) -> None:
    wave_in = _noise(4, level)
    loud = normalize(wave_in, 32000, "loudness")
    assert abs(integrated_loudness(loud, 32000) - (-14)) < 1.0
    assert loud.abs().max() < 1.0
    peak = normalize(wave_in, 32000, "peak")
    assert math.isclose(float(peak.abs().max()), 10 ** (-1 / 20), rel_tol=1e-5)
    rms = normalize(wave_in, 32000, "rms")
    assert abs(20 * math.log10(float(rms.pow(2).mean().sqrt())) - (-20)) < 1.0 and rms.abs().max() < 1.0
    assert normalize(wave_in, 32000, "clip").abs().max() <= 1.0


def test_out_of_range_samples_saturate_never_wrap() -> None:
    loud = torch.tensor([[0.5, 1.5, -2.0, 1.0, -1.0]])
    with wave.open(io.BytesIO(encode_audio(normalize(loud, 32000, "none"), 32000, "wav"))) as w:
        pcm = np.frombuffer(w.readframes(5), dtype="<i2")
    assert pcm.tolist() == [16384, 32767, -32767, 32767, -32767]


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg"])
def test_every_format_decodes_to_rate_channels_length(pipeline: MusicPipeline, fmt: str) -> None:
    audio = pipeline.render(GenerationParams("formats", 2, format=fmt), ignore)  # type: ignore[arg-type]
    samples, rate = soundfile.read(io.BytesIO(audio.data), always_2d=True)
    assert (rate, samples.shape[1]) == (32000, 1)
    assert abs(samples.shape[0] - 2 * 32000) <= (0 if fmt in ("wav", "flac") else 1152)  # lossy frame padding
    assert audio.mime_type == {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg"}[fmt]


def test_long_piece_over_http(long_server: Server) -> None:
    events = stream_events(long_server.url, {"description": "a long piece", "duration": 5, "seed": 42})
    progress = [e["progress"] for e in events[1:-1]]
    assert progress == sorted(progress) and progress[-1] == 100
    done = events[-1]
    assert (done["seed"], done["sample_rate"], done["channels"], done["duration"]) == (42, 32000, 2, 5.0)
    with wave.open(io.BytesIO(base64.b64decode(done["audio_data"]))) as w:
        assert (w.getnchannels(), w.getnframes()) == (2, 5 * 32000)


def test_continuation_and_format_over_http(long_server: Server) -> None:
    prompt = base64.b64encode(encode_audio(_noise(1.0, 0.1, channels=1), 32000, "ogg")).decode()
    body = {"description": "go on", "duration": 3, "audio_prompt": prompt, "format": "flac", "seed": 1}
    done = stream_events(long_server.url, body)[-1]
    assert (done["format"], done["mime_type"]) == ("flac", "audio/flac")
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(done["audio_data"])), always_2d=True)
    assert (rate, samples.shape) == (32000, (3 * 32000, 2))


NEW_FIELD_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"seed": -1}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"seed": "7"}, "seed"),
    ({"seed": True}, "seed"),
    ({"format": "aiff"}, "format"),
    ({"format": 1}, "format"),
    ({"normalization": "louder"}, "normalization"),
    ({"audio_prompt": "%%% not base64"}, "audio_prompt"),
    ({"audio_prompt": ""}, "audio_prompt"),
    ({"audio_prompt": base64.b64encode(b"plain text, not audio").decode()}, "audio_prompt"),
    ({"return_prompt": "yes"}, "return_prompt"),
    ({"melody": 5}, "melody"),
    ({"melody": base64.b64encode(b"RIFF....WAVE").decode()}, "melody"),
]


def _prompt(seconds: float) -> str:
    return base64.b64encode(encode_audio(_noise(seconds, 0.1, channels=1), 32000, "wav")).decode()


PROMPT_LENGTH_ERRORS: list[tuple[dict[str, Any], str, str]] = [  # long_server's window is 2 s: prompts up to 1 s
    ({"duration": 3, "audio_prompt": _prompt(1.5)}, "at most 1 s", "audio_prompt"),
    ({"duration": 3, "audio_prompt": _prompt(0.01)}, "at least 0.02 s", "audio_prompt"),
    ({"duration": 1, "audio_prompt": _prompt(1.0)}, "return_prompt", "duration"),
]


@pytest.mark.parametrize(("extra", "named"), NEW_FIELD_ERRORS)
def test_new_fields_are_validated(long_server: Server, extra: dict[str, Any], named: str) -> None:
    r = requests.post(f"{long_server.url}/api/music", json={"description": "x", "duration": 1, **extra}, timeout=10)
    assert r.status_code == 400, r.text
    assert named in r.json()["error"] and r.json()["field"] == named


@pytest.mark.parametrize(("extra", "named", "field"), PROMPT_LENGTH_ERRORS)
def test_prompts_too_long_or_too_short_are_refused(
    long_server: Server, extra: dict[str, Any], named: str, field: str
) -> None:
    r = requests.post(f"{long_server.url}/api/music", json={"description": "x", **extra}, timeout=10)
    assert r.status_code == 400, r.text
    assert named in r.json()["error"] and r.json()["field"] == field
