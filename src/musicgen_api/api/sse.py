"""Server-Sent Events framing: each event is one `data: <json>` line and a blank line, nothing else.

The spec's own client splits every non-empty line on 'data: ', so no `event:`, `id:`, `retry:` or comment lines
are ever sent.
"""

import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Send

from musicgen_api.generation import AudioChunk
from musicgen_api.service import Completed, Failed, JobStream, Progress

log = logging.getLogger(__name__)


def frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


async def job_stream(job: JobStream) -> AsyncIterator[bytes]:
    """The response body for one generation (EventStreamResponse stops the job however the response ends)."""
    served_by = {} if job.worker is None else {"replica": job.worker}  # on a cluster: which replica made it
    yield frame({"status": "started", **served_by})
    async for event in job.events():
        match event:
            case Progress(percent=percent):
                yield frame({"status": "generating", "progress": percent})
            case AudioChunk():
                yield frame(
                    {
                        "status": "audio",
                        "audio_chunk": base64.b64encode(event.pcm).decode("ascii"),
                        "offset": event.offset,
                        "duration": event.duration,
                        "sample_rate": event.sample_rate,
                        "channels": event.channels,
                    }
                )
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
                        **served_by,
                    }
                )
            case Failed(message=message):
                yield frame({"error": message})


class EventStreamResponse(StreamingResponse):
    """An SSE response that gives up on a client which does not take an event within `send_timeout` seconds (one
    that never reads, or reads a byte a second): the generation is stopped and the slot freed, instead of a stuck
    socket holding them for as long as the client likes."""

    def __init__(self, job: JobStream, send_timeout: float, headers: dict[str, str]) -> None:
        super().__init__(job_stream(job), media_type="text/event-stream", headers=headers)
        self.job, self.send_timeout = job, send_timeout

    async def stream_response(self, send: Send) -> None:
        body = self.body_iterator
        try:
            with anyio.fail_after(self.send_timeout):
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in body:
                with anyio.fail_after(self.send_timeout):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            with anyio.fail_after(self.send_timeout):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            # Returning with the response unfinished makes the server close the connection.
            log.warning("job %s: client did not read for %g s; dropping it", self.job.id, self.send_timeout)
            self.job.cancel(f"the client took longer than {self.send_timeout:g} s to accept an event")
        finally:
            await body.aclose()  # type: ignore[attr-defined]  # job_stream is an async generator
            self.job.cancel()  # however it ended, also when the client was gone before the first byte
