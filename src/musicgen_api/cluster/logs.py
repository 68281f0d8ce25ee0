"""Logging inside Ray Serve replicas, where Ray owns the root logger and streams each worker's stderr to the
`musicgen-api cluster` console."""

import logging

from musicgen_api.config import Settings
from musicgen_api.logs import log_handler


class _NotHeartbeats(logging.Filter):
    """Drops Serve's access-log line for each replica heartbeat (one per replica per second)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(record, "serve_access_log", False) and record.getMessage().startswith("CALL report "))


def setup_replica_logging(settings: Settings, ingress: bool = False) -> None:
    """Our records to stderr in the chosen format, leaving Ray's own logging as Ray set it up."""
    ours = logging.getLogger("musicgen_api")
    ours.handlers = [log_handler(settings)]
    ours.setLevel(settings.log_level.upper())
    ours.propagate = False
    if ingress:
        logging.getLogger("ray.serve").addFilter(_NotHeartbeats())
