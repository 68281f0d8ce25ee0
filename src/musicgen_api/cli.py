"""The console command `musicgen-api`. `serve` loads the model and serves the API; `generate` and `health` are
clients of a running server (they import httpx, never torch, so they start at once).

Flags override `MUSICGEN_*` environment variables, which override the defaults in `Settings`.
"""

import argparse
import base64
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, get_args

from pydantic import ValidationError

from musicgen_api.config import Backend, ClusterSettings, Device, DType, Quantize, Settings
from musicgen_api.errors import Busy, GenerationFailed, InvalidRequest
from musicgen_api.generation import AudioFormat, Normalization

if TYPE_CHECKING:
    from musicgen_api.client import Clip

log = logging.getLogger("musicgen_api")
SettingsT = TypeVar("SettingsT", Settings, ClusterSettings)

DEFAULT_URL = "http://127.0.0.1:5000"
# Request fields sent only when given: as the flag's value, and the files' bytes in base64.
API_FLAGS = ("duration", "mbd", "top_k", "top_p", "temperature", "cfg_coef", "seed", "normalization", "return_prompt")
FILE_FLAGS = ("audio_prompt", "melody")
FORMATS: tuple[str, ...] = get_args(AudioFormat)  # each also the file extension
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_BUSY, EXIT_UNREACHABLE, EXIT_CANCELLED = 1, 2, 3, 4, 130
EXIT_CODES_HELP = (
    "exit codes: 0 done, 1 the generation failed (or the file could not be written), 2 bad input, 3 server busy, "
    "4 server unreachable or connection lost, 130 cancelled with Ctrl-C"
)


