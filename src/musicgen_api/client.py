"""HTTP client for a running musicgen-api server: its health and description, and one generation read as a stream
of events.

The `generate` and `health` commands use it. It speaks only the public API (the same bytes any other client sees)
and imports neither torch nor the server, so the commands start at once on machines without either. Every failure
a user can meet is one exception type whose message says what to do next: the server's own `InvalidRequest`,
`Busy` and `GenerationFailed`, and `ServerUnreachable` for the network.
"""

import base64
import io
import json
import struct
import wave
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import httpx

from musicgen_api.errors import Busy, GenerationFailed, InvalidRequest
from musicgen_api.generation import AudioChunk

CONNECT_TIMEOUT_S = 10.0
# Longest silence tolerated mid-stream. The server sends an event per percent of progress, so only a stalled server
# or a dead network stays quiet this long; generous because a big model on a CPU is slow, and MBD decodes at the end.
READ_TIMEOUT_S = 600.0


class ServerUnreachable(ConnectionError):
    """No answer from the server, or the connection dropped before the clip arrived."""


@dataclass(frozen=True)
class Clip:
    """A finished generation: the audio file's bytes and what the server's `completed` event says about them."""

    audio: bytes
    format: str  # wav, flac, mp3 or ogg: also the file extension
    mime_type: str
    sample_rate: int
    channels: int
    duration: float  # seconds
    seed: int | None  # the seed that makes this clip again; None from a server that does not report one


def _timeout() -> httpx.Timeout:
    return httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)


def _unreachable(url: str, exc: httpx.TransportError) -> ServerUnreachable:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return ServerUnreachable(
            f"cannot reach {url} ({exc}); is `musicgen-api serve` running there? (pass its address with --url)"
        )
    reason = str(exc) or type(exc).__name__
    return ServerUnreachable(f"lost the connection to {url} ({reason}); check that the server still runs, then retry")


def health(url: str) -> str:
    """The server's status, "healthy" or "busy"; ServerUnreachable if it does not answer like a musicgen-api."""
    url = url.rstrip("/")
    try:
        response = httpx.get(f"{url}/api/healthcheck", timeout=CONNECT_TIMEOUT_S)
    except httpx.TransportError as exc:
        raise _unreachable(url, exc) from exc
    try:
        status = response.json()["status"]
    except (ValueError, KeyError, TypeError):
        status = None
    if status not in ("healthy", "busy"):
        raise ServerUnreachable(
            f"{url}/api/healthcheck answered HTTP {response.status_code} without a status; "
            "is --url the address of a musicgen-api server?"
        )
    return str(status)


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def info(url: str, api_key: str | None = None) -> dict[str, Any] | None:
    """The server's `GET /api/info` description, or None where it has none (an older or spec-only server, or a
    proxy that hides it) or does not answer."""
    url = url.rstrip("/")
    try:
        response = httpx.get(f"{url}/api/info", headers=_auth(api_key), timeout=CONNECT_TIMEOUT_S)
        described = response.json() if response.status_code == 200 else None
    except (httpx.TransportError, ValueError):
        return None
    return described if isinstance(described, dict) else None


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Split a byte stream on newlines in linear time (a completed event is one line of megabytes of base64)."""
    pending: list[bytes] = []
    for chunk in chunks:
        *ended, rest = chunk.split(b"\n")
        for piece in ended:
            pending.append(piece)
            yield b"".join(pending).rstrip(b"\r")
            pending = []
        pending.append(rest)


def _refusal(url: str, response: httpx.Response) -> Exception:
    """The exception for a non-200 answer to POST /api/music."""
    response.read()
    field = None
    try:
        body = response.json()
        message = str(body["error"])
        field = body.get("field") if isinstance(body.get("field"), str) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        message = f"HTTP {response.status_code} {response.reason_phrase}"
    if response.status_code == 400:
        return InvalidRequest(f"the server refused the request: {message}", field=field)
    if response.status_code == 401:
        return InvalidRequest("the server needs an API key: pass --api-key or set MUSICGEN_API_KEY")
    if response.status_code == 503:
        wait = response.headers.get("Retry-After", "a few")
        return Busy(
            f"the server is busy with another generation; try again in {wait} s "
            "(`musicgen-api health` exits 0 once it is free)"
        )
    if response.status_code == 404:
        return ServerUnreachable(f"{url}/api/music does not exist; is --url the address of a musicgen-api server?")
    return GenerationFailed(f"the server failed before starting: {message}; its log has the details")


def _events(url: str, response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON payloads of the stream's `data:` lines, in order."""
    for line in _lines(response.iter_bytes()):
        if line.startswith(b"data: "):
            try:
                yield json.loads(line[len(b"data: ") :])
            except ValueError as exc:
                raise GenerationFailed(f"{url} sent an unreadable event ({exc}); is it a musicgen-api server?") from exc


