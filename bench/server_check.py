"""GPU acceptance check of the whole service: a random-weight checkpoint of a real shape saved to disk, the server
started on it as a user would, and the spec's requests timed from outside. Prints one JSON line.

    python bench/server_check.py --shape small --duration 30
"""

import argparse
import base64
import io
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import wave

import requests
import torch

from musicgen_api.bench.random_model import save_random_musicgen

URL = "http://127.0.0.1:5000"


def generate(body: dict, stop_after_progress: int | None = None, chunk_size: int = 1 << 16) -> dict:
    """One request read as the spec's client reads it, but with a larger read size: requests' iter_lines() with its
    default 512-byte chunks re-joins a multi-megabyte line quadratically, seconds of client time for 30 s of audio."""
    started = time.perf_counter()
    first_event = None
    progress: list[int] = []
    result: dict = {}
    with requests.post(f"{URL}/api/music", json=body, stream=True, timeout=600) as r:
        result["status_code"] = r.status_code
        for line in r.iter_lines(chunk_size=chunk_size):
            if not line:
                continue
            event = json.loads(line.decode().split("data: ")[1])
            first_event = first_event or time.perf_counter() - started
            if event.get("status") == "generating":
                progress.append(event["progress"])
                if stop_after_progress is not None and len(progress) >= stop_after_progress:
                    break
            elif event.get("status") == "completed":
                with wave.open(io.BytesIO(base64.b64decode(event["audio_data"]))) as w:
                    result["wav"] = [w.getframerate(), w.getsampwidth(), w.getnchannels(), w.getnframes()]
            elif "error" in event:
                result["error"] = event["error"]
    result.update(wall_s=round(time.perf_counter() - started, 3), first_event_s=round(first_event or -1, 4),
                  progress_events=len(progress), progress_monotonic=progress == sorted(progress),
                  last_progress=progress[-1] if progress else None)  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="small")
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--serve-args", default="")
    parser.add_argument("--device", default="cuda", help="where to build the random checkpoint (cpu for a dry run)")
    args = parser.parse_args()
    report: dict = {"shape": args.shape, "duration": args.duration}
    folder = pathlib.Path(tempfile.mkdtemp()) / f"musicgen-{args.shape}-random"
    started = time.perf_counter()
    save_random_musicgen(
        folder, args.shape, device=args.device, dtype=torch.float16 if args.device == "cuda" else torch.float32
    )
    report["save_s"] = round(time.perf_counter() - started, 1)
    log = open(folder.parent / "server.log", "w")
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "musicgen_api", "serve", "--model", str(folder),
                               *args.serve_args.split()], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    try:
        while True:
            try:
                requests.get(f"{URL}/api/healthcheck", timeout=1)
                break
            except requests.ConnectionError:
                if server.poll() is not None or time.perf_counter() - started > 400:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.5)
        report["server_start_s"] = round(time.perf_counter() - started, 1)
        body = {"description": "电子音乐，带有强烈的鼓点", "duration": args.duration, "mbd": False, "top_k": 250,
                "top_p": 0.0, "temperature": 1.0, "cfg_coef": 3.0}  # fmt: skip
        report["first_request"] = generate(body)
        report["spec_client_read_size"] = generate(body, chunk_size=512)
        busy: dict = {}

        def probe() -> None:
            time.sleep(0.3)
            busy["health"] = requests.get(f"{URL}/api/healthcheck", timeout=5).status_code
            t = time.perf_counter()
            busy["post"] = requests.post(f"{URL}/api/music", json=body, timeout=5).status_code
            busy["post_answer_ms"] = round(1000 * (time.perf_counter() - t), 1)

        prober = threading.Thread(target=probe)
        prober.start()
        report["second_request"] = generate(body)
        prober.join()
        report["while_busy"] = busy
        report["abandoned"] = generate(body, stop_after_progress=5)
        t = time.perf_counter()
        while requests.get(f"{URL}/api/healthcheck", timeout=5).status_code != 200:
            time.sleep(0.005)
        report["slot_free_after_disconnect_s"] = round(time.perf_counter() - t, 4)
        report["after_disconnect"] = generate({**body, "duration": 5})
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
        report["server_log_tail"] = (folder.parent / "server.log").read_text().splitlines()[-12:]
    print(json.dumps(report, ensure_ascii=False))  # noqa: T201


if __name__ == "__main__":
    main()
