"""`musicgen-api cluster` on a local Ray cluster (`ray start --head` with two logical GPUs, joined with --address
as a multi-machine cluster is), two tiny-model replicas on the CPU: the spec's meanings at cluster level."""

import asyncio
import base64
import json
import pathlib
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from musicgen_api.cluster.board import STALE_AFTER_S, ReplicaBoard
from musicgen_api.cluster.deploy import plan
from musicgen_api.cluster.messages import Refused
from musicgen_api.cluster.replica import Accepted, ReplicaSlots
from musicgen_api.config import ClusterSettings
from musicgen_api.generation import GenerationParams, JobControl, RenderedAudio
from musicgen_api.service import Completed, GenerationService
from tests.conftest import OFFLINE_ENV, free_port
from tests.pools import ask, ask_together, assert_full_pool_refuses, health, leave_mid_stream, wait_until
from tests.test_api import decode_wav, run_spec_python_client, stream_events

RAY = str(pathlib.Path(sys.executable).parent / "ray")
REPLICAS, QUEUE = 2, 2  # the queue defaults to the replica count
# A loopback-only test cluster without Ray's token auth, whatever ~/.ray/auth_token an earlier local Ray left behind.
RAY_ENV = {**OFFLINE_ENV, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}

# Connects to the cluster first (seconds), then kills each replica named on stdin at once.
KILLER = """
import sys, ray
ray.init(address=sys.argv[1], namespace="serve", logging_level="ERROR")
print("ready", flush=True)
for name in sys.stdin:
    ray.kill(ray.get_actor("SERVE_REPLICA::musicgen#MusicReplica#" + name.strip()), no_restart=True)
    print("killed", flush=True)
"""


@dataclass
class Cluster:
    url: str
    address: str
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def replica_count(url: str) -> int:
    return int(requests.get(f"{url}/api/info", timeout=5).json()["replicas"])


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    port = free_port()
    subprocess.run(
        [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=4", "--num-gpus=2",
         "--include-dashboard=false", "--disable-usage-stats"],
        check=True, env=RAY_ENV, capture_output=True, timeout=120,
    )  # fmt: skip
    yield f"127.0.0.1:{port}"
    subprocess.run([RAY, "stop", "--force"], env=RAY_ENV, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def cluster(ray_head: str, mono_model: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("cluster") / "cluster.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "musicgen_api", "cluster", "--address", ray_head, "--replicas", str(REPLICAS),
             "--gpus-per-replica", "1", "--model", str(mono_model), "--device", "cpu", "--no-mbd",
             "--port", str(port), "--max-duration", "30"],
            stdout=log, stderr=subprocess.STDOUT, env=RAY_ENV,
        )  # fmt: skip
    running = Cluster(f"http://127.0.0.1:{port}", ray_head, process, log_path)

    def ready() -> bool:
        assert process.poll() is None, f"the cluster command exited:\n{running.log()}"
        try:
            return replica_count(running.url) == REPLICAS
        except requests.RequestException:
            return False

    wait_until(ready, 240, "two replicas up")
    yield running
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(timeout=60) == 0, running.log()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()


# --- without Ray: the replica board and the deployment plan --------------------------------------------------


def test_board_phases_arrive_out_of_order_and_go_stale() -> None:
    now = [0.0]
    board = ReplicaBoard(clock=lambda: now[0])
    assert board.busy  # no replica yet: nothing could start a request
    board.report("a", [0], {"model": "m"})
    board.report("b", [0])
    assert (board.idle, board.busy) == (2, False)
    board.report_slot("a", 0, 1)  # a started its first piece
    board.report("a", [0])  # a heartbeat sent before that, delivered late: must not make a idle again
    assert board.idle == 1
    board.waiting = 1  # a request on its way to b
    assert board.busy and board.admits(queue=2)  # a generates, one goes to b, two more may wait
    board.waiting = 3
    assert not board.admits(queue=2)
    board.waiting = 0
    board.report("a", [2])  # a's piece stopped
    assert board.idle == 2
    assert board.describe() == {"model": "m", "replicas": 2, "idle_replicas": 2, "slots": 2, "free_slots": 2}
    now[0] = STALE_AFTER_S + 1
    board.report("b", [2])
    assert board.describe()["replicas"] == 1  # a went quiet: taken for dead
    board.forget("b")
    assert board.busy


