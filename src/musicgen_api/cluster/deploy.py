"""`musicgen-api cluster`: start (or join) Ray, deploy the ingress and the model replicas on Ray Serve, and take
the application down again on SIGTERM or Ctrl-C.

The queue default is the replica count (the maximum, when autoscaling): a burst as large as the cluster is never
refused, and no request waits much longer than one generation; a longer queue only delays a 503 that the client
could act on (retry later, or elsewhere).
"""

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve
from ray.serve import Application

from musicgen_api.cluster.ingress import MusicIngress
from musicgen_api.cluster.messages import INGRESS_NAME
from musicgen_api.cluster.replica import MusicReplica
from musicgen_api.config import ClusterSettings, Settings, warn_unknown_variables
from musicgen_api.logs import setup_logging
from musicgen_api.service import SHUTDOWN_MESSAGE

log = logging.getLogger("musicgen_api")

APP_NAME = "musicgen"
STOP_TIMEOUT_S = 30.0  # each shutdown step; replicas get Serve's graceful shutdown within it
INGRESS_CONCURRENCY = 1000  # relayed streams, healthchecks and replica heartbeats: all cheap, none may queue


@dataclass(frozen=True)
class Plan:
    """The replica deployment's options, resolved against the cluster's resources."""

    gpus_per_replica: float
    cpus_per_replica: float
    replicas: int | None  # fixed count, or None when autoscaling
    min_replicas: int
    max_replicas: int
    max_queued: int
    slots: int = 1  # generations each replica runs at once (--slots)

    def deployment_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "max_ongoing_requests": self.slots,
            # The ingress enforces max_queued exactly; Ray's bound, which also counts requests being routed, is
            # only a backstop and must not refuse before it.
            "max_queued_requests": self.max_queued + self.max_replicas * self.slots,
            "ray_actor_options": {"num_gpus": self.gpus_per_replica, "num_cpus": self.cpus_per_replica},
        }
        if self.replicas is None:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.slots,
            }
        else:
            options["num_replicas"] = self.replicas
        return options

    def summary(self) -> str:
        count = f"{self.replicas}" if self.replicas is not None else f"{self.min_replicas} to {self.max_replicas}"
        return (
            f"{count} replica(s) of {self.slots} slot(s), {self.gpus_per_replica:g} GPU and "
            f"{self.cpus_per_replica:g} CPU each, "
            f"up to {self.max_queued} queued request(s)"
        )


def plan(cluster: ClusterSettings, gpus_available: float, slots: int = 1) -> Plan:
    """Fill in what the operator left unset from the GPUs the Ray cluster has; each replica runs `slots` at once."""
    gpus = cluster.gpus_per_replica if cluster.gpus_per_replica is not None else (1.0 if gpus_available else 0.0)
    capacity = max(1, int(gpus_available // gpus)) if gpus else 1
    if cluster.min_replicas is not None or cluster.max_replicas is not None:  # autoscaling
        low = cluster.min_replicas or 1
        high = cluster.max_replicas or max(capacity, low)
        return Plan(gpus, cluster.cpus_per_replica, None, low, high, cluster.max_queued or high * slots, slots)
    count = cluster.replicas or capacity
    return Plan(gpus, cluster.cpus_per_replica, count, count, count, cluster.max_queued or count * slots, slots)


def build_application(settings: Settings, replicas: Plan) -> Application:
    # serve.deployment turned both classes into Deployments, which mypy cannot see
    model = MusicReplica.options(**replicas.deployment_options()).bind(settings)  # type: ignore[attr-defined]
    ingress = MusicIngress.options(  # type: ignore[attr-defined]
        max_ongoing_requests=INGRESS_CONCURRENCY, ray_actor_options={"num_cpus": 0}
    )
    return ingress.bind(settings, model, replicas.max_queued)


def _within(seconds: float, what: str, step: Callable[[], object]) -> None:
    """Run a shutdown step, giving up after `seconds`: on Ctrl-C the terminal signals Ray's own processes too, and
    a step that waits for them would wait forever."""
    worker = threading.Thread(target=step, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        log.warning("%s did not finish within %g s (Ray is already stopping); going on", what, seconds)


def _tell_clients_and_stop_pieces() -> None:
    """As a single server does on SIGTERM: each running piece's client gets an error event saying why, before the
    proxies go (Serve's own shutdown would cut the streams without a word)."""
    try:
        ingress = serve.get_deployment_handle(INGRESS_NAME, app_name=APP_NAME)
        ingress.stop_all.remote(SHUTDOWN_MESSAGE, STOP_TIMEOUT_S / 3).result(timeout_s=STOP_TIMEOUT_S / 2)
        time.sleep(0.5)  # the proxies pass the last events on
    except Exception as exc:  # Ray is already going (Ctrl-C reaches its processes too): nobody left to tell
        log.warning("could not tell the clients of running pieces: %r", exc)


def _unreachable(address: str) -> str | None:
    """Why nothing answers at a HOST:PORT address, found in seconds (Ray itself retries for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return None  # "auto" or a ray:// client address: left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


def run(settings: Settings, cluster: ClusterSettings) -> int:
    setup_logging(settings)
    warn_unknown_variables()
    problem = _unreachable(cluster.address) if cluster.address else None
    if problem is not None:
        log.error("cannot reach the Ray cluster at %s (%s); check --address", cluster.address, problem)
        return 2
    try:
        ray.init(address=cluster.address, logging_level=logging.WARNING)
    except ConnectionError as exc:
        log.error("cannot join the Ray cluster at %s: %s; check --address", cluster.address, exc)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # docker stop, systemd: stop as Ctrl-C does
    try:
        gpus = ray.cluster_resources().get("GPU", 0.0)
        replicas = plan(cluster, gpus, settings.slots)
        if replicas.gpus_per_replica * replicas.min_replicas > gpus:
            log.warning("the Ray cluster has %g GPU(s), fewer than %s need; some wait", gpus, replicas.summary())
        log.info("deploying %s of %s", replicas.summary(), settings.model)
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_application(settings, replicas), name=APP_NAME, route_prefix="/")
        log.info("serving on http://%s:%d (Ray Serve application %r)", settings.host, settings.port, APP_NAME)
        while True:
            signal.pause()  # until SIGINT or SIGTERM raises KeyboardInterrupt
    except KeyboardInterrupt:
        _tell_clients_and_stop_pieces()
        return 0
    except RuntimeError as exc:  # a replica failed to start (the model did not load)
        log.error("cannot start: %s; the replica's error is in the log above", exc)
        return 2
    finally:
        if cluster.address is not None:  # a shared cluster: remove this application only
            log.info("stopping: removing the application from Ray Serve")
            _within(STOP_TIMEOUT_S, "removing the application", lambda: serve.delete(APP_NAME))
        else:  # Ray was started for this command: take it all down
            log.info("stopping: shutting down Ray Serve and the local Ray")
            _within(STOP_TIMEOUT_S, "stopping Ray Serve", serve.shutdown)
            _within(STOP_TIMEOUT_S, "stopping Ray", ray.shutdown)
