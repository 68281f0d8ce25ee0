"""Several generations at once (`--slots N`): decoded together in one batched step, each exactly as it would be alone.

The engine and pipeline tests run requests side by side on threads, as the service does, and compare every result
with the same request run alone on the same engine; the server tests drive a real `--slots 4` server over HTTP.
"""

import base64
import contextlib
import io
import json
import pathlib
import subprocess
import threading
import time
import wave
from collections.abc import Callable
from typing import Any

import pytest
import requests
import torch
from torch import Tensor

from musicgen_api.audio.formats import encode_audio
from musicgen_api.config import Settings
from musicgen_api.engine.conditioning import TextConditioner
from musicgen_api.engine.fast import FastEngine
from musicgen_api.engine.loading import load_musicgen
from musicgen_api.generation import GenerationCancelled, GenerationParams, Unwatched
from musicgen_api.pipeline import build_pipeline
from tests.conftest import MBD_FIXTURE, OFFLINE_ENV, Recorder, Server, ServerFactory, serve_command
from tests.test_api import stream_events, wait_healthy
from tests.test_client_cli import run_cli

REQUESTS = [  # different descriptions, durations, sampling parameters and seeds; the first is greedy
    (GenerationParams("calm piano", 2, top_k=1), 0),
    (GenerationParams("loud drums and bass", 3, top_k=50), 1),
    (GenerationParams("x", 1, temperature=0.7), 2),
    (GenerationParams("a jazz trio late at night, brushes on the snare", 4, top_p=0.9, cfg_coef=5.0), 3),
]


