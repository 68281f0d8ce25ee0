"""`musicgen-api generate` and `health` against a real server on the tiny model: the WAV, every flag, the
documented exit codes with one-line errors, Ctrl-C, and that the client never imports torch."""

import contextlib
import http.server
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import Server, free_port
from tests.test_api import wait_healthy

# Runs the command as the console script does, then checks it never loaded torch (the client must start at once).
CLI = """
import sys
from musicgen_api.cli import main
try:
    main(sys.argv[1:])
finally:
    assert "torch" not in sys.modules, "the client imported torch"
"""


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, cwd=cwd, timeout=120)


def one_line(stderr: bytes) -> str:
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("musicgen-api: ")
    return lines[0]


@contextlib.contextmanager
def generation_running(url: str) -> Iterator[None]:
    """Hold the server's one slot with a long generation while the block runs, then let it go."""
    body = {"description": "holds the slot", "duration": 30}
    with requests.post(f"{url}/api/music", json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # kept referenced: a collected line iterator would close the connection
        next(line for line in lines if b'"generating"' in line)
        yield
    wait_healthy(url)


def test_generate_writes_the_wav(mono_server: Server, tmp_path: Path) -> None:
    result = run_cli(
        "generate", "calm piano", "--duration", "2", "-o", "clip.wav", "--url", mono_server.url, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr.decode()
    with wave.open(str(tmp_path / "clip.wav"), "rb") as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels(), w.getnframes()) == (32000, 2, 1, 2 * 32000)
    assert result.stdout == b""
    assert result.stderr.decode().startswith("saved clip.wav: 2.0 s, 1 channel(s), 32000 Hz; generated in ")


def test_every_api_parameter_is_a_flag(mono_server: Server, tmp_path: Path) -> None:
    flags = ["--duration", "1", "--no-mbd", "--top-k", "5", "--top-p", "0.9", "--temperature", "0.8", "--cfg-coef", "2"]
    result = run_cli("generate", "Lofi Hip-Hop, warm piano!", *flags, "--url", f"{mono_server.url}/", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    with wave.open(str(tmp_path / "lofi-hip-hop-warm-piano.wav"), "rb") as w:  # named after the description
        assert w.getnframes() == 32000


def test_output_to_stdout(mono_server: Server, tmp_path: Path) -> None:
    result = run_cli("generate", "pipe me", "--duration", "1", "-o", "-", "-q", "--url", mono_server.url, cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == b""
    assert result.stdout[:4] == b"RIFF" and len(result.stdout) == 44 + 32000 * 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--temperature", "0"], "temperature"),
        (["--duration", "99999"], "duration must be at most"),
        (["--top-k", "0"], "top_k"),
        (["--top-p", "1.5"], "top_p"),
    ],
)
def test_bad_input_is_exit_2(mono_server: Server, tmp_path: Path, flags: list[str], named: str) -> None:
    result = run_cli("generate", "x", *flags, "--url", mono_server.url, cwd=tmp_path)
    assert result.returncode == 2
    assert named in one_line(result.stderr) and "refused" in result.stderr.decode()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags", [["--top-p", "nan"], ["--duration", "ten"], ["--cfg-coef", "inf"]])
def test_unusable_flag_values_are_exit_2_before_asking(tmp_path: Path, flags: list[str]) -> None:
    result = run_cli("generate", "x", *flags, "--url", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert result.returncode == 2 and "error: argument" in result.stderr.decode()


def test_missing_output_folder_is_exit_2(tmp_path: Path) -> None:
    result = run_cli("generate", "x", "-o", "no/such/folder/clip.wav", cwd=tmp_path)
    assert result.returncode == 2 and "folder does not exist" in one_line(result.stderr)


def test_busy_is_exit_3_and_health_says_busy(mono_server: Server, tmp_path: Path) -> None:
    with generation_running(mono_server.url):
        result = run_cli("generate", "x", "--duration", "1", "--url", mono_server.url, cwd=tmp_path)
        health = run_cli("health", "--url", mono_server.url, cwd=tmp_path)
    assert result.returncode == 3
    assert "busy" in one_line(result.stderr) and "try again in 5 s" in result.stderr.decode()
    assert (health.returncode, health.stdout) == (3, b"busy\n")


def test_health_when_idle(mono_server: Server, tmp_path: Path) -> None:
    result = run_cli("health", "--url", mono_server.url, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"healthy\n", b"")


def test_unreachable_server_is_exit_4(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for command in (["generate", "x", "--url", url], ["health", "--url", url]):
        result = run_cli(*command, cwd=tmp_path)
        assert result.returncode == 4
        assert "cannot reach" in one_line(result.stderr) and "musicgen-api serve" in result.stderr.decode()


class _DroppingHandler(http.server.BaseHTTPRequestHandler):
    """Starts an event stream like the real server, then dies mid-way: with a clean close, or mid-chunk."""

    protocol_version = "HTTP/1.1"
    truncate = False

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        event = b'data: {"status": "started"}\n\ndata: {"status": "generating", "progress": 7}\n\n'
        self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        if self.truncate:
            self.wfile.write(b'400\r\ndata: {"sta')
        else:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("truncate", [False, True])
def test_dropped_connection_is_exit_4(tmp_path: Path, truncate: bool) -> None:
    handler = type("Handler", (_DroppingHandler,), {"truncate": truncate})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        result = run_cli("generate", "x", "--url", f"http://127.0.0.1:{server.server_port}", cwd=tmp_path)
        server.shutdown()
    assert result.returncode == 4
    line = one_line(result.stderr)
    assert ("lost the connection" if truncate else "closed before the clip arrived") in line
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_cancels_on_the_server(mono_server: Server, tmp_path: Path) -> None:
    command = [sys.executable, "-c", CLI, "generate", "long one", "--duration", "30", "--url", mono_server.url]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while requests.get(f"{mono_server.url}/api/healthcheck", timeout=5).status_code != 503:
        assert time.monotonic() < deadline and process.poll() is None, "the generation never started"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "cancelled" in one_line(stderr)
    wait_healthy(mono_server.url, within=3)
    assert "cancelled" in mono_server.log()
    assert list(tmp_path.iterdir()) == []
