"""The console command `musicgen-api`. `serve` loads the model and serves the API.

Flags override `MUSICGEN_*` environment variables, which override the defaults in `Settings`.
"""

import argparse
import logging
import sys
from typing import Any, get_args

from pydantic import ValidationError

from musicgen_api.config import Backend, Device, DType, Settings

log = logging.getLogger("musicgen_api")


def _serve_parser(sub: Any) -> None:
    serve = sub.add_parser("serve", help="load a MusicGen model and serve the HTTP API")
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all) [MUSICGEN_HOST]")
    serve.add_argument("--port", type=int, help="port (default 5000) [MUSICGEN_PORT]")
    serve.add_argument(
        "--model",
        help="hub id or local folder of a MusicGen checkpoint (default facebook/musicgen-small) [MUSICGEN_MODEL]",
    )
    serve.add_argument("--device", choices=get_args(Device), help="where to run (default auto) [MUSICGEN_DEVICE]")
    serve.add_argument(
        "--dtype", choices=get_args(DType), help="weights precision (default auto: float16 on CUDA, float32 on CPU)"
    )
    serve.add_argument(
        "--backend", choices=get_args(Backend), help="decode loop: fast (default) or transformers' generate (reference)"
    )
    serve.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="CUDA: fuse the decode step with torch.compile before capturing it (default on; off starts faster)",
    )
    serve.add_argument("--max-duration", type=int, help="longest clip a request may ask for, seconds (default 30)")
    serve.add_argument("--max-description-chars", type=int, help="longest prompt accepted, characters (default 2000)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")


def serve(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"musicgen-api: invalid setting: {problems}", file=sys.stderr)  # noqa: T201 (logging is not set up yet)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # Heavy imports after argument parsing, so `--help` and bad flags answer at once.
    import uvicorn

    from musicgen_api.api.app import create_app
    from musicgen_api.engine.loading import ModelLoadError
    from musicgen_api.pipeline import build_pipeline
    from musicgen_api.service import GenerationService

    try:
        pipeline = build_pipeline(settings)
    except (ModelLoadError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    app = create_app(GenerationService(pipeline), settings)
    log.info("serving on http://%s:%d", settings.host, settings.port)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=10)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="musicgen-api", description="Text-to-music HTTP service on MusicGen.")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    args = parser.parse_args(argv)
    sys.exit(serve(args))
