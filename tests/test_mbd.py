"""MultiBand Diffusion against audiocraft's own output, the checkpoint loader's refusals, and cancellation.

The fixtures in tests/fixtures/mbd were made by audiocraft itself (see their README); the checkpoint goes through
the same loader a user's `--mbd-weights` file does.
"""

import asyncio
import base64
import http.server
import io
import pathlib
import subprocess
import threading
import time
import wave
from typing import Any

import numpy as np
import pytest
import requests
import torch
from transformers import EncodecModel

from musicgen_api.audio.codec import EncodecCodec
from musicgen_api.audio.formats import encode_audio
from musicgen_api.audio.mbd import MultiBandDiffusion, load_mbd
from musicgen_api.audio.mbd_checkpoint import MBDLoadError, load_checkpoint
from musicgen_api.config import Settings
from musicgen_api.generation import GenerationParams
from musicgen_api.pipeline import build_pipeline
from musicgen_api.service import Completed, Failed, GenerationService
from tests.conftest import MBD_FIXTURE, OFFLINE_ENV, Recorder, Server, ServerFactory, free_port, serve_command
from tests.test_api import stream_events

FIXTURES = MBD_FIXTURE.parent


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return torch.load(FIXTURES / "mbd_tiny_io.pt", weights_only=True)


@pytest.fixture(scope="module")
def codec() -> EncodecModel:
    return EncodecModel.from_pretrained(FIXTURES / "codec").eval()


@pytest.fixture(scope="module")
def mbd(codec: EncodecModel) -> MultiBandDiffusion:
    return load_mbd(str(MBD_FIXTURE), codec, torch.device("cpu"))


@pytest.mark.parametrize("case", ["mono", "stereo"])
def test_matches_audiocraft(mbd: MultiBandDiffusion, reference: dict[str, Any], case: str) -> None:
    data = reference["cases"][case]
    noise = data["noise"]  # every draw audiocraft made, 20 per band in order

    def replay(band: int, index: int, shape: torch.Size) -> torch.Tensor:
        assert noise[20 * band + index].shape == shape
        return noise[20 * band + index]

    calls: list[int] = []
    torch.testing.assert_close(mbd.latent(data["codes"]), data["emb"], atol=1e-6, rtol=0)
    out = mbd.decode(data["codes"], data["codec_wav"], lambda: calls.append(1), replay)
    torch.testing.assert_close(out, data["output"], atol=1e-5, rtol=0)
    assert len(calls) == mbd.calls == 80


@pytest.mark.parametrize(("dtype", "least_snr_db"), [(torch.float16, 55.0), (torch.bfloat16, 40.0)])
@pytest.mark.parametrize("case", ["mono", "stereo"])
def test_half_precision_unets_stay_close_to_audiocraft(
    codec: EncodecModel, reference: dict[str, Any], case: str, dtype: torch.dtype, least_snr_db: float
) -> None:
    """Measured on this fixture: float16 U-Nets 64 dB SNR (max error 1.4e-4 at a 0.12 peak), bfloat16 46 dB; the
    server runs float16 on CUDA. Bounds a little below what was measured."""
    half = load_mbd(str(MBD_FIXTURE), codec, torch.device("cpu"))
    for band in half.bands:
        band.unet.to(dtype)
    data = reference["cases"][case]
    noise = data["noise"]
    out = half.decode(data["codes"], data["codec_wav"], lambda: None, lambda b, i, _: noise[20 * b + i])
    expected = data["output"]
    assert out.dtype == torch.float32
    snr = 10 * torch.log10(expected.pow(2).mean() / (out - expected).pow(2).mean())
    assert snr > least_snr_db


def test_codec_reference_matches(codec: EncodecModel, reference: dict[str, Any]) -> None:
    data = reference["cases"]["mono"]
    wave = EncodecCodec(codec, audio_channels=1).decode(data["codes"][0])
    torch.testing.assert_close(wave, data["codec_wav"][0], atol=1e-5, rtol=0)


