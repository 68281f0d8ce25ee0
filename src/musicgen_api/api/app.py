"""Builds the FastAPI application: the spec's routes over whatever runs the generations (one local slot, or a Ray
Serve cluster's replicas), the server's limits, and the web page at `/`."""

from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from musicgen_api import __version__
from musicgen_api.api.errors import install_error_handlers
from musicgen_api.api.guards import install_guards, read_json_body
from musicgen_api.api.schema import MusicRequest, parse_music_request, request_fields
from musicgen_api.api.sse import EventStreamResponse
from musicgen_api.config import Settings
from musicgen_api.generation import GenerationParams
from musicgen_api.service import JobStream
from musicgen_api.web import install_web_page

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # keep proxies from buffering the stream

MUSIC_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": MusicRequest.model_json_schema()}},
    },
    "responses": {
        "200": {
            "description": "An SSE stream of `data: <json>` events: started, generating (progress), then completed "
            '(base64 WAV in audio_data) or {"error": ...}.',
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        "400": {"description": 'Invalid parameters: {"error": message naming the field}.'},
        "503": {"description": "Busy: another generation is running (Retry-After header)."},
    },
}


class Generations(Protocol):
    """What the routes need: `GenerationService` (one slot in this process) or the cluster's `ReplicaPool`."""

    @property
    def busy(self) -> bool: ...  # True when a request now would not start at once

    def describe(self) -> dict[str, Any]: ...
    async def start(self, params: GenerationParams) -> JobStream: ...  # raises Busy or InvalidRequest


def create_app(service: Generations, settings: Settings) -> FastAPI:
    app = FastAPI(title="musicgen-api", version=__version__)
    install_error_handlers(app, settings.retry_after_s)
    install_guards(app, settings)

    @app.get("/api/healthcheck")
    async def healthcheck() -> JSONResponse:
        if service.busy:
            return JSONResponse({"status": "busy"}, status_code=503)
        return JSONResponse({"status": "healthy"})

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        """What this server runs and accepts, so clients (the web page, the CLI) need not hard-code it."""
        described = service.describe()
        return {
            "version": __version__,
            **described,
            "max_duration": settings.max_duration,
            "max_description_chars": settings.max_description_chars,
            "mbd_available": described.get("mbd", {}).get("state") == "ready",
            "fields": request_fields(settings.max_duration, settings.max_description_chars),
        }

    @app.post("/api/music", openapi_extra=MUSIC_OPENAPI)
    async def music(request: Request) -> StreamingResponse:
        body = await read_json_body(request, settings.max_body_bytes)
        params = parse_music_request(body, settings.max_duration, settings.max_description_chars)
        job = await service.start(params)
        return EventStreamResponse(job, settings.send_timeout, SSE_HEADERS)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_page() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    install_web_page(app)
    return app
