"""The HTTP API against a real server process running the tiny model: the spec's clients, events, WAV, busy,
disconnects and every validation rule."""

import base64
import contextlib
import io
import json
import subprocess
import threading
import time
import wave
from typing import Any

import pytest
import requests
import torch

from musicgen_api.engine.loading import dtype_name, resolve_decoder_dtype
from tests.conftest import Server, ServerFactory

SPEC_DESCRIPTION = "电子音乐，带有强烈的鼓点"


SPEC_PYTHON_CLIENT = """
import requests, json
print(requests.get('http://localhost:5000/api/healthcheck').json())
params = {"description": "电子音乐，带有强烈的鼓点", "duration": 30, "mbd": False,
          "top_k": 250, "top_p": 0.0, "temperature": 1.0, "cfg_coef": 3.0}
r = requests.post('http://localhost:5000/api/music', json=params,
                  headers={'Accept': 'text/event-stream'}, stream=True)
for line in r.iter_lines():
    if line:
        event = json.loads(line.decode('utf-8').split('data: ')[1])
        if event.get('status') == 'completed':
            audio_b64 = event['audio_data']      # base64 WAV
        elif event.get('status') == 'generating':
            print(f"progress: {event['progress']}%")
"""


def run_spec_python_client(url: str) -> dict[str, Any]:
    """The spec's Python client, unchanged but for the address; returns its variables (audio_b64)."""
    scope: dict[str, Any] = {}
    exec(compile(SPEC_PYTHON_CLIENT.replace("http://localhost:5000", url), "spec_client", "exec"), scope)
    return scope


def stream_events(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST and read the whole SSE stream, checking the framing line by line."""
    with requests.post(f"{url}/api/music", json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line.decode() for line in r.iter_lines()]
    events = []
    for line in lines:
        if line:
            assert line.startswith("data: "), f"non-data line in the stream: {line!r}"
            events.append(json.loads(line[len("data: ") :]))
    return events


def decode_wav(audio_b64: str) -> wave.Wave_read:
    return wave.open(io.BytesIO(base64.b64decode(audio_b64)), "rb")


def wait_healthy(url: str, within: float = 10.0) -> float:
    """Seconds until the healthcheck says healthy; fails past `within`."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        r = requests.get(f"{url}/api/healthcheck", timeout=5)
        if r.status_code == 200:
            assert r.json() == {"status": "healthy"}
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"server still busy after {within} s")


def test_healthcheck_idle(mono_server: Server) -> None:
    r = requests.get(f"{mono_server.url}/api/healthcheck", timeout=5)
    assert r.status_code == 200
    assert r.json() == {"status": "healthy"}


