"""The service under abuse: request storms, abandoned streams, stuck clients, hostile bodies, faults mid-generation,
SIGTERM, and the operator's tools (API key, CORS, metrics). Real server processes on loopback, bounded in time."""

import asyncio
import contextlib
import json
import math
import os
import pathlib
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import requests
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from musicgen_api.config import Settings
from musicgen_api.generation import GenerationParams
from musicgen_api.pipeline import build_pipeline
from musicgen_api.service import Completed, Failed, GenerationService
from tests.conftest import Server, ServerFactory, start_server, stop_server
from tests.test_api import stream_events, wait_healthy
from tests.test_client_cli import generation_running

BODY = {"description": "storm", "duration": 3}


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory, mono_model: pathlib.Path) -> Server:
    return server_factory(mono_model, "--max-duration", "120", "--send-timeout", "2", "--no-mbd")


def unswallowable_seconds(client_buffer: int) -> int:
    """Seconds of mono 16-bit audio whose completed event (base64) is twice what the kernel can buffer between the
    server and a client that does not read: the server's largest autotuned send buffer plus the client's receive
    buffer (the kernel doubles what setsockopt asks for)."""
    send_max = int(pathlib.Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    buffered = send_max + 2 * client_buffer
    base64_per_second = 32000 * 2 * 4 / 3
    return math.ceil(2 * buffered / base64_per_second)


def test_storm_of_fifty_posts(server: Server) -> None:
    """One request holds the slot (explicitly, so the test does not depend on how fast a clip is made); fifty more
    arrive at once: every one is the JSON 503 with Retry-After, the healthcheck answers quickly throughout, and the
    server takes the next request once the slot is free."""
    go = threading.Barrier(50)
    results: list[tuple[int, str | None, Any]] = []
    lock = threading.Lock()

    def post() -> None:
        go.wait()
        with requests.post(f"{server.url}/api/music", json=BODY, stream=True, timeout=120) as r:
            answer = r.json() if r.status_code != 200 else None
            with lock:
                results.append((r.status_code, r.headers.get("Retry-After"), answer))

    with generation_running(server.url):
        threads = [threading.Thread(target=post) for _ in range(50)]
        for t in threads:
            t.start()
        latencies = []
        while any(t.is_alive() for t in threads):
            started = time.perf_counter()
            assert requests.get(f"{server.url}/api/healthcheck", timeout=5).status_code == 503
            latencies.append(time.perf_counter() - started)
        for t in threads:
            t.join()
    assert [code for code, _, _ in results] == [503] * 50
    assert all(retry is not None and int(retry) > 0 and "try again" in body["error"] for _, retry, body in results)
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else latencies[0]
    print(f"healthcheck during generation: {len(latencies)} calls, p99 {1000 * p99:.1f} ms")  # noqa: T201
    assert stream_events(server.url, {"description": "after the storm", "duration": 1})[-1]["status"] == "completed"


def _process_stats(pid: int) -> tuple[int, int, int]:
    """(resident bytes, threads, open file descriptors) of a process, from /proc."""
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    rss = int(fields["VmRSS"].split()[0]) * 1024
    return rss, int(fields["Threads"]), len(os.listdir(f"/proc/{pid}/fd"))


def _abandon(server: Server, when: str) -> None:
    url = server.url
    if when == "before-first-byte":
        mark = server.mark()
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as s:
            body = json.dumps(BODY).encode()
            s.sendall(b"POST /api/music HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
        # The server may not have read the request yet: wait until its job has ended, or the next request could
        # arrive while it still holds the slot.
        deadline = time.monotonic() + 30
        while not any(end in server.log_since(mark) for end in ("cancelled after", "completed in")):
            assert time.monotonic() < deadline, "the abandoned request never ended"
            time.sleep(0.02)
        return
    threshold = {"mid-progress": random.randint(5, 60), "final-encoding": 99}[when]
    with requests.post(f"{url}/api/music", json=BODY, stream=True, timeout=60) as r:
        for line in r.iter_lines():
            if line and json.loads(line[6:]).get("progress", -1) >= threshold:
                break


def test_disconnect_storm_frees_the_slot_and_leaks_nothing(server: Server) -> None:
    random.seed(7)
    for _ in range(3):  # warm up allocator and thread pools before measuring
        stream_events(server.url, {"description": "warm", "duration": 1})
    before = _process_stats(server.process.pid)
    for i in range(50):
        if i % 5 == 4:
            assert stream_events(server.url, {"description": "soak", "duration": 1})[-1]["status"] == "completed"
            continue
        _abandon(server, ["before-first-byte", "mid-progress", "final-encoding"][i % 3])
        wait_healthy(server.url, within=3)
    time.sleep(0.5)
    after = _process_stats(server.process.pid)
    rss = f"RSS {before[0] >> 20} -> {after[0] >> 20} MiB"
    soak = f"{rss}, threads {before[1]} -> {after[1]}, fds {before[2]} -> {after[2]}"
    print(f"soak: {soak}")  # noqa: T201
    assert after[1] <= before[1], "threads grew"
    assert after[2] <= before[2] + 2, "file descriptors grew"
    assert after[0] <= before[0] * 1.10 + (16 << 20), "resident memory grew"


@pytest.mark.parametrize(("reads", "stream_audio"), [("never", False), ("a byte a second", False), ("never", True)])
def test_client_that_does_not_keep_up_is_dropped(server: Server, reads: str, stream_audio: bool) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    log_before = len(server.log())
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        seconds = unswallowable_seconds(4096)
        assert seconds <= 120, f"this machine's socket buffers need a {seconds} s clip; raise the fixture's limit"
        request = {"description": "never read", "duration": seconds, "seed": 1, "stream_audio": stream_audio}
        body = json.dumps(request).encode()
        s.sendall(b"POST /api/music HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
        if reads == "a byte a second":

            def trickle() -> None:
                with contextlib.suppress(OSError):
                    while s.recv(1):
                        time.sleep(1)

            threading.Thread(target=trickle, daemon=True).start()
        wait_healthy(server.url, within=120)  # the generation ends or is stopped; it cannot hold the slot
        deadline = time.monotonic() + 15
        while "did not read" not in server.log()[log_before:] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "did not read" in server.log()[log_before:]
        s.settimeout(10)
        tail = b""
        try:
            while chunk := s.recv(1 << 16):  # the server closed its side: what it had buffered, then EOF
                tail = (tail + chunk)[-16:]
        except ConnectionResetError:
            pass
        assert not tail.endswith(b"0\r\n\r\n")  # the response was cut, not finished
    assert stream_events(server.url, {"description": "next", "duration": 1})[-1]["status"] == "completed"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
FIELDS = ["description", "duration", "mbd", "top_k", "top_p", "temperature", "cfg_coef", "seed", "format",
          "normalization", "return_prompt", "audio_prompt"]  # fmt: skip


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        JSON_VALUES,
        st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6),
        st.fixed_dictionaries({"description": st.text(min_size=1, max_size=40), "duration": st.integers(-2, 1)},
                              optional={"top_k": st.integers(-5, 300), "top_p": st.floats(-1, 2),
            "temperature": st.floats(-1, 3), "cfg_coef": st.floats(allow_nan=True), "format": st.text(max_size=5)}),
    )
)  # fmt: skip
def test_fuzzed_bodies_never_get_a_server_error(server: Server, body: Any) -> None:
    try:
        raw = json.dumps(body, allow_nan=True).encode()
    except ValueError:
        return
    with requests.post(f"{server.url}/api/music", data=raw, headers={"Content-Type": "application/json"},
                       stream=True, timeout=60) as r:  # fmt: skip
        assert r.status_code in (200, 400), r.text
        if r.status_code == 200:
            events = [json.loads(line[6:]) for line in r.iter_lines(chunk_size=1 << 16) if line]
            assert events[-1].get("status") == "completed"
        else:
            assert "error" in r.json() and set(r.json()) <= {"error", "field"}


