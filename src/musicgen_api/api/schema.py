"""The `POST /api/music` request: its schema (also the OpenAPI document's) and strict validation.

Validation follows the spec's [clarified] rules: JSON types are taken literally (no `true` for a number, no `"30"`
or `30.5` for an integer), non-finite numbers and unknown fields are refused, and every refusal is one message that
names the field and says what to send.
"""

import base64
import binascii
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from musicgen_api.errors import InvalidRequest
from musicgen_api.generation import AudioFormat, GenerationParams, Normalization


class MusicRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    description: str = Field(description="The text prompt: what the music should sound like.")
    duration: int = Field(30, gt=0, description="Length of the clip in whole seconds.")
    mbd: bool = Field(False, description="Decode with MultiBand Diffusion instead of the EnCodec decoder.")
    top_k: int = Field(250, gt=0, description="Sample from the k most likely tokens (ignored when top_p > 0).")
    top_p: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False, description="Nucleus sampling; 0 disables.")
    temperature: float = Field(1.0, gt=0.0, allow_inf_nan=False, description="Softmax temperature.")
    cfg_coef: float = Field(3.0, allow_inf_nan=False, description="Classifier-free guidance coefficient.")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Same seed, same request, same device: same audio.")
    format: AudioFormat = Field("wav", description="Audio file format of audio_data.")
    normalization: Normalization = Field(
        "loudness", description="loudness: -14 LUFS with a limiter; peak: -1 dBFS; rms: -20 dBFS; clip; none."
    )
    audio_prompt: str | None = Field(None, description="Base64 audio file (WAV, FLAC, MP3, OGG) to continue.")
    return_prompt: bool = Field(True, description="With audio_prompt: include the prompt in the returned audio.")
    melody: str | None = Field(None, description="Base64 audio whose melody conditions the piece (melody models).")
    stream_audio: bool = Field(False, description="Also stream the audio as it is made, in 'audio' events.")


FIELD_RULES = {
    "description": "a non-empty string",
    "duration": "a positive whole number of seconds (a JSON integer)",
    "mbd": "true or false",
    "top_k": "a positive integer",
    "top_p": "a number from 0 to 1",
    "temperature": "a finite number greater than 0",
    "cfg_coef": "a finite number",
    "seed": "an integer from 0 to 2**63 - 1",
    "format": "one of wav, flac, mp3, ogg",
    "normalization": "one of loudness, peak, rms, clip, none",
    "audio_prompt": "a base64-encoded WAV, FLAC, MP3 or OGG file",
    "return_prompt": "true or false",
    "melody": "a base64-encoded WAV, FLAC, MP3 or OGG file",
    "stream_audio": "true or false",
}


def request_fields(max_duration: int, max_description_chars: int) -> dict[str, dict[str, Any]]:
    """Each request field's JSON type, default and limits, as this server applies them."""
    fields: dict[str, dict[str, Any]] = MusicRequest.model_json_schema()["properties"]
    fields["duration"]["maximum"] = max_duration
    fields["description"]["maxLength"] = max_description_chars
    return fields


def _reject_constant(name: str) -> float:
    raise InvalidRequest(f"request body: {name} is not a valid JSON number; send finite numbers only")


def _describe(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _refusal(error: Any) -> InvalidRequest:
    kind, loc = error["type"], error["loc"]
    if not loc:
        return InvalidRequest("the request body must be a JSON object")
    field = str(loc[0])
    if kind == "extra_forbidden":
        allowed = ", ".join(MusicRequest.model_fields)
        return InvalidRequest(f"unknown field '{field}'; the accepted fields are: {allowed}", field=field)
    if kind == "missing":
        return InvalidRequest(f"{field} is required: send {FIELD_RULES[field]}", field=field)
    return InvalidRequest(f"{field} must be {FIELD_RULES[field]}; got {_describe(error['input'])}", field=field)


def parse_music_request(body: bytes, max_duration: int, max_description_chars: int) -> GenerationParams:
    """Raw request body → validated generation parameters, or InvalidRequest naming the problem."""
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON ({exc}); send a JSON object") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        request = MusicRequest.model_validate(data)
    except ValidationError as exc:
        raise _refusal(exc.errors()[0]) from exc
    description = request.description.strip()
    if not description:
        got = _describe(request.description)
        raise InvalidRequest(f"description must be {FIELD_RULES['description']}; got {got}", field="description")
    if len(description) > max_description_chars:
        raise InvalidRequest(
            f"description is too long: {len(description)} characters, this server accepts at most "
            f"{max_description_chars}",
            field="description",
        )
    if request.duration > max_duration:
        raise InvalidRequest(
            f"duration must be at most {max_duration} seconds on this server; got {request.duration}", field="duration"
        )
    return GenerationParams(
        description=description,
        duration=request.duration,
        top_k=request.top_k,
        top_p=request.top_p,
        temperature=request.temperature,
        cfg_coef=request.cfg_coef,
        mbd=request.mbd,
        seed=request.seed,
        format=request.format,
        normalization=request.normalization,
        audio_prompt=_base64("audio_prompt", request.audio_prompt),
        return_prompt=request.return_prompt,
        melody=_base64("melody", request.melody),
        stream_audio=request.stream_audio,
    )


def _base64(field: str, text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{field} must be {FIELD_RULES[field]}; it is not valid base64", field=field) from exc
    if not data:
        raise InvalidRequest(f"{field} must be {FIELD_RULES[field]}; it is empty", field=field)
    return data
