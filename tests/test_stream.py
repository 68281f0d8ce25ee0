"""Audio while it is generating (`stream_audio`): the chunks' contract over real HTTP (contiguous, exactly the
duration, mono and stereo, long pieces, continuations, off by default, the spec's own client, bad values, a client
that leaves), and in process how closely the joined chunks follow the finished file."""

import base64
import contextlib
import io
import json
import pathlib
import wave
from typing import Any

import numpy as np
import pytest
import requests

from musicgen_api.audio.formats import encode_audio
from musicgen_api.audio.streaming import AudioStreamer
from musicgen_api.config import Settings
from musicgen_api.generation import GenerationParams
from musicgen_api.pipeline import MusicPipeline, build_pipeline
from tests.conftest import Recorder, Server
from tests.test_api import SPEC_PYTHON_CLIENT, stream_events, wait_healthy
from tests.test_features import _noise

RATE = 32000


def chunks_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("status") == "audio"]


def joined_pcm(chunks: list[dict[str, Any]], channels: int) -> np.ndarray:
    """The chunks' samples end to end, [samples, channels] int16, after checking each chunk's own fields."""
    pieces = []
    for chunk in chunks:
        assert (chunk["sample_rate"], chunk["channels"]) == (RATE, channels)
        pcm = np.frombuffer(base64.b64decode(chunk["audio_chunk"]), dtype="<i2").reshape(-1, channels)
        assert pcm.shape[0] == round(chunk["duration"] * RATE)  # the chunk holds what it says
        pieces.append(pcm)
    return np.concatenate(pieces)


def assert_contiguous(chunks: list[dict[str, Any]], duration: float) -> None:
    """Chunks start at 0, each where the one before ended, and end exactly at `duration`."""
    assert chunks, "no audio events"
    end = 0.0
    for chunk in chunks:
        assert chunk["offset"] == pytest.approx(end, abs=1e-9)
        assert chunk["duration"] > 0
        end = chunk["offset"] + chunk["duration"]
    assert end == pytest.approx(duration, abs=1e-9)


def wav_pcm(audio_b64: str) -> tuple[np.ndarray, int]:
    """A WAV's samples [samples, channels] int16 and its channel count."""
    with wave.open(io.BytesIO(base64.b64decode(audio_b64)), "rb") as w:
        channels = w.getnchannels()
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, channels), channels


def wav_data(data: bytes) -> bytes:
    """The PCM bytes of a WAV file."""
    with wave.open(io.BytesIO(data), "rb") as w:
        return w.readframes(w.getnframes())


@pytest.mark.parametrize("stereo", [False, True], ids=["mono", "stereo"])
def test_chunks_cover_the_piece_between_the_progress_events(
    mono_server: Server, stereo_server: Server, stereo: bool
) -> None:
    server = stereo_server if stereo else mono_server
    events = stream_events(server.url, {"description": "streamed", "duration": 4, "stream_audio": True, "seed": 3})
    statuses = [e.get("status") for e in events]
    assert statuses[0] == "started" and statuses[-1] == "completed"
    chunks = chunks_of(events)
    assert_contiguous(chunks, 4.0)
    assert len(chunks) >= 4  # a short first chunk, then about one a second
    # Interleaved with progress: audio arrives while the piece is still being made, not all at the end.
    first_audio = statuses.index("audio")
    assert "generating" in statuses[first_audio + 1 :]
    assert [e["progress"] for e in events if e.get("status") == "generating"][-1] == 100
    channels = 2 if stereo else 1
    joined = joined_pcm(chunks, channels)
    final, final_channels = wav_pcm(events[-1]["audio_data"])
    assert final_channels == channels and joined.shape == final.shape == (4 * RATE, channels)
    assert np.abs(joined).max() > 0  # not silence


def test_off_by_default_and_when_false(mono_server: Server) -> None:
    for body in (
        {"description": "plain", "duration": 2},
        {"description": "plain", "duration": 2, "stream_audio": False},
    ):
        events = stream_events(mono_server.url, body)
        assert chunks_of(events) == []
        assert {e.get("status") for e in events} == {"started", "generating", "completed"}


@pytest.mark.parametrize("value", ["yes", 1, 0, None, [], {}])
def test_anything_but_a_boolean_is_a_400_naming_it(mono_server: Server, value: Any) -> None:
    r = requests.post(
        f"{mono_server.url}/api/music", json={"description": "x", "duration": 1, "stream_audio": value}, timeout=10
    )
    assert r.status_code == 400
    assert r.json()["field"] == "stream_audio" and "true or false" in r.json()["error"]


