"""Errors → HTTP answers, in one place. Every error body is `{"error": "<message>"}`; nothing leaks a stack trace."""

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from musicgen_api import metrics
from musicgen_api.errors import Busy, InvalidRequest, NotReady, PayloadTooLarge, UnsupportedMediaType

log = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    @app.exception_handler(InvalidRequest)
    async def invalid(_: Request, exc: InvalidRequest) -> JSONResponse:
        status = 413 if isinstance(exc, PayloadTooLarge) else 415 if isinstance(exc, UnsupportedMediaType) else 400
        body = {"error": str(exc)} if exc.field is None else {"error": str(exc), "field": exc.field}
        return JSONResponse(body, status_code=status)

    @app.exception_handler(NotReady)
    async def not_ready(_: Request, exc: NotReady) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": str(retry_after_s)})

    @app.exception_handler(Busy)
    async def busy(_: Request, exc: Busy) -> JSONResponse:
        metrics.BUSY_REJECTIONS.inc()
        message = f"{exc}; try again in a few seconds (GET /api/healthcheck says when the server is free)"
        return JSONResponse({"error": message}, status_code=503, headers={"Retry-After": str(retry_after_s)})

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal server error; the server log has the details"}, status_code=500)