@pytest.mark.parametrize(
    ("data", "headers", "status"),
    [
        (b'{"description": "x"', {"Content-Type": "application/json"}, 400),
        (b'{"description": "x", "duration": 1}', {"Content-Type": "text/plain"}, 415),
        (b'{"description": "x", "duration": 1}', {"Content-Type": "application/x-www-form-urlencoded"}, 415),
        (b"[" * 100_000 + b"]" * 100_000, {"Content-Type": "application/json"}, 400),
        (b'{"description": "\xc3\x28 bad utf-8"}', {"Content-Type": "application/json"}, 400),
        (json.dumps({"description": "x" * 1_000_000}).encode(), {"Content-Type": "application/json"}, 400),
    ],
    ids=["truncated", "text-plain", "form", "deep-nesting", "invalid-utf8", "1mb-description"],
)
def test_hostile_bodies_get_a_clean_4xx(server: Server, data: bytes, headers: dict[str, str], status: int) -> None:
    r = requests.post(f"{server.url}/api/music", data=data, headers=headers, timeout=60)
    assert r.status_code == status, r.text[:200]
    error = r.json()["error"]
    assert "Traceback" not in error and ".py" not in error and "/work" not in error


def test_100_mb_body_is_refused_before_it_is_read(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10) as s:
        s.sendall(b"POST /api/music HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 104857600\r\n\r\n" + b"x" * 65536)  # fmt: skip
        answer = ""
        while "at most" not in answer and (chunk := s.recv(65536)):
            answer += chunk.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413")
    assert "at most" in answer


