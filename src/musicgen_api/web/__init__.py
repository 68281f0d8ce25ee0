"""The browser page: plain HTML, CSS and JavaScript modules in `static/`, served at `/` by the API process.

No build step and nothing fetched from a CDN (GPU boxes are often offline): the files ship as package data and the
page speaks only the public API (`GET /api/info`, `GET /api/healthcheck`, `POST /api/music`), so it knows no more
than any other client. This module only hands the files to FastAPI; the API routes live in `api/`.
"""

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

STATIC_DIR = Path(__file__).with_name("static")
NO_CACHE = {"Cache-Control": "no-cache"}  # revalidate (a cheap 304) so an upgraded server never runs stale scripts


class _RevalidatedFiles(StaticFiles):
    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(NO_CACHE)
        return response


def install_web_page(app: FastAPI) -> None:
    """Serve the page at `/` and its files under `/static/`."""
    app.mount("/static", _RevalidatedFiles(directory=STATIC_DIR), name="static")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=NO_CACHE)