def test_loader_names_missing_file() -> None:
    with pytest.raises(MBDLoadError, match="--no-mbd"):
        load_checkpoint("/nonexistent/mbd_musicgen_32khz.th")


def test_loader_rejects_corrupt_file(tmp_path: pathlib.Path) -> None:
    broken = tmp_path / "broken.th"
    broken.write_bytes(MBD_FIXTURE.read_bytes()[:5000])
    with pytest.raises(MBDLoadError, match="not a readable MultiBand Diffusion checkpoint"):
        load_checkpoint(str(broken))


class _Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path("/tmp/musicgen-api-pickle-ran"),))


def test_loader_never_runs_code_from_the_file(tmp_path: pathlib.Path) -> None:
    marker = pathlib.Path("/tmp/musicgen-api-pickle-ran")
    marker.unlink(missing_ok=True)
    hostile = tmp_path / "hostile.th"
    torch.save({"sample_rate": 32000, "n_bands": 1, 0: _Exploit()}, hostile)
    with pytest.raises(MBDLoadError):
        load_checkpoint(str(hostile))
    assert not marker.exists()


def test_loader_rejects_other_files(tmp_path: pathlib.Path) -> None:
    other = tmp_path / "weights.th"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    with pytest.raises(MBDLoadError, match="no sample_rate / n_bands"):
        load_checkpoint(str(other))


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("diffusion_unet", "transformer", True, "transformer is not implemented"),
        ("diffusion_unet", "bilstm", True, "bilstm is not implemented"),
        ("diffusion_unet", "codec_dim", None, "unconditional"),
        ("diffusion_unet", "dropout", 0.1, "dropout"),
        ("schedule", "repartition", "sigmoid", "repartition"),
        ("processor", "name", "other_processor", "not implemented"),
    ],
)
def test_unimplemented_variants_are_refused_by_name(
    codec: EncodecModel, section: str, key: str, value: Any, message: str
) -> None:
    checkpoint = load_checkpoint(str(MBD_FIXTURE))
    band = checkpoint.bands[3]  # processor on, so every section is in use
    band.cfg[section][key] = value
    with pytest.raises(MBDLoadError, match=message):
        MultiBandDiffusion(checkpoint, codec)


def test_weights_for_another_codec_are_refused() -> None:
    from transformers import EncodecConfig

    config = EncodecConfig(
        sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], codebook_dim=32, hidden_size=32, num_filters=4
    )
    wider = EncodecModel(config)
    with pytest.raises(MBDLoadError, match="another codec"):
        MultiBandDiffusion(load_checkpoint(str(MBD_FIXTURE)), wider)


def test_stereo_pipeline_gives_two_channels(stereo_model: pathlib.Path) -> None:
    settings = Settings(model=str(stereo_model), device="cpu", max_duration=2, mbd_weights=str(MBD_FIXTURE))
    pipeline = build_pipeline(settings)
    seen = Recorder()
    audio = pipeline.render(GenerationParams("stereo pads", duration=1, mbd=True), seen)
    with wave.open(io.BytesIO(audio.data)) as w:
        assert (w.getnchannels(), w.getnframes()) == (2, 32000)
    assert seen.reports == sorted(seen.reports) and seen.reports[-1] == 1