def test_spec_python_client_verbatim(mono_server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    """The spec's Python client, unchanged but for the address, at the spec's 30 s."""
    scope = run_spec_python_client(mono_server.url)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "{'status': 'healthy'}"
    progress = [int(line.removeprefix("progress: ").removesuffix("%")) for line in out[1:]]
    assert progress and progress[-1] == 100
    assert progress == sorted(progress)
    with decode_wav(scope["audio_b64"]) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (32000, 2, 1)
        assert w.getnframes() == 30 * 32000


def test_spec_curl_example(mono_server: Server) -> None:
    health = subprocess.run(["curl", "-s", f"{mono_server.url}/api/healthcheck"], capture_output=True, check=True)
    assert json.loads(health.stdout) == {"status": "healthy"}
    body = json.dumps({"description": SPEC_DESCRIPTION, "duration": 30}, ensure_ascii=False)
    result = subprocess.run(
        ["curl", "-s", "-N", "-X", "POST", f"{mono_server.url}/api/music", "-H", "Content-Type: application/json",
         "-H", "Accept: text/event-stream", "-d", body],
        capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    events = [json.loads(line[6:]) for line in result.stdout.decode().splitlines() if line]
    assert events[0] == {"status": "started"}
    assert events[-1]["status"] == "completed"
    with decode_wav(events[-1]["audio_data"]) as w:
        assert w.getnframes() == 30 * 32000


@pytest.mark.parametrize("duration", [1, 3])
def test_event_sequence_and_wav(mono_server: Server, duration: int) -> None:
    events = stream_events(mono_server.url, {"description": "calm piano", "duration": duration})
    assert events[0] == {"status": "started"}
    progress = [e["progress"] for e in events[1:-1]]
    assert all(e["status"] == "generating" and isinstance(e["progress"], int) for e in events[1:-1])
    assert progress == sorted(progress) and progress[0] >= 0 and progress[-1] == 100
    done = events[-1]
    assert done["status"] == "completed" and done["format"] == "wav" and done["mime_type"] == "audio/wav"
    assert (done["sample_rate"], done["channels"], done["duration"]) == (32000, 1, float(duration))
    assert isinstance(done["seed"], int)
    with decode_wav(events[-1]["audio_data"]) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (32000, 2, 1)
        assert w.getnframes() == duration * 32000


def test_stereo_model_gives_two_channels(stereo_server: Server) -> None:
    events = stream_events(stereo_server.url, {"description": "wide stereo pads", "duration": 2})
    with decode_wav(events[-1]["audio_data"]) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (32000, 2, 2)
        assert w.getnframes() == 2 * 32000


def test_transformers_backend_serves_too(server_factory: ServerFactory, mono_model: Any) -> None:
    server = server_factory(mono_model, "--backend", "transformers", "--max-duration", "5", "--no-mbd")
    events = stream_events(server.url, {"description": "reference path", "duration": 2})
    assert events[-1]["status"] == "completed"
    with decode_wav(events[-1]["audio_data"]) as w:
        assert w.getnframes() == 2 * 32000


def test_int8_server_serves_and_says_so(server_factory: ServerFactory, mono_model: Any) -> None:
    """`--quantize int8`: fbgemm's dynamic int8 on an x86 CPU, named in /api/info; a full request through it."""
    server = server_factory(mono_model, "--quantize", "int8", "--max-duration", "5", "--no-mbd")
    info = requests.get(f"{server.url}/api/info", timeout=5).json()
    assert (info["quantize"], info["decoder_weights"]) == ("int8", "int8")
    events = stream_events(server.url, {"description": "quantized", "duration": 3, "seed": 1})
    with decode_wav(events[-1]["audio_data"]) as w:
        assert w.getnframes() == 3 * 32000 and len(set(w.readframes(3 * 32000))) > 16  # not silence


INVALID_BODIES: list[tuple[Any, str, str | None]] = [  # body, a word the message has, the field it names
    ({}, "description", "description"),
    ({"description": ""}, "description", "description"),
    ({"description": "   \n\t"}, "description", "description"),
    ({"description": None}, "description", "description"),
    ({"description": 12}, "description", "description"),
    ({"description": "x", "duration": 0}, "duration", "duration"),
    ({"description": "x", "duration": -3}, "duration", "duration"),
    ({"description": "x", "duration": "30"}, "duration", "duration"),
    ({"description": "x", "duration": 30.5}, "duration", "duration"),
    ({"description": "x", "duration": 2.0}, "duration", "duration"),
    ({"description": "x", "duration": True}, "duration", "duration"),
    ({"description": "x", "duration": 121}, "duration", "duration"),
    ({"description": "x", "duration": 10**30}, "duration", "duration"),
    ({"description": "x", "mbd": 1}, "mbd", "mbd"),
    ({"description": "x", "mbd": "false"}, "mbd", "mbd"),
    ({"description": "x", "top_k": 0}, "top_k", "top_k"),
    ({"description": "x", "top_k": 2.5}, "top_k", "top_k"),
    ({"description": "x", "top_k": True}, "top_k", "top_k"),
    ({"description": "x", "top_p": -0.1}, "top_p", "top_p"),
    ({"description": "x", "top_p": 1.5}, "top_p", "top_p"),
    ({"description": "x", "top_p": False}, "top_p", "top_p"),
    ({"description": "x", "top_p": "0.5"}, "top_p", "top_p"),
    ({"description": "x", "temperature": 0}, "temperature", "temperature"),
    ({"description": "x", "temperature": -1.0}, "temperature", "temperature"),
    ({"description": "x", "temperature": True}, "temperature", "temperature"),
    ({"description": "x", "cfg_coef": True}, "cfg_coef", "cfg_coef"),
    ({"description": "x", "cfg_coef": None}, "cfg_coef", "cfg_coef"),
    ({"description": "x", "temprature": 1.0}, "temprature", "temprature"),
    ({"description": "x", "sed": 3}, "sed", "sed"),
    ([{"description": "x"}], "JSON object", None),
    ("just a string", "JSON object", None),
    ({"description": "x" * 2001}, "2000", "description"),
]


@pytest.mark.parametrize(("body", "named", "field"), INVALID_BODIES)
def test_invalid_requests_are_400_naming_the_field(
    mono_server: Server, body: Any, named: str, field: str | None
) -> None:
    r = requests.post(f"{mono_server.url}/api/music", json=body, timeout=10)
    assert r.status_code == 400, r.text
    assert named in r.json()["error"]
    assert r.json() == ({"error": r.json()["error"]} if field is None else {"error": r.json()["error"], "field": field})


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (b'{"description": "x", "temperature": NaN}', "NaN"),
        (b'{"description": "x", "cfg_coef": Infinity}', "Infinity"),
        (b'{"description": "x", "top_p": -Infinity}', "Infinity"),
        (b'{"description": "x", "duration": 5', "JSON"),
        (b"not json at all", "JSON"),
        (b"", "JSON"),
        (b'{"description": "\xff\xfe"}', "JSON"),
    ],
)
def test_malformed_bodies_are_400(mono_server: Server, raw: bytes, named: str) -> None:
    r = requests.post(
        f"{mono_server.url}/api/music", data=raw, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert r.status_code == 400, r.text
    assert named in r.json()["error"]


@pytest.mark.parametrize("stereo", [False, True])
def test_mbd_decodes_to_the_exact_duration(mono_server: Server, stereo_server: Server, stereo: bool) -> None:
    server = stereo_server if stereo else mono_server
    events = stream_events(server.url, {"description": "warm analog synth pads", "duration": 2, "mbd": True})
    progress = [e["progress"] for e in events[1:-1]]
    assert progress == sorted(progress) and progress[-1] == 100
    with decode_wav(events[-1]["audio_data"]) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (32000, 2, 2 if stereo else 1)
        assert w.getnframes() == 2 * 32000


def test_mbd_refused_clearly_when_turned_off(server_factory: ServerFactory, mono_model: Any) -> None:
    server = server_factory(mono_model, "--no-mbd", "--max-duration", "5")
    r = requests.post(f"{server.url}/api/music", json={"description": "x", "duration": 1, "mbd": True}, timeout=10)
    assert r.status_code == 400
    assert "mbd" in r.json()["error"] and "--no-mbd" in r.json()["error"]
    wait_healthy(server.url, within=2)


def test_unknown_route_is_json_404(mono_server: Server) -> None:
    r = requests.get(f"{mono_server.url}/api/nothing", timeout=5)
    assert r.status_code == 404
    assert "error" in r.json()


def test_one_generation_at_a_time(mono_server: Server) -> None:
    """Of several concurrent POSTs exactly one streams; the rest get 503 with Retry-After; health follows."""
    results: list[tuple[int, str | None, list[dict[str, Any]]]] = []
    lock = threading.Lock()
    go = threading.Barrier(5)

    def post() -> None:
        go.wait()
        with requests.post(
            f"{mono_server.url}/api/music", json={"description": "busy test", "duration": 8}, stream=True, timeout=120
        ) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line] if r.status_code == 200 else []
            with lock:
                results.append((r.status_code, r.headers.get("Retry-After"), events or [r.json()]))

    threads = [threading.Thread(target=post) for _ in range(5)]
    for t in threads:
        t.start()
    busy_seen = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not busy_seen:
        r = requests.get(f"{mono_server.url}/api/healthcheck", timeout=5)
        busy_seen = r.status_code == 503 and r.json() == {"status": "busy"}
    for t in threads:
        t.join(timeout=120)
    statuses = sorted(code for code, _, _ in results)
    assert statuses == [200, 503, 503, 503, 503]
    assert busy_seen
    for code, retry_after, body in results:
        if code == 503:
            assert retry_after is not None and int(retry_after) > 0
            assert "error" in body[0]
        else:
            assert body[-1]["status"] == "completed"
    wait_healthy(mono_server.url, within=5)