def test_board_counts_slots() -> None:
    """Replicas of several slots: the board admits a request while any slot is free, slot by slot, and a late
    report of one slot never undoes a newer one of another."""
    board = ReplicaBoard()
    board.report("a", [0, 0, 0], {"model": "m"})
    board.report("b", [0, 0, 0])
    assert (board.idle, board.describe()["slots"]) == (6, 6)
    for slot in range(3):
        board.report_slot("a", slot, 1)
    board.report_slot("b", 0, 1)
    board.report("a", [1, 0, 0])  # sent before a's second and third started
    info = board.describe()
    assert (board.idle, info["free_slots"], info["idle_replicas"], board.busy) == (2, 2, 0, False)
    board.waiting = 2
    assert board.busy and not board.admits(queue=0) and board.admits(queue=1)
    board.waiting = 0
    board.report_slot("a", 1, 2)  # a's second piece stopped
    board.report("b", [2, 0, 0])
    assert (board.idle, board.describe()["idle_replicas"]) == (4, 1)
    board.report("b", [2, 0, 0, 0])  # b restarted with another --slots: its new shape replaces the old
    assert board.describe()["slots"] == 7


def test_plan_defaults_follow_the_clusters_gpus() -> None:
    eight = plan(ClusterSettings(), gpus_available=8)
    assert (eight.replicas, eight.gpus_per_replica, eight.max_queued) == (8, 1.0, 8)
    assert eight.deployment_options()["max_ongoing_requests"] == 1
    cpu_only = plan(ClusterSettings(), gpus_available=0)
    assert (cpu_only.replicas, cpu_only.gpus_per_replica) == (1, 0.0)
    halves = plan(ClusterSettings(gpus_per_replica=0.5, max_queued=3), gpus_available=2)
    assert (halves.replicas, halves.max_queued) == (4, 3)
    scaling = plan(ClusterSettings(max_replicas=6), gpus_available=2).deployment_options()
    assert scaling["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 6, "target_ongoing_requests": 1}
    assert scaling["max_queued_requests"] == 12 and "num_replicas" not in scaling  # Ray's bound: a backstop
    four = plan(ClusterSettings(replicas=2), gpus_available=2, slots=4)
    options = four.deployment_options()
    assert (four.max_queued, options["max_ongoing_requests"], options["max_queued_requests"]) == (8, 4, 16)


def test_single_process_server_needs_no_ray() -> None:
    code = "import sys, musicgen_api.server, musicgen_api.cli; assert not any(m.startswith('ray') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cluster_flags_refuse_contradictions_and_dead_addresses_at_once() -> None:
    def cluster_command(*flags: str) -> subprocess.CompletedProcess[bytes]:
        command = [sys.executable, "-m", "musicgen_api", "cluster", *flags]
        return subprocess.run(command, capture_output=True, timeout=60, env=RAY_ENV)

    for flags in (["--replicas", "2", "--max-replicas", "3"], ["--min-replicas", "4", "--max-replicas", "2"]):
        done = cluster_command(*flags)
        assert done.returncode == 2
        assert b"invalid setting" in done.stderr and b"replicas" in done.stderr
    done = cluster_command("--address", f"127.0.0.1:{free_port()}")
    assert done.returncode == 2 and b"cannot reach the Ray cluster at 127.0.0.1:" in done.stderr


class Held:
    """A renderer of `slots` slots whose pieces run until the test lets them end."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.started, self.may_end = threading.Semaphore(0), threading.Event()

    def describe(self) -> dict[str, Any]:
        return {}

    def check(self, params: GenerationParams) -> None:
        pass

    def render(self, params: GenerationParams, job: JobControl) -> RenderedAudio:
        job.report(0.01)
        self.started.release()
        self.may_end.wait(30)
        return RenderedAudio(b"", "wav", "audio/wav", 32000, 1, 1.0, 0)


class OneLongStep(Held):
    """A renderer whose one step cannot be interrupted: cancelled during it, the worker stops only after it."""

    def __init__(self) -> None:
        super().__init__(slots=1)

    def render(self, params: GenerationParams, job: JobControl) -> RenderedAudio:
        job.report(0.01)
        self.started.release()
        self.may_end.wait(30)
        job.stop_if_cancelled()  # raises GenerationCancelled once the job is cancelled
        raise AssertionError("the job was not cancelled")


def test_cancelled_replica_handler_returns_only_after_the_worker_stopped() -> None:
    """Ray frees a replica for the next request when its handler returns: that must not happen while the
    cancelled piece still runs, however often the handler is cancelled meanwhile."""
    renderer = OneLongStep()
    service = GenerationService(renderer)
    slot = ReplicaSlots(service, "r1")

    async def scenario() -> None:
        items = []

        async def consume() -> None:
            async for item in slot.generate(GenerationParams("x", 1)):
                items.append(item)

        handler = asyncio.create_task(consume())
        await asyncio.to_thread(renderer.started.acquire, True, 10)
        assert isinstance(items[0], Accepted) and slot.phases == [1]
        for _ in range(3):  # the client went away, and Ray cancels again
            handler.cancel()
            await asyncio.sleep(0.1)
            assert not handler.done() and service.busy
        renderer.may_end.set()
        with pytest.raises(asyncio.CancelledError):
            await handler
        assert not service.busy and slot.phases == [2]

    asyncio.run(scenario())
    service.shutdown()


def test_replica_slots_number_each_piece_and_refuse_beyond_them() -> None:
    """A replica of two slots: two pieces at once, each in its own numbered slot with its own phase; a third is
    refused as busy; once both end, both phases are even again."""
    renderer = Held(slots=2)
    service = GenerationService(renderer)
    slots = ReplicaSlots(service, "r1")

    async def scenario() -> None:
        async def first_items() -> list[Any]:
            return [item async for item in slots.generate(GenerationParams("x", 1))]

        pieces = [asyncio.create_task(first_items()) for _ in range(2)]
        for _ in range(2):
            await asyncio.to_thread(renderer.started.acquire, True, 10)
        refused = [item async for item in slots.generate(GenerationParams("x", 1))]
        assert isinstance(refused[0], Refused) and refused[0].busy
        assert slots.phases == [1, 1]
        renderer.may_end.set()
        done = await asyncio.gather(*pieces)
        assert sorted(items[0].slot for items in done) == [0, 1]
        assert all(isinstance(items[-1], Completed) for items in done)
        assert slots.phases == [2, 2]

    asyncio.run(scenario())
    service.shutdown()


# --- on a Ray cluster ----------------------------------------------------------------------------------------


def test_two_requests_stream_from_different_replicas(cluster: Cluster) -> None:
    answers, _ = ask_together(cluster.url, 2, duration=4)
    assert [a.status for a in answers] == [200, 200]
    replicas = {a.events[0]["replica"] for a in answers}
    assert len(replicas) == 2, "both requests went to the same replica"
    for answer in answers:
        done = answer.events[-1]
        assert done["status"] == "completed" and done["replica"] == answer.events[0]["replica"]
        assert any(e.get("status") == "generating" for e in answer.events)
        wav = decode_wav(done["audio_data"])
        assert (wav.getframerate(), wav.getsampwidth(), wav.getnframes()) == (32000, 2, 4 * 32000)


def test_spec_python_client_through_the_cluster(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    scope = run_spec_python_client(cluster.url)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "{'status': 'healthy'}" and out[-1] == "progress: 100%"
    with decode_wav(scope["audio_b64"]) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnframes()) == (32000, 2, 30 * 32000)


def test_audio_streams_through_the_cluster(cluster: Cluster) -> None:
    events = stream_events(cluster.url, {"description": "relayed live", "duration": 3, "stream_audio": True})
    chunks = [e for e in events if e.get("status") == "audio"]
    assert chunks and chunks[0]["offset"] == 0
    assert sum(c["duration"] for c in chunks) == pytest.approx(3.0)
    assert sum(len(base64.b64decode(c["audio_chunk"])) for c in chunks) == 3 * 32000 * 2
    assert events[-1]["status"] == "completed" and "generating" in {e.get("status") for e in events}


def test_info_and_healthcheck_speak_for_the_cluster(cluster: Cluster) -> None:
    info = requests.get(f"{cluster.url}/api/info", timeout=5).json()
    assert (info["replicas"], info["idle_replicas"], info["channels"], info["max_duration"]) == (2, 2, 1, 30)
    assert health(cluster.url) == (200, {"status": "healthy"})
    assert ask(cluster.url, {"description": "x", "duration": 31}).status == 400  # validated before any replica
    refused = ask(cluster.url, {"description": "x", "mbd": True})  # only a replica knows it has no MBD
    assert refused.status == 400 and "mbd" in refused.body["error"].lower()


def test_beyond_replicas_and_queue_get_json_503(cluster: Cluster) -> None:
    assert_full_pool_refuses(cluster.url, REPLICAS, QUEUE, duration=20)


def test_disconnect_frees_the_replica(cluster: Cluster) -> None:
    assert leave_mid_stream(cluster.url, duration=30) is not None  # the events say which replica
    wait_until(lambda: requests.get(f"{cluster.url}/api/info", timeout=5).json()["idle_replicas"] == 2, 10,
               "both replicas idle")  # fmt: skip
    wait_until(lambda: "cancelled by the ingress" in cluster.log(), 10, "the replica's cancellation logged")
    answers, _ = ask_together(cluster.url, 2, duration=2)  # both replicas free: no queueing, one each
    assert len({a.events[0]["replica"] for a in answers}) == 2
    assert all(a.events[-1]["status"] == "completed" for a in answers)


def test_killed_replica_mid_stream_gives_an_error_event(cluster: Cluster) -> None:
    """Last in this module: the cluster runs on one replica until Serve has replaced the killed one."""
    killer = subprocess.Popen(
        [sys.executable, "-c", KILLER, cluster.address],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=RAY_ENV,
    )  # fmt: skip
    assert killer.stdin is not None and killer.stdout is not None
    try:
        assert killer.stdout.readline().strip() == b"ready"
        events = []
        with requests.post(f"{cluster.url}/api/music", json={"description": "doomed", "duration": 30},
                           stream=True, timeout=120) as r:  # fmt: skip
            for line in r.iter_lines():
                if not line:
                    continue
                events.append(json.loads(line[6:]))
                if len(events) == 3:
                    killer.stdin.write(events[0]["replica"].encode() + b"\n")
                    killer.stdin.flush()
                    assert killer.stdout.readline().strip() == b"killed"
        assert r.status_code == 200
        assert "replica" in events[-1]["error"] and "try again" in events[-1]["error"]
        assert not any(e.get("status") == "completed" for e in events)
    finally:
        killer.kill()
    after = ask(cluster.url, {"description": "after the crash", "duration": 2})
    assert after.status == 200 and after.events[-1]["status"] == "completed"
    assert after.events[0]["replica"] != events[0]["replica"]
    wait_until(lambda: replica_count(cluster.url) == 2, 180, "the killed replica replaced")


def test_sigterm_tells_the_running_pieces_client(cluster: Cluster) -> None:
    """Last: stops the cluster command the way `docker stop` or systemd would."""
    with requests.post(f"{cluster.url}/api/music", json={"description": "interrupted", "duration": 30},
                       stream=True, timeout=120) as r:  # fmt: skip
        events = []
        for line in r.iter_lines():
            if line:
                events.append(json.loads(line[6:]))
                if len(events) == 3:
                    cluster.process.send_signal(signal.SIGTERM)
    assert events[-1] == {"error": "the server is shutting down; try again in a moment"}
    assert cluster.process.wait(timeout=90) == 0