def test_spec_python_client_verbatim_with_stream_audio(mono_server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    """The spec's client ignores statuses it does not know: with stream_audio it still saves the finished WAV."""
    source = SPEC_PYTHON_CLIENT.replace('"cfg_coef": 3.0}', '"cfg_coef": 3.0, "stream_audio": True}', 1)
    source = source.replace('"duration": 30', '"duration": 3', 1).replace("http://localhost:5000", mono_server.url)
    assert '"stream_audio": True' in source
    scope: dict[str, Any] = {}
    exec(compile(source, "spec_client", "exec"), scope)
    pcm, channels = wav_pcm(scope["audio_b64"])
    assert (pcm.shape, channels) == ((3 * RATE, 1), 1)
    assert "progress: 100%" in capsys.readouterr().out


def test_spec_curl_example_with_stream_audio(mono_server: Server) -> None:
    import subprocess

    body = json.dumps(
        {"description": "电子音乐，带有强烈的鼓点", "duration": 2, "stream_audio": True}, ensure_ascii=False
    )
    out = subprocess.run(
        ["curl", "-sN", "-X", "POST", f"{mono_server.url}/api/music", "-H", "Content-Type: application/json",
         "-H", "Accept: text/event-stream", "-d", body],
        capture_output=True, check=True, timeout=60,
    ).stdout.decode()  # fmt: skip
    events = [json.loads(line[6:]) for line in out.splitlines() if line.startswith("data: ")]
    assert_contiguous(chunks_of(events), 2.0)
    assert events[-1]["status"] == "completed"


def test_a_long_piece_streams_across_its_windows(long_server: Server) -> None:
    events = stream_events(long_server.url, {"description": "long", "duration": 5, "stream_audio": True, "seed": 9})
    chunks = chunks_of(events)
    assert_contiguous(chunks, 5.0)
    assert len(chunks) >= 5
    assert joined_pcm(chunks, 2).shape == wav_pcm(events[-1]["audio_data"])[0].shape == (5 * RATE, 2)


@pytest.mark.parametrize("return_prompt", [True, False])
def test_a_continuation_streams_its_prompt_first_or_only_the_new_audio(
    long_server: Server, return_prompt: bool
) -> None:
    prompt = base64.b64encode(encode_audio(_noise(1.0, 0.1, channels=1), RATE, "wav")).decode()
    body = {"description": "go on", "duration": 3, "audio_prompt": prompt, "return_prompt": return_prompt,
            "stream_audio": True, "normalization": "none", "seed": 4}  # fmt: skip
    events = stream_events(long_server.url, body)
    chunks = chunks_of(events)
    assert_contiguous(chunks, 3.0)
    joined = joined_pcm(chunks, 2).astype(np.float64).flatten()
    final = wav_pcm(events[-1]["audio_data"])[0].astype(np.float64).flatten()
    # With levels left alone the joined chunks are the finished file but for the decoder's context at chunk edges.
    assert np.corrcoef(joined, final)[0, 1] > 0.99


def test_a_client_that_leaves_mid_stream_frees_the_slot(mono_server: Server) -> None:
    mark = mono_server.mark()
    body = {"description": "left early", "duration": 30, "stream_audio": True}
    with contextlib.closing(requests.post(f"{mono_server.url}/api/music", json=body, stream=True, timeout=60)) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line and b'"audio"' in line:
                break
    wait_healthy(mono_server.url, within=5)
    assert "completed in" not in mono_server.wait_for_log(mark, "generation cancelled after")


# ---- in process: how the joined chunks compare with the finished piece -----------------------------------------


@pytest.fixture(scope="module")
def pipeline(mono_model: pathlib.Path) -> MusicPipeline:
    return build_pipeline(Settings(model=str(mono_model), device="cpu", window=4, extend_stride=2, mbd=False))


def _float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32767


@pytest.mark.parametrize("duration", [3, 7], ids=["one window", "three windows"])
def test_joined_chunks_follow_the_finished_audio(pipeline: MusicPipeline, duration: int) -> None:
    """Measured on the tiny model (mono and stereo alike): correlation 0.9999999999, largest difference one LSB (3e-5
    at a 0.24 peak), largest jump at a chunk edge 0.07 against 0.16 elsewhere; the bounds leave a margin."""
    job = Recorder()
    params = GenerationParams("compare", duration, seed=11, normalization="none", stream_audio=True)
    done = pipeline.render(params, job)
    final = _float(wav_data(done.data))
    joined = np.concatenate([_float(c.pcm) for c in job.chunks])
    assert joined.shape == final.shape
    assert final.std() > 1e-3  # not near-silence: the comparison means something
    assert np.corrcoef(joined, final)[0, 1] > 0.9999
    assert np.abs(joined - final).max() < 1e-3
    boundaries = np.cumsum([round(c.duration * RATE) for c in job.chunks])[:-1]
    jumps = np.abs(np.diff(joined))
    elsewhere = jumps.copy()
    elsewhere[boundaries - 1] = 0
    assert jumps[boundaries - 1].max() <= elsewhere.max()  # no click where two chunks meet


def test_streamer_decodes_each_frame_a_bounded_number_of_times(pipeline: MusicPipeline) -> None:
    """Linear work: however long the piece, the frames decoded for chunks stay within a constant factor of it."""
    decoded: list[int] = []
    codec = pipeline.codec
    original = codec.decode

    def counting(codes: Any, on_part: Any = None) -> Any:
        decoded.append(codes.shape[1])
        return original(codes, on_part)

    codec.decode = counting  # type: ignore[method-assign]
    try:
        job = Recorder()
        pipeline.render(GenerationParams("linear", 8, seed=1, stream_audio=True), job)
    finally:
        del codec.decode
    chunk_frames = sum(decoded[:-1])  # the last decode is the finished file's
    factor = (AudioStreamer.LEFT + AudioStreamer.EVERY + AudioStreamer.RIGHT) / AudioStreamer.EVERY
    assert decoded[-1] == 8 * 50
    assert chunk_frames <= factor * 8 * 50 + AudioStreamer.LEFT


def test_the_transformers_backend_streams_too(mono_model: pathlib.Path) -> None:
    reference = build_pipeline(Settings(model=str(mono_model), device="cpu", backend="transformers", mbd=False))
    job = Recorder()
    done = reference.render(GenerationParams("reference", 4, seed=2, normalization="none", stream_audio=True), job)
    assert [(c.offset, c.duration) for c in job.chunks] == [(0.0, 0.2), (0.2, 1.0), (1.2, 1.0), (2.2, 1.0), (3.2, 0.8)]
    joined = np.concatenate([_float(c.pcm) for c in job.chunks])
    final = _float(wav_data(done.data))
    assert np.corrcoef(joined, final)[0, 1] > 0.9999