def together(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run every job on its own thread at once (as the service's workers do); their results, or what they raised."""
    results: list[Any] = [None] * len(jobs)

    def run(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # handed back to the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


@pytest.fixture(scope="module")
def engine(mono_model: pathlib.Path) -> FastEngine:
    bundle = load_musicgen(str(mono_model), "cpu")
    return FastEngine(bundle, TextConditioner(bundle, max_tokens=64), window_seconds=4, slots=4)


def run(engine: FastEngine, params: GenerationParams, seed: int, progress: Any = None) -> Tensor:
    return engine.generate(params, progress or Unwatched(), generator=torch.Generator().manual_seed(seed))


def test_side_by_side_gives_what_each_gives_alone(engine: FastEngine) -> None:
    alone = [run(engine, params, seed) for params, seed in REQUESTS]
    assert len({codes.shape[1] for codes in alone}) == 4  # the durations differ: they finish one by one
    assert not torch.equal(alone[0][:, :50], alone[1][:, :50])  # and the requests are not degenerate
    beside = together([lambda p=params, s=seed: run(engine, p, s) for params, seed in REQUESTS])
    for one, other in zip(alone, beside, strict=True):
        assert torch.equal(one, other)
    assert engine.loop.in_use == 0
    other_seed = run(engine, REQUESTS[1][0], 99)
    assert not torch.equal(other_seed, alone[1])  # the seed is what made them equal


class Halfway(Recorder):
    """A Recorder that says when `at` steps are done."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.reached = at, threading.Event()

    def advance(self, steps: int) -> None:
        super().advance(steps)
        if self.steps >= self.at:
            self.reached.set()


def test_a_request_joining_mid_way_completes_correctly(engine: FastEngine) -> None:
    first, second = REQUESTS[3], REQUESTS[0]
    alone = [run(engine, params, seed) for params, seed in (first, second)]
    watched = Halfway(at=first[0].frames // 2)
    running_when_joined: list[int] = []

    def late() -> Tensor:
        assert watched.reached.wait(30)
        running_when_joined.append(engine.loop.in_use)
        return run(engine, *second)

    early, joined = together([lambda: run(engine, *first, progress=watched), late])
    assert running_when_joined == [1]  # the first was still running, half done, when the second joined
    assert torch.equal(early, alone[0]) and torch.equal(joined, alone[1])


def test_a_cancelled_request_stops_alone_and_its_slot_takes_the_next(engine: FastEngine) -> None:
    alone = [run(engine, params, seed) for params, seed in REQUESTS[1:3]]
    stopping = Recorder(cancel_after=10)
    results = together(
        [lambda: run(engine, *REQUESTS[3], progress=stopping)] + [lambda r=r: run(engine, *r) for r in REQUESTS[1:3]]
    )
    assert isinstance(results[0], GenerationCancelled) and 10 <= stopping.steps < REQUESTS[3][0].frames
    assert all(torch.equal(got, want) for got, want in zip(results[1:], alone, strict=True))
    assert engine.loop.in_use == 0
    assert torch.equal(run(engine, *REQUESTS[1]), alone[0])


def test_a_window_that_fails_to_load_fails_alone(engine: FastEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error loading one request (out of memory in its prompt's prefill, say) fails that request; the others,
    already running, finish as they would have."""
    alone = [run(engine, params, seed) for params, seed in REQUESTS[:2]]
    real = engine.install

    def install(seat: Any) -> None:
        if seat.request.params.description == "x":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        real(seat)

    monkeypatch.setattr(engine, "install", install)
    results = together([lambda r=r: run(engine, *r) for r in REQUESTS[:3]])
    assert isinstance(results[2], torch.cuda.OutOfMemoryError)
    assert torch.equal(results[0], alone[0]) and torch.equal(results[1], alone[1])
    assert engine.loop.in_use == 0


def test_pipelines_side_by_side_long_pieces_prompts_and_mbd(stereo_model: pathlib.Path) -> None:
    """Whole requests through the pipeline, three at once: a piece of four windows, a continuation of a prompt and a
    plain clip with MBD; each file is byte for byte the one it makes alone."""
    settings = Settings(model=str(stereo_model), device="cpu", window=2, extend_stride=1, max_duration=6, slots=3)
    pipeline = build_pipeline(settings.model_copy(update={"mbd_weights": str(MBD_FIXTURE)}))
    waiting = time.monotonic() + 60
    while pipeline.mbd is None and time.monotonic() < waiting:
        time.sleep(0.1)
    wave_prompt = encode_audio(torch.sin(torch.arange(32000 * 1.0) / 9.0)[None].repeat(2, 1) * 0.3, 32000, "wav")
    requests_ = [
        GenerationParams("a long piece", 5, seed=11),
        GenerationParams("go on from here", 3, seed=12, audio_prompt=wave_prompt),
        GenerationParams("diffused", 1, seed=13, mbd=True, top_k=1),
    ]
    alone = [pipeline.render(params, Unwatched()).data for params in requests_]
    beside = together([lambda p=p: pipeline.render(p, Unwatched()).data for p in requests_])
    assert [len(a) for a in alone] == [len(b) for b in beside]
    assert beside == alone


def test_too_many_slots_are_refused_with_the_largest_that_fits(mono_model: pathlib.Path) -> None:
    bundle = load_musicgen(str(mono_model), "cpu")
    with pytest.raises(ValueError, match=r"the largest that fits is --slots (\d+)") as refused:
        FastEngine(bundle, TextConditioner(bundle, max_tokens=64), window_seconds=30, slots=10**7)
    fits = int(str(refused.value).rsplit("--slots ", 1)[1].split()[0].rstrip(";"))
    assert 0 < fits < 10**7
    assert bundle.has_decoder  # refused before anything was taken or allocated


def test_a_melody_model_refuses_more_than_one_slot(melody_model: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="--slots 2 needs the fast backend; .* MusicGen-Melody checkpoint"):
        build_pipeline(Settings(model=str(melody_model), device="cpu", slots=2, mbd=False))


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--slots", "10000000"], "the largest that fits is --slots"),
        (["--slots", "2", "--backend", "transformers"], "--slots 2 needs the fast backend"),
        (["--slots", "0"], "invalid setting"),
    ],
)
def test_server_refuses_slots_it_cannot_serve(mono_model: pathlib.Path, flags: list[str], says: str) -> None:
    done = subprocess.run(
        serve_command("--model", str(mono_model), "--no-mbd", *flags), capture_output=True, timeout=120, env=OFFLINE_ENV
    )
    assert done.returncode == 2 and says in done.stderr.decode() + done.stdout.decode()


# --- a real server with four slots ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slots_server(server_factory: ServerFactory, mono_model: pathlib.Path) -> Server:
    return server_factory(mono_model, "--slots", "4", "--max-duration", "20")


class Stream:
    """A POST whose SSE events are read on a thread, so a test can hold several open and look at the server."""

    def __init__(self, url: str, body: dict[str, Any], disconnect_after: int | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.status: int | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(url, body, disconnect_after))
        self.thread.start()

    def _read(self, url: str, body: dict[str, Any], disconnect_after: int | None) -> None:
        with contextlib.closing(requests.post(f"{url}/api/music", json=body, stream=True, timeout=120)) as r:
            self.status = r.status_code
            for line in r.iter_lines():
                if line:
                    self.events.append(json.loads(line[len(b"data: ") :]))
                    if self.events[-1].get("status") == "generating":
                        self.started.set()
                    if disconnect_after is not None and len(self.events) >= disconnect_after:
                        break
        self.started.set()

    def result(self) -> dict[str, Any]:
        self.thread.join(timeout=120)
        return self.events[-1]


def health(url: str) -> int:
    return requests.get(f"{url}/api/healthcheck", timeout=5).status_code


def slots_in_use(url: str) -> float:
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    return float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("musicgen_slots_in_use")))


