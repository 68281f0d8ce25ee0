"""The README's engine-free alternative: deploy/haproxy.cfg in front of two plain `musicgen-api serve` processes
passes the same pool cases as the Ray cluster (only its ports are changed here)."""

import pathlib
import shutil
import subprocess
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import ServerFactory, free_port
from tests.pools import ask_together, assert_full_pool_refuses, health, leave_mid_stream, wait_until

CONFIG = pathlib.Path(__file__).parents[1] / "deploy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

pytestmark = pytest.mark.skipif(
    not pathlib.Path(HAPROXY).exists(), reason="HAProxy is not installed: apt-get install haproxy (.ci/run does)"
)


@pytest.fixture(scope="module")
def replicas(server_factory: ServerFactory, mono_model: pathlib.Path) -> list[str]:
    return [server_factory(mono_model, "--no-mbd").url for _ in range(2)]


@pytest.fixture(scope="module")
def haproxy(replicas: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("haproxy")
    port = free_port()
    text = CONFIG.read_text()
    for example, real in [("127.0.0.1:5000", f"127.0.0.1:{port}")] + [
        (f"127.0.0.1:500{i}", url.removeprefix("http://")) for i, url in enumerate(replicas, start=1)
    ]:
        assert example in text, f"{example} is no longer in {CONFIG}"
        text = text.replace(example, real)
    (folder / "haproxy.cfg").write_text(text)
    with (folder / "haproxy.log").open("wb") as log:
        process = subprocess.Popen([HAPROXY, "-f", str(folder / "haproxy.cfg")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        assert process.poll() is None, (folder / "haproxy.log").read_text()
        try:
            return requests.get(f"{url}/api/healthcheck", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(answering, 20, "HAProxy answering")
    yield url
    process.terminate()
    process.wait(timeout=10)


def completed(url: str) -> float:
    """How many pieces this replica has completed, from its Prometheus counter."""
    for line in requests.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith('musicgen_generations_total{outcome="completed"}'):
            return float(line.split()[-1])
    return 0.0


def test_example_config_is_valid() -> None:
    done = subprocess.run([HAPROXY, "-c", "-f", str(CONFIG)], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()


def test_two_requests_run_on_both_replicas(haproxy: str, replicas: list[str]) -> None:
    before = [completed(url) for url in replicas]
    answers, _ = ask_together(haproxy, 2, duration=4)
    assert all(a.status == 200 and a.events[-1]["status"] == "completed" for a in answers)
    assert [completed(url) - done for url, done in zip(replicas, before, strict=True)] == [1, 1]  # one each


def test_beyond_replicas_and_queue_get_json_503(haproxy: str) -> None:
    assert_full_pool_refuses(haproxy, replicas=2, queue=2, duration=20)


def test_disconnect_frees_the_replica(haproxy: str, replicas: list[str]) -> None:
    leave_mid_stream(haproxy, duration=30)
    wait_until(lambda: all(health(url)[0] == 200 for url in replicas), 10, "both replicas idle")
    before = [completed(url) for url in replicas]
    answers, _ = ask_together(haproxy, 2, duration=4)
    assert all(a.status == 200 and a.events[-1]["status"] == "completed" for a in answers)
    assert [completed(url) - done for url, done in zip(replicas, before, strict=True)] == [1, 1]