def test_disconnect_stops_generation_and_frees_the_slot(mono_server: Server) -> None:
    body = {"description": "long piece to abandon", "duration": 30}
    mark = mono_server.mark()
    with contextlib.closing(requests.post(f"{mono_server.url}/api/music", json=body, stream=True, timeout=60)) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            if line and b'"generating"' in line:
                seen += 1
                if seen == 3:
                    break
    wait_healthy(mono_server.url, within=3)
    log = mono_server.wait_for_log(mark, "generation cancelled after")
    assert "completed in" not in log  # stopped, not run to the end
    events = stream_events(mono_server.url, {"description": "next one", "duration": 1})
    assert events[-1]["status"] == "completed"


def test_info_describes_model_and_limits(mono_server: Server, stereo_server: Server) -> None:
    info = requests.get(f"{mono_server.url}/api/info", timeout=5).json()
    assert (info["channels"], info["sample_rate"], info["melody"], info["window"]) == (1, 32000, False, 30)
    assert (info["max_duration"], info["max_description_chars"], info["mbd_available"]) == (120, 2000, True)
    assert info["fields"]["duration"]["maximum"] == 120 and info["fields"]["top_k"]["default"] == 250
    assert set(info["fields"]) >= {"description", "duration", "mbd", "seed", "format", "audio_prompt"}
    weights = dtype_name(resolve_decoder_dtype("auto", torch.device("cpu")))  # float16 on x86 CPUs
    assert (info["dtype"], info["decoder_dtype"], info["decoder_weights"]) == (
        "float32", "bfloat16" if weights == "bfloat16" else "float32", weights)  # fmt: skip
    assert requests.get(f"{stereo_server.url}/api/info", timeout=5).json()["channels"] == 2


def test_event_stream_headers(mono_server: Server) -> None:
    """What keeps proxies and browsers from buffering or caching the stream."""
    with requests.post(f"{mono_server.url}/api/music", json={"description": "x", "duration": 1}, stream=True,
                       timeout=60) as r:  # fmt: skip
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        assert "content-length" not in r.headers
        for _ in r.iter_lines():
            pass


class _BrokenGenerations:
    """A `Generations` whose start fails in a way nobody planned for."""

    busy = False

    def describe(self) -> dict[str, Any]:
        return {}

    async def start(self, params: Any) -> Any:
        raise RuntimeError("secret internal detail")


def test_an_unexpected_error_before_the_stream_is_a_json_500() -> None:
    from fastapi.testclient import TestClient

    from musicgen_api.api.app import create_app
    from musicgen_api.config import Settings

    client = TestClient(create_app(_BrokenGenerations(), Settings()), raise_server_exceptions=False)
    r = client.post("/api/music", json={"description": "x", "duration": 1})
    assert r.status_code == 500
    assert r.json() == {"error": "internal server error; the server log has the details"}
    assert client.get("/api/healthcheck").status_code == 200  # and it keeps serving