def test_cancel_during_diffusion_stops_within_one_pass(mono_model: pathlib.Path) -> None:
    settings = Settings(model=str(mono_model), device="cpu", max_duration=10, mbd_weights=str(MBD_FIXTURE))
    pipeline = build_pipeline(settings)
    assert pipeline.mbd is not None
    unet = pipeline.mbd.bands[1].unet
    passes_after_cancel: list[int] = []
    started, cancelled = threading.Event(), threading.Event()
    original = unet.forward

    def watched(*args: Any) -> torch.Tensor:
        if cancelled.is_set():
            passes_after_cancel.append(1)
        started.set()
        return original(*args)

    unet.forward = watched  # type: ignore[method-assign]
    service = GenerationService(pipeline)

    async def run() -> list[Any]:
        job = await service.start(GenerationParams("cancel me", duration=10, mbd=True))
        events = []
        async for event in job.events():
            events.append(event)
            if started.is_set() and not cancelled.is_set():
                cancelled.set()
                job.cancel()
        return events

    began = time.monotonic()
    events = asyncio.run(run())
    service.shutdown()
    assert isinstance(events[-1], Failed) and "cancelled" in events[-1].message
    assert not any(isinstance(e, Completed) for e in events)
    assert not service.busy
    assert len(passes_after_cancel) <= 1
    assert time.monotonic() - began < 60


@pytest.fixture(scope="module")
def bfloat16_mono_server(server_factory: ServerFactory, mono_model: pathlib.Path) -> Server:
    """The half-precision set-up a GPU server has by default (bfloat16 stands in for float16 on CPU), with a 2 s
    window so a 3 s piece takes two."""
    return server_factory(mono_model, "--dtype", "bfloat16", "--window", "2", "--extend-stride", "1",
                          "--max-duration", "4")  # fmt: skip


def _mbd_wav(server: Server, body: dict[str, Any]) -> wave.Wave_read:
    events = stream_events(server.url, {"mbd": True, "seed": 3, **body})
    assert events[-1]["status"] == "completed", events[-1]
    return wave.open(io.BytesIO(base64.b64decode(events[-1]["audio_data"])))


def test_mbd_with_a_half_precision_model_over_http(
    bfloat16_mono_server: Server, server_factory: ServerFactory, stereo_model: pathlib.Path
) -> None:
    with _mbd_wav(bfloat16_mono_server, {"description": "drums", "duration": 1}) as w:
        assert (w.getnchannels(), w.getnframes()) == (1, 32000)
    stereo = server_factory(stereo_model, "--dtype", "bfloat16", "--max-duration", "2")
    with _mbd_wav(stereo, {"description": "pads", "duration": 1}) as w:
        assert (w.getnchannels(), w.getnframes()) == (2, 32000)


def test_mbd_on_a_long_piece_and_a_continuation_without_its_prompt(bfloat16_mono_server: Server) -> None:
    with _mbd_wav(bfloat16_mono_server, {"description": "a long piece", "duration": 3}) as w:  # two windows
        assert w.getnframes() == 3 * 32000
    prompt = encode_audio(0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(0)), 32000, "wav")
    body = {"description": "go on", "duration": 2, "audio_prompt": base64.b64encode(prompt).decode(),
            "return_prompt": False}  # fmt: skip
    with _mbd_wav(bfloat16_mono_server, body) as w:
        assert w.getnframes() == 2 * 32000


def test_mbd_streams_the_encodec_preview_and_ends_with_mbds_file(bfloat16_mono_server: Server) -> None:
    """With mbd and stream_audio the chunks are EnCodec's decode as the piece is made; the file is MBD's."""
    body = {"description": "preview", "duration": 3, "seed": 3, "normalization": "none"}
    streamed = stream_events(bfloat16_mono_server.url, {**body, "mbd": True, "stream_audio": True})
    chunks = [e for e in streamed if e.get("status") == "audio"]
    assert sum(c["duration"] for c in chunks) == pytest.approx(3.0) and chunks[0]["offset"] == 0
    preview = np.concatenate([np.frombuffer(base64.b64decode(c["audio_chunk"]), "<i2") for c in chunks])
    encodec = stream_events(bfloat16_mono_server.url, body)[-1]  # the same codes, decoded by EnCodec
    mbd = streamed[-1]
    samples = {}
    for name, event in (("encodec", encodec), ("mbd", mbd)):
        with wave.open(io.BytesIO(base64.b64decode(event["audio_data"]))) as w:
            samples[name] = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert np.corrcoef(preview, samples["encodec"])[0, 1] > 0.999  # the preview is EnCodec's audio
    assert not np.array_equal(samples["mbd"], samples["encodec"])  # the file is not