def test_openapi_describes_the_event_stream(server: Server) -> None:
    spec = requests.get(f"{server.url}/openapi.json", timeout=5).json()
    music = spec["paths"]["/api/music"]["post"]
    assert "text/event-stream" in music["responses"]["200"]["content"]
    assert set(music["requestBody"]["content"]["application/json"]["schema"]["properties"]) >= {"description", "seed"}


def test_metrics_count_what_happened(server: Server) -> None:
    def scrape() -> dict[str, float]:
        text = requests.get(f"{server.url}/metrics", timeout=5).text
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line[:1] != "#"}

    def outcome(name: str) -> str:
        return f'musicgen_generations_total{{outcome="{name}"}}'

    before = scrape()
    stream_events(server.url, {"description": "count me", "duration": 2})
    with generation_running(server.url):  # cancelled when the block ends
        assert requests.post(f"{server.url}/api/music", json=BODY, timeout=10).status_code == 503
    wait_healthy(server.url)
    after = scrape()
    assert after[outcome("completed")] == before.get(outcome("completed"), 0) + 1
    assert after[outcome("started")] == before.get(outcome("started"), 0) + 2
    assert after[outcome("cancelled")] == before.get(outcome("cancelled"), 0) + 1
    assert after["musicgen_busy_rejections_total"] == before.get("musicgen_busy_rejections_total", 0) + 1
    assert after["musicgen_audio_seconds_total"] == before.get("musicgen_audio_seconds_total", 0) + 2
    assert after["musicgen_generation_seconds_count"] == before.get("musicgen_generation_seconds_count", 0) + 1
    assert after["musicgen_decode_steps_per_second"] > 0


