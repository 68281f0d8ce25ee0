"""Fixtures: tiny random-weight MusicGen and MusicGen-Melody checkpoints on disk, and real server processes that load
them.

Servers are started the way a user starts one (`musicgen-api serve --model PATH`), on a free port, and spoken to
over real HTTP. Each is started once per test session and shared by the tests that need it.
"""

import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import requests
import torch
from torch import Tensor

from musicgen_api.bench.random_model import save_random_musicgen
from musicgen_api.generation import AudioChunk, GenerationCancelled, ReadFrames

MBD_FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "mbd" / "mbd_tiny.th"  # fits the tiny model's codec
OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def mono_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return save_random_musicgen(tmp_path_factory.mktemp("musicgen-mono"), "tiny", stereo=False)


@pytest.fixture(scope="session")
def stereo_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return save_random_musicgen(tmp_path_factory.mktemp("musicgen-stereo"), "tiny", stereo=True)


@pytest.fixture(scope="session")
def melody_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return save_random_musicgen(tmp_path_factory.mktemp("musicgen-melody"), "tiny", melody=True)


class Recorder:
    """A `Progress` and `JobControl` that keeps what it hears, and cancels once `cancel_after` steps are done."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.cancel_after = cancel_after
        self.steps = 0
        self.advances: list[int] = []  # the step count after each advance
        self.reports: list[float] = []  # the job fractions reported
        self.settled: list[int] = []  # `complete` of each frames_ready
        self.frames: Tensor | None = None  # the settled frames' codes, read as they settled
        self.chunks: list[AudioChunk] = []

    def frames_ready(self, complete: int, read: ReadFrames) -> None:
        self.settled.append(complete)
        have = 0 if self.frames is None else self.frames.shape[1]
        if complete > have:
            new = read(have).clone()
            self.frames = new if self.frames is None else torch.cat([self.frames, new], dim=1)

    def audio(self, chunk: AudioChunk) -> None:
        self.chunks.append(chunk)

    def advance(self, steps: int) -> None:
        self.steps += steps
        self.advances.append(self.steps)

    def report(self, done: float) -> None:
        self.reports.append(done)

    def stop_if_cancelled(self) -> None:
        if self.cancel_after is not None and self.steps >= self.cancel_after:
            raise GenerationCancelled


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def mark(self) -> int:
        """Where the log ends now: `log_since(mark)` is then only what the server wrote after this moment."""
        return len(self.log())

    def log_since(self, mark: int) -> str:
        return self.log()[mark:]

    def wait_for_log(self, mark: int, text: str, within: float = 15.0) -> str:
        """The log since `mark`, once it holds `text`; fails past `within` seconds."""
        deadline = time.monotonic() + within
        while text not in (since := self.log_since(mark)):
            assert time.monotonic() < deadline, f"{text!r} never appeared in the server log:\n{since[-2000:]}"
            time.sleep(0.05)
        return since


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "musicgen_api", "serve", "--device", "cpu", *args]


def start_server(model: pathlib.Path, log_dir: pathlib.Path, *extra: str, env: dict[str, str] | None = None) -> Server:
    """A server on the tiny model; MBD comes from the fixture checkpoint unless `extra` says otherwise. `env` adds
    environment variables to the (offline) environment it runs in."""
    if "--no-mbd" not in extra and "--mbd-weights" not in extra:
        extra = ("--mbd-weights", str(MBD_FIXTURE), *extra)
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            serve_command("--model", str(model), "--port", str(port), *extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**OFFLINE_ENV, **(env or {})},
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            requests.get(f"{server.url}/api/healthcheck", timeout=1)
            return server
        except requests.ConnectionError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not start in time:\n{server.log()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


ServerFactory = Callable[..., Server]


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Start servers on demand, each stopped at the end of the session."""
    started: list[Server] = []
    log_dir = tmp_path_factory.mktemp("server-logs")

    def factory(model: pathlib.Path, *extra: str, env: dict[str, str] | None = None) -> Server:
        server = start_server(model, log_dir, *extra, env=env)
        started.append(server)
        return server

    yield factory
    for server in started:
        stop_server(server)


@pytest.fixture(scope="session")
def mono_server(server_factory: ServerFactory, mono_model: pathlib.Path) -> Server:
    return server_factory(mono_model)


@pytest.fixture(scope="session")
def stereo_server(server_factory: ServerFactory, stereo_model: pathlib.Path) -> Server:
    return server_factory(stereo_model)


@pytest.fixture(scope="session")
def long_server(server_factory: ServerFactory, stereo_model: pathlib.Path) -> Server:
    """A stereo server with a 2 s window, so a 5 s request takes four windows."""
    return server_factory(stereo_model, "--window", "2", "--extend-stride", "1", "--max-duration", "6")