def _mbd_state(server: Server) -> dict[str, Any]:
    return dict(requests.get(f"{server.url}/api/info", timeout=5).json()["mbd"])


def _wait_mbd(server: Server, state: str, within: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while (now := _mbd_state(server))["state"] != state:
        assert time.monotonic() < deadline, f"MBD still {now} after {within} s"
        time.sleep(0.1)
    return now


def test_unreachable_weights_leave_mbd_unavailable_not_the_server(
    server_factory: ServerFactory, mono_model: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """Offline, with MBD weights nowhere on this machine and no --mbd/--no-mbd: the server serves at once without
    MBD, says so once, and answers mbd: true with a 400 saying what to do."""
    began = time.monotonic()
    server = server_factory(mono_model, "--mbd-weights", "example/not-downloaded-mbd", env={"HF_HOME": str(tmp_path)})
    assert time.monotonic() - began < 60
    assert stream_events(server.url, {"description": "plain", "duration": 1})[-1]["status"] == "completed"
    state = _wait_mbd(server, "unavailable")
    assert "example/not-downloaded-mbd" in state["reason"]
    assert requests.get(f"{server.url}/api/info", timeout=5).json()["mbd_available"] is False
    r = requests.post(f"{server.url}/api/music", json={"description": "x", "duration": 1, "mbd": True}, timeout=10)
    assert r.status_code == 400 and r.json()["field"] == "mbd" and "--mbd-weights" in r.json()["error"]
    warnings = [line for line in server.log().splitlines() if "MultiBand Diffusion is unavailable" in line]
    assert len(warnings) == 1 and "--no-mbd" in warnings[0]


def test_required_mbd_without_weights_stops_startup(mono_model: pathlib.Path, tmp_path: pathlib.Path) -> None:
    command = serve_command("--model", str(mono_model), "--port", str(free_port()), "--mbd",
                            "--mbd-weights", "example/not-downloaded-mbd")  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**OFFLINE_ENV, "HF_HOME": str(tmp_path)})  # fmt: skip
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(errors) == 1 and "--no-mbd" in errors[0] and "Traceback" not in result.stderr


class _SlowHub(http.server.BaseHTTPRequestHandler):
    """The hub's file endpoint for one MBD checkpoint, which holds the download until the test releases it."""

    release = threading.Event()
    payload = MBD_FIXTURE.read_bytes()

    def _headers(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.send_header("ETag", '"mbd-fixture"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
        self._headers()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.release.wait(60)
        self._headers()
        self.wfile.write(self.payload)

    def log_message(self, *args: object) -> None:
        pass


def test_weights_fetched_in_the_background(
    server_factory: ServerFactory, mono_model: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """A hub whose download takes its time: plain requests are served meanwhile, mbd: true gets a 503 with
    Retry-After until the weights are in, then it completes."""
    handler = type("Hub", (_SlowHub,), {"release": threading.Event()})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as hub:
        threading.Thread(target=hub.serve_forever, daemon=True).start()
        env = {"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_port}",
               "HF_HUB_DISABLE_XET": "1"}  # fmt: skip
        server = server_factory(mono_model, "--mbd-weights", "example/slow-mbd", env=env)
        assert _mbd_state(server)["state"] == "loading"
        assert stream_events(server.url, {"description": "plain", "duration": 1})[-1]["status"] == "completed"
        body = {"description": "x", "duration": 1, "mbd": True}
        r = requests.post(f"{server.url}/api/music", json=body, timeout=10)
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
        assert "still being fetched" in r.json()["error"]
        assert requests.get(f"{server.url}/api/healthcheck", timeout=5).status_code == 200  # not busy: idle
        handler.release.set()
        _wait_mbd(server, "ready")
        assert stream_events(server.url, body)[-1]["status"] == "completed"
        hub.shutdown()
