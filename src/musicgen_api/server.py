"""Runs the service: logging, model loading, the ASGI server, and a shutdown that tells the client why.

On SIGTERM or Ctrl-C the running generation is stopped first, so its client receives an `{"error": ...}` event
saying the server is shutting down, and uvicorn's graceful shutdown then has nothing left to wait for.
"""

import logging
from types import FrameType

import uvicorn

from musicgen_api.api.app import create_app
from musicgen_api.audio.mbd_checkpoint import MBDLoadError
from musicgen_api.config import Settings, warn_unknown_variables
from musicgen_api.engine.loading import ModelLoadError
from musicgen_api.logs import setup_logging
from musicgen_api.pipeline import build_pipeline
from musicgen_api.service import SHUTDOWN_MESSAGE, GenerationService

log = logging.getLogger("musicgen_api")


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: GenerationService) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.service.stop_all(SHUTDOWN_MESSAGE)
        super().handle_exit(sig, frame)


def run(settings: Settings) -> int:
    setup_logging(settings)
    warn_unknown_variables()
    try:
        pipeline = build_pipeline(settings)
    except (ModelLoadError, MBDLoadError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    service = GenerationService(pipeline)
    app = create_app(service, settings)
    log.info("serving on http://%s:%d", settings.host, settings.port)
    log_config = None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=log_config,
        timeout_graceful_shutdown=10,
    )
    try:
        _Server(config, service).run()
    finally:
        service.shutdown()
    return 0