def _clip(url: str, event: dict[str, Any]) -> Clip:
    """The `completed` event as a Clip. A spec-only server sends just `audio_data`, a WAV that describes itself."""
    try:
        audio = base64.b64decode(event["audio_data"], validate=True)
        if "format" not in event:
            with wave.open(io.BytesIO(audio), "rb") as w:
                rate, channels, frames = w.getframerate(), w.getnchannels(), w.getnframes()
            return Clip(audio, "wav", "audio/wav", rate, channels, frames / rate, None)
        seed = event.get("seed")
        return Clip(
            audio=audio,
            format=str(event["format"]),
            mime_type=str(event["mime_type"]),
            sample_rate=int(event["sample_rate"]),
            channels=int(event["channels"]),
            duration=float(event["duration"]),
            seed=None if seed is None else int(seed),
        )
    except (KeyError, TypeError, ValueError, wave.Error, EOFError) as exc:  # ValueError covers bad base64
        raise GenerationFailed(f"{url} sent an unreadable clip ({exc!r}); is it a musicgen-api server?") from exc


class StreamingWav:
    """A WAV file written as its audio arrives (`generate --stream -o -`). Its length is not known when the header
    goes out, so the RIFF and data sizes say 0xFFFFFFFF, as streaming WAV writers do; players read to the end."""

    UNKNOWN = 0xFFFFFFFF

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.started = False

    def write(self, chunk: AudioChunk) -> None:
        if not self.started:
            block = 2 * chunk.channels  # bytes per sample frame, 16-bit
            self.out.write(
                b"RIFF" + struct.pack("<I", self.UNKNOWN) + b"WAVE"
                + b"fmt " + struct.pack("<IHHIIHH", 16, 1, chunk.channels, chunk.sample_rate,
                                        chunk.sample_rate * block, block, 16)
                + b"data" + struct.pack("<I", self.UNKNOWN)
            )  # fmt: skip
            self.started = True
        self.out.write(chunk.pcm)
        self.out.flush()


def _chunk(url: str, event: dict[str, Any]) -> AudioChunk:
    try:
        return AudioChunk(
            pcm=base64.b64decode(event["audio_chunk"], validate=True),
            offset=float(event["offset"]),
            duration=float(event["duration"]),
            sample_rate=int(event["sample_rate"]),
            channels=int(event["channels"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise GenerationFailed(f"{url} sent an unreadable audio event ({exc!r}); is it a musicgen-api server?") from exc


def generate(
    url: str,
    params: dict[str, Any],
    on_progress: Callable[[int], None],
    api_key: str | None = None,
    on_audio: Callable[[AudioChunk], None] | None = None,
) -> Clip:
    """POST one generation and return the clip, calling `on_progress(percent)` as the server reports it. With
    `on_audio`, asks for the audio as it is made (`stream_audio`) and hands each chunk to it.

    Leaving early (an exception, Ctrl-C's KeyboardInterrupt) closes the connection, which stops the generation on
    the server and frees it for the next request.
    """
    url = url.rstrip("/")
    headers = {"Accept": "text/event-stream", **_auth(api_key)}
    try:
        body = params | {"stream_audio": True} if on_audio else params
        with httpx.stream("POST", f"{url}/api/music", json=body, headers=headers, timeout=_timeout()) as response:
            if response.status_code != 200:
                raise _refusal(url, response)
            for event in _events(url, response):
                if "error" in event:
                    raise GenerationFailed(f"generation failed on the server: {event['error']}")
                if event.get("status") == "generating":
                    on_progress(int(event["progress"]))
                elif event.get("status") == "audio" and on_audio:
                    on_audio(_chunk(url, event))
                elif event.get("status") == "completed":
                    return _clip(url, event)
    except httpx.TransportError as exc:
        raise _unreachable(url, exc) from exc
    raise ServerUnreachable(f"the connection to {url} closed before the clip arrived; check the server, then retry")
