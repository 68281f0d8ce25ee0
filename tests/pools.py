"""Cases every pool of replicas behind one address must pass, whatever balances it (Ray Serve, HAProxy): requests
spread over idle replicas, JSON 503 with Retry-After once replicas and queue are full, a pool-wide healthcheck, and
a disconnect that frees its replica."""

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests


@dataclass
class Answer:
    status: int
    retry_after: str | None = None
    body: dict[str, Any] = field(default_factory=dict)  # the JSON answer of a refused request
    events: list[dict[str, Any]] = field(default_factory=list)  # the SSE events of an accepted one


class Running:
    """How many streams are generating right now (past their first progress event, before their last event)."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = threading.Condition()

    def add(self, delta: int) -> None:
        with self.changed:
            self.count += delta
            self.changed.notify_all()

    def wait_for(self, count: int, within: float) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.count >= count, within), f"{self.count} of {count} running"


def ask(url: str, body: dict[str, Any], running: Running | None = None) -> Answer:
    with requests.post(f"{url}/api/music", json=body, stream=True, timeout=300) as r:
        if r.status_code != 200:
            return Answer(r.status_code, r.headers.get("Retry-After"), r.json())
        assert r.headers["content-type"].startswith("text/event-stream")
        lines: list[str] = []
        generating = False
        for raw in r.iter_lines(chunk_size=65536):
            line = raw.decode()
            if line and '"generating"' in line and not generating:
                generating = True
                if running is not None:
                    running.add(1)
            if line:
                lines.append(line)
        if generating and running is not None:
            running.add(-1)
    assert all(line.startswith("data: ") for line in lines), lines[:3]
    return Answer(200, events=[json.loads(line[6:]) for line in lines])


def ask_together(
    url: str, count: int, duration: int, while_running: Any = None, busy_at: int = 1
) -> tuple[list[Answer], Any]:
    """`count` requests sent at the same moment; `while_running()` is called once `busy_at` of them are generating
    at the same time, and its result returned."""
    answers: list[Answer | None] = [None] * count
    barrier = threading.Barrier(count)
    running = Running()

    def one(i: int) -> None:
        barrier.wait()
        answers[i] = ask(url, {"description": f"request {i}", "duration": duration}, running)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    observed = None
    if while_running:
        running.wait_for(busy_at, within=120)
        observed = while_running()
    for thread in threads:
        thread.join(timeout=300)
    assert all(answer is not None for answer in answers)
    return [answer for answer in answers if answer is not None], observed


def health(url: str) -> tuple[int, dict[str, Any]]:
    r = requests.get(f"{url}/api/healthcheck", timeout=5)  # answered at once, never queued behind generations
    return r.status_code, r.json()


def wait_until(condition: Any, within: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not {what} after {within} s")


def leave_mid_stream(url: str, duration: int) -> str | None:
    """Start a piece, read until it has made progress, hang up; returns the replica it ran on, if the pool says."""
    with requests.post(f"{url}/api/music", json={"description": "leaving", "duration": duration}, stream=True) as r:
        assert r.status_code == 200, r.text
        replica = None
        for line in r.iter_lines():
            if line:
                event = json.loads(line[6:])
                replica = replica or event.get("replica")
                if event.get("progress", 0) >= 5:
                    return replica
    raise AssertionError("the stream ended before any progress")


def assert_full_pool_refuses(url: str, replicas: int, queue: int, duration: int) -> None:
    """replicas + queue + 2 requests at once: replicas + queue complete, 2 get the spec's JSON 503; the healthcheck
    says busy meanwhile and healthy after."""
    answers, during = ask_together(
        url, replicas + queue + 2, duration, while_running=lambda: health(url), busy_at=replicas
    )
    refused = [a for a in answers if a.status == 503]
    served = [a for a in answers if a.status == 200]
    assert len(refused) == 2 and len(served) == replicas + queue, [(a.status, a.body) for a in answers]
    for answer in refused:
        assert answer.retry_after is not None and int(answer.retry_after) > 0
        assert "busy" in answer.body["error"]
    for answer in served:
        assert answer.events[0]["status"] == "started" and answer.events[-1]["status"] == "completed"
    assert during == (503, {"status": "busy"})
    assert health(url) == (200, {"status": "healthy"})
