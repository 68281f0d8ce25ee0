"""Log output in the chosen format (text, or one JSON object per line with the generation's request id), for the
server and for the cluster's processes alike; imports nothing heavy, so the cluster's ingress can use it."""

import json
import logging
import sys
import time

from musicgen_api.config import Settings


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the generation's request id when the record has one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def log_handler(settings: Settings) -> logging.Handler:
    """A stderr handler in the chosen format: text, or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), handlers=[log_handler(settings)], force=True)
