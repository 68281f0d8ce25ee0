"""The console command `musicgen-api`. `serve` loads the model and serves the API; `generate` and `health` are
clients of a running server (they import httpx, never torch, so they start at once).

Flags override `MUSICGEN_*` environment variables, which override the defaults in `Settings`.
"""

import argparse
import io
import logging
import math
import os
import re
import sys
import time
import wave
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from musicgen_api.config import Backend, Device, DType, Settings
from musicgen_api.errors import Busy, GenerationFailed, InvalidRequest

log = logging.getLogger("musicgen_api")

DEFAULT_URL = "http://127.0.0.1:5000"
API_FLAGS = ("duration", "mbd", "top_k", "top_p", "temperature", "cfg_coef")  # sent only when given
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_BUSY, EXIT_UNREACHABLE, EXIT_CANCELLED = 1, 2, 3, 4, 130
EXIT_CODES_HELP = (
    "exit codes: 0 done, 1 the generation failed (or the file could not be written), 2 bad input, 3 server busy, "
    "4 server unreachable or connection lost, 130 cancelled with Ctrl-C"
)


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
    serve.add_argument(
        "--mbd",
        action=argparse.BooleanOptionalAction,
        help="load MultiBand Diffusion so requests may ask for mbd: true (default on; --no-mbd skips it)",
    )
    serve.add_argument(
        "--mbd-weights", help="hub repo or local file of the MBD weights (default facebook/multiband-diffusion)"
    )
    serve.add_argument("--max-duration", type=int, help="longest clip a request may ask for, seconds (default 120)")
    serve.add_argument("--window", type=int, help="MusicGen's window, seconds; longer pieces are extended (default 30)")
    serve.add_argument("--extend-stride", type=int, help="new seconds per window after the first (default 18)")
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
    from musicgen_api.audio.mbd_checkpoint import MBDLoadError
    from musicgen_api.engine.loading import ModelLoadError
    from musicgen_api.pipeline import build_pipeline
    from musicgen_api.service import GenerationService

    try:
        pipeline = build_pipeline(settings)
    except (ModelLoadError, MBDLoadError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    app = create_app(GenerationService(pipeline), settings)
    log.info("serving on http://%s:%d", settings.host, settings.port)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=10)
    return 0


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("MUSICGEN_URL", DEFAULT_URL),
        help=f"the server's address (default {DEFAULT_URL}) [MUSICGEN_URL]",
    )


def _generate_parser(sub: Any) -> None:
    gen = sub.add_parser(
        "generate",
        help="ask a running server for a clip, with a progress bar, and save it as a WAV",
        description="Ask a running musicgen-api server for a clip and save it as a WAV. Ctrl-C cancels it on the "
        "server too. Parameters left out take the server's defaults.",
        epilog=EXIT_CODES_HELP,
    )
    gen.add_argument("description", help='what the music should sound like, e.g. "lofi hip hop with warm piano"')
    _url_argument(gen)
    gen.add_argument("-o", "--output", help="WAV file to write (default: named after the description; - for stdout)")
    gen.add_argument("--duration", type=int, help="seconds, 1 to the server's --max-duration (default 30)")
    gen.add_argument("--mbd", action=argparse.BooleanOptionalAction, help="MultiBand Diffusion decoding (default off)")
    gen.add_argument("--top-k", type=int, help="sample from the k most likely tokens (default 250)")
    gen.add_argument("--top-p", type=_finite_float, help="nucleus sampling, 0 to 1; 0 (default) uses top-k instead")
    gen.add_argument("--temperature", type=_finite_float, help="softmax temperature, above 0 (default 1.0)")
    gen.add_argument("--cfg-coef", type=_finite_float, help="classifier-free guidance coefficient (default 3.0)")
    gen.add_argument("-q", "--quiet", action="store_true", help="print errors only: no progress bar, no summary")


def _health_parser(sub: Any) -> None:
    health = sub.add_parser(
        "health",
        help="print a running server's status: healthy or busy",
        description="Print a running server's status. Exit code 0: healthy, 3: busy, 4: unreachable.",
    )
    _url_argument(health)


def _fail(message: str) -> None:
    sys.stderr.write(f"musicgen-api: {message}\n")


def _file_name(description: str) -> str:
    """A WAV file name from the prompt, as the web page's download button makes it."""
    slug = re.sub(r"[\W_]+", "-", description.lower()).strip("-")[:60].strip("-")
    return f"{slug or 'musicgen'}.wav"


def _summary(destination: str, wav: bytes, seconds: float) -> str:
    with wave.open(io.BytesIO(wav), "rb") as w:
        length, channels, rate = w.getnframes() / w.getframerate(), w.getnchannels(), w.getframerate()
    return f"saved {destination}: {length:.1f} s, {channels} channel(s), {rate} Hz; generated in {seconds:.1f} s"


def generate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from musicgen_api import client

    params = {"description": args.description} | {
        name: getattr(args, name) for name in API_FLAGS if getattr(args, name) is not None
    }
    output = args.output or _file_name(args.description)
    if output != "-" and not Path(output).resolve().parent.is_dir():
        _fail(f"cannot write {output}: its folder does not exist; create it or choose another --output")
        return EXIT_BAD_INPUT
    bar = Progress(
        TextColumn("generating"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,  # the bar gives way to the one line that says how it ended
        disable=args.quiet or not sys.stderr.isatty(),  # a bar in a log file is noise
    )
    exit_codes = {
        InvalidRequest: EXIT_BAD_INPUT,
        Busy: EXIT_BUSY,
        client.ServerUnreachable: EXIT_UNREACHABLE,
        GenerationFailed: EXIT_FAILED,
    }
    started = time.perf_counter()
    try:
        with bar:
            task = bar.add_task("generating", total=100)
            wav = client.generate(args.url, params, lambda percent: bar.update(task, completed=percent))
    except KeyboardInterrupt:
        _fail("cancelled; the server stops this generation and is free again")
        return EXIT_CANCELLED
    except tuple(exit_codes) as exc:
        _fail(str(exc))
        return next(code for kind, code in exit_codes.items() if isinstance(exc, kind))
    try:
        if output == "-":
            sys.stdout.buffer.write(wav)
        else:
            Path(output).write_bytes(wav)
    except OSError as exc:
        _fail(f"cannot write {output}: {exc}; choose another --output")
        return EXIT_FAILED
    if not args.quiet:
        sys.stderr.write(_summary("to stdout" if output == "-" else output, wav, time.perf_counter() - started) + "\n")
    return 0


def health(args: argparse.Namespace) -> int:
    from musicgen_api import client

    try:
        status = client.health(args.url)
    except client.ServerUnreachable as exc:
        _fail(str(exc))
        return EXIT_UNREACHABLE
    sys.stdout.write(f"{status}\n")
    return 0 if status == "healthy" else EXIT_BUSY


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="musicgen-api", description="Text-to-music HTTP service on MusicGen.")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _generate_parser(sub)
    _health_parser(sub)
    args = parser.parse_args(argv)
    commands = {"serve": serve, "generate": generate, "health": health}
    sys.exit(commands[args.command](args))
