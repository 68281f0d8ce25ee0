"""What a request must get past before any route runs: the optional API key, CORS, and the body limits."""

import hmac

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from musicgen_api.config import Settings
from musicgen_api.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

PUBLIC_PATHS = ("/api/healthcheck",)  # load balancers probe it without credentials
PROTECTED_PREFIXES = ("/api/", "/metrics", "/docs", "/redoc", "/openapi.json")  # the page's static files stay public


class ApiKeyGuard:
    """Bearer-token check for every protected path, compared in constant time; 401 with a JSON error otherwise."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path not in PUBLIC_PATHS and path.startswith(PROTECTED_PREFIXES):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = b'{"error": "this server needs an API key: send the header Authorization: Bearer <key>"}'
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                    (b"content-length", str(len(body)).encode())]})  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def install_guards(app: FastAPI, settings: Settings) -> None:
    if settings.api_key is not None:
        app.add_middleware(ApiKeyGuard, key=settings.api_key.get_secret_value())
    if settings.cors_origins:  # added last, so outermost: answers preflights, and a 401 still carries CORS headers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
        )


async def read_json_body(request: Request, limit: int) -> bytes:
    """The body of a JSON request, refused early when it is declared as something else or grows past `limit`."""
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"the request body must be JSON: send Content-Type: application/json, not {media_type}"
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is {int(declared)} bytes; this server accepts at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is larger than the {limit} bytes this server accepts")
        chunks.append(chunk)
    if size == 0:
        raise InvalidRequest('the request body is empty; send a JSON object such as {"description": "..."}')
    return b"".join(chunks)