def test_api_key_and_cors(server_factory: ServerFactory, mono_model: pathlib.Path, tmp_path: pathlib.Path) -> None:
    guarded = server_factory(mono_model, "--api-key", "s3cret", "--cors-origins", "https://app.example",
                             "--max-duration", "2", "--no-mbd")  # fmt: skip
    url, auth = guarded.url, {"Authorization": "Bearer s3cret"}
    assert requests.get(f"{url}/api/healthcheck", timeout=5).status_code == 200
    for path in ("/api/info", "/metrics", "/openapi.json"):
        r = requests.get(f"{url}{path}", timeout=5)
        assert r.status_code == 401 and "API key" in r.json()["error"]
        assert requests.get(f"{url}{path}", headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
        assert requests.get(f"{url}{path}", headers=auth, timeout=5).status_code == 200
    assert requests.post(f"{url}/api/music", json={"description": "x", "duration": 1}, timeout=5).status_code == 401
    with requests.post(f"{url}/api/music", json={"description": "x", "duration": 1}, headers=auth, stream=True,
                       timeout=30) as r:  # fmt: skip
        assert r.status_code == 200 and list(r.iter_lines())
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    r = requests.options(f"{url}/api/music", headers=preflight, timeout=5)
    assert r.headers.get("access-control-allow-origin") == "https://app.example"
    r = requests.options(f"{url}/api/music", headers={**preflight, "Origin": "https://evil.example"}, timeout=5)
    assert r.headers.get("access-control-allow-origin") is None

    clip = tmp_path / "clip.wav"
    command = [sys.executable, "-m", "musicgen_api", "generate", "x", "--duration", "1", "--url", url, "-o", str(clip)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "API key" in refused.stderr
    done = subprocess.run([*command, "--api-key", "s3cret"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert clip.stat().st_size > 44


def test_sigterm_mid_generation_tells_the_client(mono_model: pathlib.Path, tmp_path: pathlib.Path) -> None:
    server = start_server(mono_model, tmp_path, "--no-mbd")
    try:
        events: list[dict[str, Any]] = []
        with requests.post(f"{server.url}/api/music", json={"description": "x", "duration": 30}, stream=True,
                           timeout=60) as r:  # fmt: skip
            lines = r.iter_lines()
            for line in lines:
                if line:
                    events.append(json.loads(line[6:]))
                    if events[-1].get("progress", 0) >= 5:
                        break
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            events += [json.loads(line[6:]) for line in lines if line]
        assert "shutting down" in events[-1]["error"]
        # uvicorn re-raises SIGTERM once its graceful shutdown is done, so the exit status is the signal's.
        assert server.process.wait(timeout=15) in (0, -signal.SIGTERM)
        assert time.monotonic() - signalled < 15
        assert "Application shutdown complete" in server.log()
    finally:
        if server.process.poll() is None:
            stop_server(server)


def _service(mono_model: pathlib.Path) -> tuple[GenerationService, Any]:
    pipeline = build_pipeline(Settings(model=str(mono_model), device="cpu", max_duration=2, mbd=False))
    return GenerationService(pipeline), pipeline


def _run_job(service: GenerationService, params: GenerationParams) -> list[Any]:
    async def run() -> list[Any]:
        return [event async for event in (await service.start(params)).events()]

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "ran out of memory"),
        (RuntimeError("boom inside the model"), "internal error"),
    ],
)
def test_faults_mid_stream_end_in_an_error_event(mono_model: pathlib.Path, fault: Exception, message: str) -> None:
    service, pipeline = _service(mono_model)
    real = pipeline.engine.step_fn

    def failing_step(kv_len: int, text_len: int) -> None:
        if pipeline.engine.pos[0].item() == 20:
            raise fault
        real(kv_len, text_len)

    pipeline.engine.step_fn = failing_step
    events = _run_job(service, GenerationParams("fault", 1))
    assert isinstance(events[-1], Failed) and message in events[-1].message
    assert "boom" not in events[-1].message and "Traceback" not in events[-1].message
    assert not service.busy
    pipeline.engine.step_fn = real
    assert isinstance(_run_job(service, GenerationParams("after the fault", 1))[-1], Completed)
    service.shutdown()


def test_json_logs_carry_the_request_id(server_factory: ServerFactory, mono_model: pathlib.Path) -> None:
    """--log-format json end to end: every line the server writes is one JSON object, and a real request's lines
    carry its request id."""
    server = server_factory(mono_model, "--no-mbd", "--log-format", "json")
    with requests.post(f"{server.url}/api/music", json={"description": "logged", "duration": 1}, stream=True,
                       timeout=60) as r:  # fmt: skip
        assert r.status_code == 200
        assert [json.loads(line[6:]) for line in r.iter_lines() if line][-1]["status"] == "completed"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "completed in" not in server.log():
        time.sleep(0.1)
    lines = [line for line in server.log().splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]
    assert entries and all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    job = [entry for entry in entries if "request_id" in entry]
    ids = {entry["request_id"] for entry in job}
    assert len(ids) == 1 and len(job) >= 2, job
    assert any("completed in" in entry["message"] for entry in job)