def test_four_slots_take_four_and_answer_the_fifth_503(slots_server: Server) -> None:
    url = slots_server.url
    wait_healthy(url)
    assert requests.get(f"{url}/api/info", timeout=5).json()["slots"] == 4
    body = {"description": "four at once", "duration": 20}
    first = [Stream(url, {**body, "seed": i}) for i in range(3)]
    assert all(stream.started.wait(60) for stream in first)
    info = requests.get(f"{url}/api/info", timeout=5).json()
    assert (health(url), info["free_slots"], slots_in_use(url)) == (200, 1, 3)  # one slot free: healthy
    last = Stream(url, {**body, "stream_audio": True, "seed": 3})
    assert last.started.wait(60)
    assert health(url) == 503 and requests.get(f"{url}/api/info", timeout=5).json()["free_slots"] == 0
    fifth = requests.post(f"{url}/api/music", json={"description": "one too many", "duration": 1}, timeout=30)
    assert fifth.status_code == 503 and "error" in fifth.json() and int(fifth.headers["Retry-After"]) > 0
    results = [stream.result() for stream in [*first, last]]
    assert [stream.status for stream in [*first, last]] == [200] * 4
    assert all(result["status"] == "completed" for result in results)
    assert any(event["status"] == "audio" for event in last.events)
    audio = [result["audio_data"] for result in results]
    assert len(set(audio)) == 4  # four seeds, four pieces
    assert wave.open(io.BytesIO(base64.b64decode(audio[0]))).getnframes() == 20 * 32000
    wait_healthy(url)
    assert requests.get(f"{url}/api/info", timeout=5).json()["free_slots"] == 4


def test_health_command_counts_free_slots(slots_server: Server, tmp_path: pathlib.Path) -> None:
    result = run_cli("health", "--url", slots_server.url, cwd=tmp_path)
    assert result.returncode == 0 and ", 4 of 4 slots free, " in result.stdout.decode()


def test_on_the_server_each_request_gives_what_it_gives_alone(slots_server: Server) -> None:
    url = slots_server.url
    bodies = [
        {"description": "greedy", "duration": 2, "top_k": 1},
        {"description": "seeded and hot", "duration": 4, "temperature": 1.3, "seed": 5},
        {"description": "nucleus", "duration": 1, "top_p": 0.8, "seed": 6, "cfg_coef": 1.0},
        {"description": "diffused", "duration": 3, "seed": 7, "mbd": True},
    ]
    alone = [stream_events(url, body)[-1]["audio_data"] for body in bodies]
    streams = [Stream(url, body) for body in bodies]
    beside = [stream.result()["audio_data"] for stream in streams]
    assert beside == alone


def test_a_request_joining_others_half_way_through_completes_correctly(slots_server: Server) -> None:
    url = slots_server.url
    joining = {"description": "joins late", "duration": 2, "seed": 21}
    alone = stream_events(url, joining)[-1]["audio_data"]
    running = [Stream(url, {"description": "already running", "duration": 20, "seed": i}) for i in range(2)]
    deadline = time.monotonic() + 60
    while not all(any(e.get("progress", 0) >= 50 for e in stream.events) for stream in running):
        assert time.monotonic() < deadline, "the running pieces never reached 50 %"
        time.sleep(0.02)
    events = stream_events(url, joining)
    assert all(stream.thread.is_alive() for stream in running)  # it ran beside them
    assert events[-1]["audio_data"] == alone
    assert all(stream.result()["status"] == "completed" for stream in running)


def test_a_disconnect_frees_one_slot_and_the_others_go_on(slots_server: Server) -> None:
    url = slots_server.url
    mark = slots_server.mark()
    body = {"description": "keeps going", "duration": 20}
    staying = [Stream(url, {**body, "seed": i}) for i in range(3)]
    leaving = Stream(url, {"description": "leaves early", "duration": 20}, disconnect_after=4)
    leaving.thread.join(timeout=60)
    slots_server.wait_for_log(mark, "generation cancelled after", within=30)
    deadline = time.monotonic() + 10
    while requests.get(f"{url}/api/info", timeout=5).json()["free_slots"] != 1:  # freed once the worker has stopped
        assert time.monotonic() < deadline, "the cancelled piece's slot was never freed"
        time.sleep(0.02)
    assert all(stream.thread.is_alive() for stream in staying)  # the others are still generating
    events = stream_events(url, {"description": "takes the freed slot", "duration": 1})
    assert events[-1]["status"] == "completed"
    assert all(stream.result()["status"] == "completed" for stream in staying)
