"""Melody conditioning on a tiny random-weight MusicGen-Melody checkpoint: chroma, engine, pipeline, then HTTP."""

import base64
import io
import pathlib

import numpy as np
import pytest
import requests
import soundfile
import torch

from musicgen_api.config import Settings
from musicgen_api.engine.melody import MelodyEngine
from musicgen_api.errors import InvalidRequest
from musicgen_api.generation import GenerationParams, Unwatched
from musicgen_api.pipeline import MusicPipeline, build_pipeline
from tests.conftest import Server, ServerFactory
from tests.test_api import decode_wav, stream_events

A4, E4 = 440.0, 329.63  # pitch classes 9 (A) and 4 (E); C (0) is the model's own "no melody" chroma


def sine_wav(frequency: float, seconds: float = 2.0, rate: int = 44_100) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


ignore = Unwatched()


@pytest.fixture(scope="module")
def pipeline(melody_model: pathlib.Path) -> MusicPipeline:
    return build_pipeline(Settings(model=str(melody_model), device="cpu", backend="fast", mbd=False))


def test_melody_checkpoint_loads_on_its_own_engine(pipeline: MusicPipeline) -> None:
    assert pipeline.bundle.melody
    assert isinstance(pipeline.engine, MelodyEngine)  # whatever --backend says
    assert hasattr(pipeline.bundle.model, "decoder")
    assert pipeline.describe()["melody"] is True


@pytest.mark.parametrize(("frequency", "pitch_class"), [(A4, 9), (E4, 4), (523.25, 0)])
def test_chroma_finds_the_pitch_class(pipeline: MusicPipeline, frequency: float, pitch_class: int) -> None:
    assert isinstance(pipeline.engine, MelodyEngine)
    chroma = pipeline.engine.features(sine_wav(frequency))  # 44.1 kHz in, resampled to the extractor's 32 kHz
    assert chroma.shape == (1, 2 * 32_000 // 4096 + 1, 12)
    assert (chroma[0].argmax(-1) == pitch_class).all() and (chroma.sum(-1) == 1).all()


def test_the_melody_steers_the_codes(pipeline: MusicPipeline) -> None:
    def codes(melody: bytes | None) -> torch.Tensor:
        torch.manual_seed(0)
        return pipeline.engine.generate(GenerationParams("calm piano", 1, melody=melody), ignore)

    a, e, text_only = codes(sine_wav(A4)), codes(sine_wav(E4)), codes(None)
    assert a.shape == e.shape == text_only.shape == (4, 50)
    assert not torch.equal(a, e) and not torch.equal(a, text_only)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        (GenerationParams("x", 1, melody=b"not audio"), "melody"),
        (GenerationParams("x", 3, audio_prompt=sine_wav(A4, 1.0)), "^audio_prompt: .*MusicGen-Melody"),
        (GenerationParams("x", 31), "^duration: .*MusicGen-Melody"),
    ],
)
def test_what_a_melody_model_cannot_do_is_refused(
    pipeline: MusicPipeline, params: GenerationParams, named: str
) -> None:
    with pytest.raises(InvalidRequest, match=named):
        pipeline.check(params)


def test_melody_request_through_the_server(server_factory: ServerFactory, melody_model: pathlib.Path) -> None:
    server = server_factory(melody_model, "--no-mbd")
    info = requests.get(f"{server.url}/api/info", timeout=10).json()
    assert (info["melody"], info["backend"]) == (True, "transformers")
    melody = base64.b64encode(sine_wav(A4)).decode()
    events = stream_events(server.url, {"description": "calm piano", "duration": 2, "melody": melody, "seed": 1})
    done = events[-1]
    assert done["status"] == "completed", done
    wav = decode_wav(done["audio_data"])
    assert (wav.getnframes(), wav.getnchannels(), done["duration"]) == (2 * 32_000, 1, 2.0)
    progress = [e["progress"] for e in events if e["status"] == "generating"]
    assert progress == sorted(progress) and progress[-1] == 100


def test_melody_to_a_plain_model_names_the_melody_checkpoints(mono_server: Server) -> None:
    melody = base64.b64encode(sine_wav(A4)).decode()
    r = requests.post(f"{mono_server.url}/api/music", json={"description": "x", "duration": 1, "melody": melody})
    assert r.status_code == 400
    assert r.json()["error"].startswith("melody:") and "facebook/musicgen-melody" in r.json()["error"]