def _server_flags(serve: argparse.ArgumentParser) -> None:
    """The flags of the served API and its model: the same for one process and for each replica of a cluster."""
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all) [MUSICGEN_HOST]")
    serve.add_argument("--port", type=int, help="port (default 5000) [MUSICGEN_PORT]")
    serve.add_argument(
        "--model",
        help="hub id or local folder of a MusicGen checkpoint (default facebook/musicgen-small) [MUSICGEN_MODEL]",
    )
    serve.add_argument("--device", choices=get_args(Device), help="where to run (default auto) [MUSICGEN_DEVICE]")
    serve.add_argument(
        "--dtype",
        choices=get_args(DType),
        help="weights precision (default auto: float16 on CUDA; float32 on CPU, the fast decoder's weights float16 "
        "where PyTorch has fbgemm (x86), else bfloat16 on CPUs with native bfloat16; float32 keeps it all float32)",
    )
    serve.add_argument(
        "--quantize",
        choices=get_args(Quantize),
        help="int8: store the fast decoder's weights as int8 (fastest on CPU, less exact; default none)",
    )
    serve.add_argument(
        "--backend", choices=get_args(Backend), help="decode loop: fast (default) or transformers' generate (reference)"
    )
    serve.add_argument(
        "--slots",
        type=int,
        help="generations at once, decoded together in one batched step (default 1: one at a time, the others get "
        "503); their KV caches are allocated at start-up, which refuses more than fit [MUSICGEN_SLOTS]",
    )
    serve.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="CUDA: fuse the decode step with torch.compile before capturing it (default on; off starts faster)",
    )
    serve.add_argument(
        "--mbd",
        action=argparse.BooleanOptionalAction,
        help="MultiBand Diffusion for requests with mbd: true. Default: use it when its weights can be had (local "
        "ones before serving, a download in the background); --mbd requires it (start-up fails without the "
        "weights); --no-mbd skips it [MUSICGEN_MBD=auto|on|off]",
    )
    serve.add_argument(
        "--mbd-weights", help="hub repo or local file of the MBD weights (default facebook/multiband-diffusion)"
    )
    serve.add_argument("--max-duration", type=int, help="longest clip a request may ask for, seconds (default 120)")
    serve.add_argument("--window", type=int, help="MusicGen's window, seconds; longer pieces are extended (default 30)")
    serve.add_argument("--extend-stride", type=int, help="new seconds per window after the first (default 18)")
    serve.add_argument("--max-description-chars", type=int, help="longest prompt accepted, characters (default 2000)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    serve.add_argument("--log-format", choices=["text", "json"], help="json: one object per line with request ids")
    serve.add_argument("--api-key", help="require Authorization: Bearer KEY on all but the healthcheck")
    serve.add_argument("--cors-origins", nargs="+", help="browser origins allowed to call the API (default none)")
    serve.add_argument(
        "--send-timeout",
        type=float,
        help="drop a client that takes longer than this to accept one event, seconds (default 30)",
    )
    serve.add_argument("--max-body-bytes", type=int, help="largest request body (default 16 MiB)")


def _serve_parser(sub: Any) -> None:
    _server_flags(sub.add_parser("serve", help="load a MusicGen model and serve the HTTP API"))


def _cluster_parser(sub: Any) -> None:
    cluster = sub.add_parser(
        "cluster",
        help="serve the same API from many replicas (GPUs, machines) on Ray Serve; needs musicgen-api[ray]",
        description="Deploy the API on Ray Serve: a small ingress at --host:--port and model replicas, one "
        "generation each. A request goes to an idle replica, waits in a bounded queue when all are busy, and is "
        "answered 503 when the queue is full too. Ctrl-C or SIGTERM removes the application.",
    )
    _server_flags(cluster)
    ray_flags = cluster.add_argument_group("Ray")
    ray_flags.add_argument(
        "--address", help="Ray cluster to join: HEAD_IP:6379, auto or ray://HEAD_IP:10001 (default: start Ray here)"
    )
    ray_flags.add_argument("--replicas", type=int, help="fixed number of replicas (default: one per GPU, 1 without)")
    ray_flags.add_argument("--min-replicas", type=int, help="autoscale from this many (default 1 when autoscaling)")
    ray_flags.add_argument("--max-replicas", type=int, help="autoscale up to this many (default: one per GPU)")
    ray_flags.add_argument("--gpus-per-replica", type=float, help="default 1 when the cluster has GPUs, else 0")
    ray_flags.add_argument("--cpus-per-replica", type=float, help="default 1")
    ray_flags.add_argument(
        "--max-queued", type=int, help="requests that may wait for a busy cluster before 503 (default: replicas)"
    )


def _settings(args: argparse.Namespace, kind: type[SettingsT]) -> SettingsT:
    """The given flags that belong to `kind`, over its environment variables and defaults."""
    given = {k: v for k, v in vars(args).items() if k in kind.model_fields and v is not None}
    return kind(**given)


def _invalid_setting(exc: ValidationError) -> int:
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    print(f"musicgen-api: invalid setting: {problems}", file=sys.stderr)  # noqa: T201 (logging is not set up yet)
    return 2


def serve(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args, Settings)
    except ValidationError as exc:
        return _invalid_setting(exc)
    # Heavy imports after argument parsing, so `--help` and bad flags answer at once.
    from musicgen_api.server import run

    return run(settings)


def cluster(args: argparse.Namespace) -> int:
    try:
        settings, cluster_settings = _settings(args, Settings), _settings(args, ClusterSettings)
    except ValidationError as exc:
        return _invalid_setting(exc)
    try:
        from musicgen_api.cluster.deploy import run
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("ray"):
            raise
        _fail("the cluster needs Ray Serve: pip install 'musicgen-api[ray]'")
        return 2
    return run(settings, cluster_settings)


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
    parser.add_argument(
        "--api-key",
        default=os.environ.get("MUSICGEN_API_KEY"),
        help="the key of a server started with --api-key [MUSICGEN_API_KEY]",
    )


def _generate_parser(sub: Any) -> None:
    gen = sub.add_parser(
        "generate",
        help="ask a running server for a clip, with a progress bar, and save it (WAV, FLAC, MP3 or OGG)",
        description="Ask a running musicgen-api server for a clip and save it. Ctrl-C cancels it on the server too. "
        "Parameters left out take the server's defaults.",
        epilog=EXIT_CODES_HELP,
    )
    gen.add_argument("description", help='what the music should sound like, e.g. "lofi hip hop with warm piano"')
    _url_argument(gen)
    gen.add_argument(
        "-o",
        "--output",
        help="file to write (default: named after the description, with the format's extension; - for stdout)",
    )
    gen.add_argument("--duration", type=int, help="seconds, 1 to the server's --max-duration (default 30)")
    gen.add_argument("--mbd", action=argparse.BooleanOptionalAction, help="MultiBand Diffusion decoding (default off)")
    gen.add_argument("--top-k", type=int, help="sample from the k most likely tokens (default 250)")
    gen.add_argument("--top-p", type=_finite_float, help="nucleus sampling, 0 to 1; 0 (default) uses top-k instead")
    gen.add_argument("--temperature", type=_finite_float, help="softmax temperature, above 0 (default 1.0)")
    gen.add_argument("--cfg-coef", type=_finite_float, help="classifier-free guidance coefficient (default 3.0)")
    gen.add_argument(
        "--seed",
        type=int,
        help="0 to 2**63-1: the same request with the same seed makes the same clip (default random; printed)",
    )
    gen.add_argument(
        "--format", choices=FORMATS, help="audio file format (default: -o's extension if it is one of these, else wav)"
    )
    gen.add_argument(
        "--normalization",
        choices=get_args(Normalization),
        help="loudness (default: -14 LUFS), peak (-1 dBFS), rms (-20 dBFS), clip, or none (the model's levels)",
    )
    gen.add_argument("--audio-prompt", metavar="FILE", help="a WAV, FLAC, MP3 or OGG file to continue")
    gen.add_argument(
        "--return-prompt",
        action=argparse.BooleanOptionalAction,
        help="with --audio-prompt: the clip starts with the prompt (default) or holds only the new audio",
    )
    gen.add_argument("--melody", metavar="FILE", help="a melody to follow (needs a MusicGen-Melody server)")
    gen.add_argument(
        "--stream",
        action="store_true",
        help="with -o -: write the WAV to stdout as the audio is made (pipe it to a player); with a file, no change",
    )
    gen.add_argument("-q", "--quiet", action="store_true", help="print errors only: no progress bar, no summary")


def _health_parser(sub: Any) -> None:
    health = sub.add_parser(
        "health",
        help="print a running server's status (healthy or busy) and what it serves",
        description="Print a running server's status and, where it says, its model, channels, sample rate, longest "
        "clip and whether it offers MBD. Exit code 0: healthy, 3: busy, 4: unreachable.",
    )
    _url_argument(health)


def _fail(message: str) -> None:
    sys.stderr.write(f"musicgen-api: {message}\n")


def _file_name(description: str, audio_format: str) -> str:
    """A file name from the prompt, as the web page's download button makes it."""
    slug = re.sub(r"[\W_]+", "-", description.lower()).strip("-")[:60].strip("-")
    return f"{slug or 'musicgen'}.{audio_format}"


def _format_of(output: str | None) -> str | None:
    """The audio format `-o`'s extension names, if it names one."""
    extension = Path(output).suffix.lower().lstrip(".") if output else ""
    return extension if extension in FORMATS else None


def _read_files(args: argparse.Namespace) -> dict[str, str]:
    """The file flags given, as base64 request fields; OSError names the flag when a file cannot be read."""
    fields = {}
    for name in FILE_FLAGS:
        path = getattr(args, name)
        if path is not None:
            try:
                fields[name] = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            except OSError as exc:
                flag = "--" + name.replace("_", "-")
                raise OSError(f"cannot read {flag} {path}: {exc.strerror or exc}; check the path") from exc
    return fields


def _summary(destination: str, clip: "Clip", seconds: float) -> str:
    saved = f"saved {destination}: {clip.duration:.1f} s, {clip.channels} channel(s), {clip.sample_rate} Hz"
    seed = "" if clip.seed is None else f", seed {clip.seed} (--seed {clip.seed} makes it again)"
    return f"{saved}{seed}; generated in {seconds:.1f} s"


def generate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from musicgen_api import client

    params = {"description": args.description} | {
        name: getattr(args, name) for name in API_FLAGS if getattr(args, name) is not None
    }
    audio_format = args.format or _format_of(args.output) or "wav"
    if args.format or audio_format != "wav":  # a plain WAV asks nothing beyond the spec
        params["format"] = audio_format
    output = args.output or _file_name(args.description, audio_format)
    streaming = args.stream and output == "-"
    if streaming and audio_format != "wav":
        _fail(f"--stream writes WAV as it arrives; leave out --format {audio_format}, or write a file with -o")
        return EXIT_BAD_INPUT
    if output != "-" and not Path(output).resolve().parent.is_dir():
        _fail(f"cannot write {output}: its folder does not exist; create it or choose another --output")
        return EXIT_BAD_INPUT
    try:
        params |= _read_files(args)
    except OSError as exc:
        _fail(str(exc))
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
    exit_codes: dict[type[Exception], int] = {
        InvalidRequest: EXIT_BAD_INPUT,
        Busy: EXIT_BUSY,
        client.ServerUnreachable: EXIT_UNREACHABLE,
        GenerationFailed: EXIT_FAILED,
    }
    started = time.perf_counter()
    live = client.StreamingWav(sys.stdout.buffer) if streaming else None
    try:
        with bar:
            task = bar.add_task("generating", total=100)
            progress = lambda percent: bar.update(task, completed=percent)  # noqa: E731
            on_audio = live.write if live else None
            clip = client.generate(args.url, params, progress, api_key=args.api_key, on_audio=on_audio)
    except KeyboardInterrupt:
        _fail("cancelled; the server stops this generation and is free again")
        return EXIT_CANCELLED
    except tuple(exit_codes) as exc:
        _fail(_with_flag(exc))
        return next(code for kind, code in exit_codes.items() if isinstance(exc, kind))
    try:
        if live and live.started:
            pass  # the audio went out as it came; the final file (levelled as a whole) is not written again
        elif output == "-":
            sys.stdout.buffer.write(clip.audio)
        else:
            Path(output).write_bytes(clip.audio)
    except OSError as exc:
        _fail(f"cannot write {output}: {exc}; choose another --output")
        return EXIT_FAILED
    if not args.quiet:
        sys.stderr.write(_summary("to stdout" if output == "-" else output, clip, time.perf_counter() - started) + "\n")
    return 0


def health(args: argparse.Namespace) -> int:
    from musicgen_api import client

    try:
        status = client.health(args.url)
    except client.ServerUnreachable as exc:
        _fail(str(exc))
        return EXIT_UNREACHABLE
    described = _describe_server(client.info(args.url, args.api_key) or {})
    sys.stdout.write(f"{status} — {described}\n" if described else f"{status}\n")
    return 0 if status == "healthy" else EXIT_BUSY


def _with_flag(exc: Exception) -> str:
    """The message, and for a refused field the flag that sets it, so the user knows what to change."""
    field = getattr(exc, "field", None)
    if field in (*API_FLAGS, *FILE_FLAGS, "format"):
        return f"{exc} (set by --{field.replace('_', '-')})"
    if field == "description":
        return f"{exc} (the DESCRIPTION argument)"
    return str(exc)


MBD_STATES = {"ready": "MBD available", "loading": "MBD loading", "unavailable": "MBD unavailable", "off": "no MBD"}


def _describe_server(info: dict[str, Any]) -> str:
    """`facebook/musicgen-small on cuda, mono, 32000 Hz, up to 120 s, MBD available` from what GET /api/info has."""
    parts = []
    if "model" in info:
        parts.append(f"{info['model']} on {info['device']}" if "device" in info else str(info["model"]))
    if "channels" in info:
        parts.append({1: "mono", 2: "stereo"}.get(info["channels"], f"{info['channels']} channels"))
    if "sample_rate" in info:
        parts.append(f"{info['sample_rate']} Hz")
    if "max_duration" in info:
        parts.append(f"up to {info['max_duration']} s")
    if isinstance(info.get("slots"), int) and info["slots"] > 1:
        parts.append(f"{info.get('free_slots', '?')} of {info['slots']} slots free")
    mbd = info.get("mbd")
    if isinstance(mbd, dict) and "state" in mbd:
        parts.append(MBD_STATES.get(str(mbd["state"]), f"MBD {mbd['state']}"))
    elif "mbd_available" in info:
        parts.append("MBD available" if info["mbd_available"] else "no MBD")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="musicgen-api", description="Text-to-music HTTP service on MusicGen.")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _cluster_parser(sub)
    _generate_parser(sub)
    _health_parser(sub)
    args = parser.parse_args(argv)
    commands = {"serve": serve, "cluster": cluster, "generate": generate, "health": health}
    sys.exit(commands[args.command](args))
