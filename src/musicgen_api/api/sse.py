"""Server-Sent Events framing: each event is one `data: <json>` line and a blank line, nothing else.

The spec's own client splits every non-empty line on 'data: ', so no `event:`, `id:`, `retry:` or comment lines
are ever sent.
"""

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

from musicgen_api.service import Completed, Failed, Job, Progress


def frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


async def job_stream(job: Job) -> AsyncIterator[bytes]:
    """The response body for one generation. However it ends (done, failed, client gone), the job is stopped."""
    try:
        yield frame({"status": "started"})
        async for event in job.events():
            match event:
                case Progress(percent=percent):
                    yield frame({"status": "generating", "progress": percent})
                case Completed(audio=audio):
                    yield frame(
                        {
                            "status": "completed",
                            "audio_data": base64.b64encode(audio.data).decode("ascii"),
                            "format": audio.format,
                            "mime_type": audio.mime_type,
                            "sample_rate": audio.sample_rate,
                            "channels": audio.channels,
                            "duration": audio.duration,
                            "seed": audio.seed,
                        }
                    )
                case Failed(message=message):
                    yield frame({"error": message})
    finally:
        job.cancel()
