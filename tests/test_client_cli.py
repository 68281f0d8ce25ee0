"""`musicgen-api generate` and `health` against a real server on the tiny model: the WAV, every flag (seeds that
reproduce, formats, an audio prompt), the server's description, the documented exit codes with one-line errors,
Ctrl-C, and that the client never imports torch."""

import base64
import contextlib
import http.server
import io
import json
import math
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import soundfile

from tests.conftest import Server, free_port
from tests.test_api import stream_events, wait_healthy

# Runs the command as the console script does, then checks it never loaded torch (the client must start at once).
CLI = """
import sys
from musicgen_api.cli import main
try:
    main(sys.argv[1:])
finally:
    assert "torch" not in sys.modules, "the client imported torch"
"""


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """The command as a user runs it; `env` replaces the environment (for MUSICGEN_URL, MUSICGEN_API_KEY)."""
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, cwd=cwd, timeout=120, env=env)


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
    assert re.fullmatch(
        r"saved clip\.wav: 2\.0 s, 1 channel\(s\), 32000 Hz, seed (\d+) \(--seed \1 makes it again\); "
        r"generated in \d+\.\d s\n",
        result.stderr.decode(),
    ), result.stderr.decode()


def test_every_api_parameter_is_a_flag(mono_server: Server, tmp_path: Path) -> None:
    flags = ["--duration", "1", "--no-mbd", "--top-k", "5", "--top-p", "0.9", "--temperature", "0.8", "--cfg-coef", "2",
             "--seed", "7", "--format", "wav", "--normalization", "peak", "--no-return-prompt"]  # fmt: skip
    result = run_cli("generate", "Lofi Hip-Hop, warm piano!", *flags, "--url", f"{mono_server.url}/", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert ", seed 7 (--seed 7 makes it again); " in result.stderr.decode()
    with wave.open(str(tmp_path / "lofi-hip-hop-warm-piano.wav"), "rb") as w:  # named after the description
        assert w.getnframes() == 32000
        samples = struct.unpack(f"<{w.getnframes()}h", w.readframes(w.getnframes()))
    assert max(map(abs, samples)) == pytest.approx(32767 * 10 ** (-1 / 20), abs=2)  # peak-normalized to -1 dBFS


def reported_seed(stderr: bytes) -> str:
    match = re.search(r", seed (\d+) \(--seed \1 makes it again\)", stderr.decode())
    assert match, stderr.decode()
    return match.group(1)


def test_the_reported_seed_makes_the_clip_again(mono_server: Server, tmp_path: Path) -> None:
    first = run_cli("generate", "seeded", "--duration", "1", "-o", "a.wav", "--url", mono_server.url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    seed = reported_seed(first.stderr)
    again = ["generate", "seeded", "--duration", "1", "--seed", seed, "--url", mono_server.url]
    for name in ("b.wav", "c.wav"):
        result = run_cli(*again, "-o", name, cwd=tmp_path)
        assert result.returncode == 0 and reported_seed(result.stderr) == seed, result.stderr.decode()
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes() == (tmp_path / "c.wav").read_bytes()
    other = run_cli("generate", "seeded", "--duration", "1", "-o", "d.wav", "--url", mono_server.url, cwd=tmp_path)
    assert reported_seed(other.stderr) != seed
    assert (tmp_path / "d.wav").read_bytes() != (tmp_path / "a.wav").read_bytes()


@pytest.mark.parametrize(
    ("flags", "written", "kind"),
    [
        (["--format", "flac"], "calm-piano.flac", "FLAC"),  # the default name takes the format's extension
        (["-o", "clip.OGG"], "clip.OGG", "OGG"),  # the format follows -o's extension
    ],
)
def test_other_formats(mono_server: Server, tmp_path: Path, flags: list[str], written: str, kind: str) -> None:
    result = run_cli("generate", "calm piano", "--duration", "1", *flags, "--url", mono_server.url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr.decode().startswith(f"saved {written}: 1.0 s, 1 channel(s), 32000 Hz, seed ")
    assert [p.name for p in tmp_path.iterdir()] == [written]
    info = soundfile.info(str(tmp_path / written))
    assert (info.format, info.samplerate, info.channels) == (kind, 32000, 1)
    assert info.duration == pytest.approx(1, abs=0.01)


def write_tone(path: Path, seconds: float) -> None:
    frames = int(32000 * seconds)
    tone = [round(8000 * math.sin(2 * math.pi * 440 * i / 32000)) for i in range(frames)]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(32000)
        w.writeframes(struct.pack(f"<{frames}h", *tone))


@pytest.mark.parametrize(("flags", "seconds"), [([], 2), (["--no-return-prompt"], 1)])
def test_audio_prompt_is_continued(mono_server: Server, tmp_path: Path, flags: list[str], seconds: int) -> None:
    write_tone(tmp_path / "prompt.wav", 0.5)
    command = ["generate", "go on", "--duration", str(seconds), "--audio-prompt", "prompt.wav", "-o", "out.wav"]
    result = run_cli(*command, *flags, "--url", mono_server.url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    with wave.open(str(tmp_path / "out.wav"), "rb") as w:
        assert w.getnframes() == seconds * 32000


@pytest.mark.parametrize("flag", ["--audio-prompt", "--melody"])
def test_unreadable_audio_file_is_exit_2_before_asking(tmp_path: Path, flag: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens: the file is checked first
    for path in ("missing.wav", "."):
        result = run_cli("generate", "x", flag, path, "--url", url, cwd=tmp_path)
        assert result.returncode == 2
        assert f"cannot read {flag} {path}: " in one_line(result.stderr)


def test_melody_is_refused_by_the_server(mono_server: Server, tmp_path: Path) -> None:
    write_tone(tmp_path / "tune.wav", 0.5)
    result = run_cli("generate", "x", "--duration", "1", "--melody", "tune.wav", "--url", mono_server.url, cwd=tmp_path)
    assert result.returncode == 2 and "melody" in one_line(result.stderr)


def test_output_to_stdout(mono_server: Server, tmp_path: Path) -> None:
    result = run_cli("generate", "pipe me", "--duration", "1", "-o", "-", "-q", "--url", mono_server.url, cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == b""
    assert result.stdout[:4] == b"RIFF" and len(result.stdout) == 44 + 32000 * 2
    assert list(tmp_path.iterdir()) == []


def test_stream_writes_a_wav_to_stdout_as_it_arrives(mono_server: Server, tmp_path: Path) -> None:
    """`--stream -o -`: a WAV header with unknown sizes, then exactly the audio events' PCM, in order."""
    result = run_cli(
        "generate", "pipe it live", "--duration", "3", "--stream", "-o", "-", "-q", "--seed", "5", "--url",
        mono_server.url, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout
    riff, size, wave_id, fmt, fmt_size, kind, channels, rate, byte_rate, block, bits, data, data_size = struct.unpack(
        "<4sI4s4sIHHIIHH4sI", out[:44]
    )
    assert (riff, wave_id, fmt, data) == (b"RIFF", b"WAVE", b"fmt ", b"data")
    assert (size, data_size) == (0xFFFFFFFF, 0xFFFFFFFF)  # unknown length, as streaming WAV writers say
    assert (fmt_size, kind, channels, rate, byte_rate, block, bits) == (16, 1, 1, 32000, 64000, 2, 16)
    events = stream_events(mono_server.url, {"description": "pipe it live", "duration": 3, "seed": 5,
                                             "stream_audio": True})  # fmt: skip
    chunks = b"".join(base64.b64decode(e["audio_chunk"]) for e in events if e.get("status") == "audio")
    assert out[44:] == chunks and len(chunks) == 3 * 32000 * 2
    soundfile.info(io.BytesIO(out))  # a WAV reader takes it


def test_stream_with_a_file_writes_the_finished_file(mono_server: Server, tmp_path: Path) -> None:
    result = run_cli(
        "generate", "x", "--duration", "1", "--stream", "-o", "x.wav", "--url", mono_server.url, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr.decode()
    with wave.open(str(tmp_path / "x.wav")) as w:
        assert (w.getnframes(), w.getnchannels()) == (32000, 1)


def test_stream_refuses_other_formats_on_stdout(tmp_path: Path) -> None:
    result = run_cli(
        "generate", "x", "--stream", "-o", "-", "--format", "flac", "--url", "http://127.0.0.1:9", cwd=tmp_path
    )
    assert result.returncode == 2 and "--stream writes WAV" in one_line(result.stderr)


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
    line = one_line(result.stderr)
    assert named in line and "refused" in line and line.endswith(f"(set by {flags[0]})")
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
    assert health.returncode == 3 and health.stdout.decode().startswith("busy — ")


def test_health_when_idle_describes_the_server(mono_server: Server, mono_model: Path, tmp_path: Path) -> None:
    result = run_cli("health", "--url", mono_server.url, cwd=tmp_path)
    described = f"healthy — {mono_model} on cpu, mono, 32000 Hz, up to 120 s, MBD available\n"
    assert (result.returncode, result.stdout.decode(), result.stderr) == (0, described, b"")


class _SpecOnlyHandler(http.server.BaseHTTPRequestHandler):
    """A server with the spec's API only: a healthcheck, no /api/info, a completed event with just the WAV."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/api/healthcheck":
            self._answer(200, b'{"status": "healthy"}')
        else:
            self._answer(404, b'{"detail": "Not Found"}')

    bodies: list[dict[str, object]] = []  # every POST body received, in order

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        wav = io.BytesIO()
        with wave.open(wav, "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(32000)
            w.writeframes(bytes(4 * 16000))
        event = {"status": "completed", "audio_data": base64.b64encode(wav.getvalue()).decode()}
        self._answer(200, b"data: " + json.dumps(event).encode() + b"\n\n")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_spec_only_server(tmp_path: Path) -> None:
    """Without /api/info health prints just the status; a bare completed event is described by its WAV header."""
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SpecOnlyHandler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_port}"
        health = run_cli("health", "--url", url, cwd=tmp_path)
        generated = run_cli("generate", "x", "-o", "x.wav", "--url", url, cwd=tmp_path)
        server.shutdown()
    assert (health.returncode, health.stdout, health.stderr) == (0, b"healthy\n", b"")
    assert generated.returncode == 0, generated.stderr.decode()
    assert generated.stderr.decode().startswith("saved x.wav: 0.5 s, 2 channel(s), 32000 Hz; generated in ")


@pytest.mark.parametrize(
    ("flags", "sent"),
    [
        ([], {}),  # flags left out are not sent: the server's defaults apply
        (["--duration", "7", "--mbd", "--top-k", "5", "--top-p", "0.9", "--temperature", "0.8", "--cfg-coef", "2.5",
          "--seed", "7", "--normalization", "none", "--format", "flac", "--no-return-prompt"],
         {"duration": 7, "mbd": True, "top_k": 5, "top_p": 0.9, "temperature": 0.8, "cfg_coef": 2.5, "seed": 7,
          "normalization": "none", "format": "flac", "return_prompt": False}),
        (["--no-mbd", "--return-prompt"], {"mbd": False, "return_prompt": True}),
    ],
)  # fmt: skip
def test_each_flag_is_sent_as_its_field(tmp_path: Path, flags: list[str], sent: dict[str, object]) -> None:
    """What the server receives, field by field: a flag the client dropped or renamed would show here."""
    handler = type("Recording", (_SpecOnlyHandler,), {"bodies": []})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_port}"
        result = run_cli("generate", "flags", *flags, "-o", "out.wav", "--url", url, cwd=tmp_path)
        server.shutdown()
    assert result.returncode == 0, result.stderr.decode()
    assert handler.bodies == [{"description": "flags", **sent}]


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
    mark = mono_server.mark()
    # As from a terminal: a suite run as a script's background job ignores SIGINT, and its children would inherit
    # that (Python then installs no KeyboardInterrupt handler), so the child gets the default handling back.
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 30
    while requests.get(f"{mono_server.url}/api/healthcheck", timeout=5).status_code != 503:
        assert time.monotonic() < deadline and process.poll() is None, "the generation never started"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "cancelled" in one_line(stderr)
    wait_healthy(mono_server.url, within=3)
    assert "completed in" not in mono_server.wait_for_log(mark, "generation cancelled after")
    assert list(tmp_path.iterdir()) == []
