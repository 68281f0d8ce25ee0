"""Server settings: one typed object, filled from command-line flags and `MUSICGEN_*` environment variables.

Every knob an operator can turn lives here, so the rest of the code takes a `Settings` and never reads the
environment itself.
"""

import logging
import os
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Device = Literal["auto", "cuda", "cpu"]
DType = Literal["auto", "float32", "float16", "bfloat16"]
Quantize = Literal["none", "int8"]
Backend = Literal["fast", "transformers"]
MBDMode = Literal["auto", "on", "off"]  # MultiBand Diffusion: see audio/mbd_supply.py

log = logging.getLogger(__name__)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MUSICGEN_", extra="ignore")

    host: str = "127.0.0.1"  # interface to listen on; 0.0.0.0 to serve other machines
    port: int = Field(5000, ge=1, le=65535)  # the spec's clients talk to port 5000
    model: str = "facebook/musicgen-small"  # hub id or local folder, loaded with from_pretrained
    device: Device = "auto"  # auto: CUDA when available, else CPU
    dtype: DType = "auto"  # auto: float16 on CUDA; float32 on CPU, the fast decoder's weights float16 on x86 CPUs
    quantize: Quantize = "none"  # int8: the fast decoder's weights as int8, fastest on CPU, less exact
    backend: Backend = "fast"  # fast: our decode loop; transformers: its generate(), kept as the reference
    slots: int = Field(1, ge=1)  # generations decoding together in one batched step (fast backend)
    compile: bool = True  # CUDA only: fuse the decode step with torch.compile before capturing it (slower start-up)
    mbd: MBDMode = "auto"  # auto: load local weights, fetch others in the background; on: required; off: none
    mbd_weights: str = "facebook/multiband-diffusion"  # hub repo (its mbd_musicgen_32khz.th) or a local .th file
    max_duration: int = Field(120, ge=1)  # longest clip a request may ask for, in seconds
    window: int = Field(30, ge=2)  # MusicGen's training window; longer pieces are made window by window
    extend_stride: int = Field(18, ge=1)  # seconds of new audio per window after the first (audiocraft's default)
    max_description_chars: int = Field(2000, ge=1)  # longest prompt accepted, in characters
    max_text_tokens: int = Field(512, ge=1)  # text-conditioning capacity (T5 was trained on 512 tokens)
    retry_after_s: int = Field(5, ge=1)  # the Retry-After hint sent with 503 busy answers
    api_key: SecretStr | None = None  # when set, every endpoint but the healthcheck wants "Authorization: Bearer <key>"
    cors_origins: list[str] = []  # browser origins allowed to call the API from other sites
    max_body_bytes: int = Field(16 * 2**20, ge=1024)  # largest request body (an audio_prompt is the big part)
    send_timeout: float = Field(30.0, gt=0)  # a client that takes longer to accept one event is dropped
    log_format: Literal["text", "json"] = "text"  # json: one object per line, with the request id
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("mbd", mode="before")
    @classmethod
    def _mbd_as_switch(cls, value: object) -> object:
        """--mbd / --no-mbd (and MUSICGEN_MBD=true/false) are on / off."""
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return "on" if value.lower() in ("true", "1", "yes") else "off"
        return value

    @model_validator(mode="after")
    def _windows_overlap(self) -> Self:
        if self.extend_stride >= self.window:
            raise ValueError(f"--extend-stride ({self.extend_stride}) must be shorter than --window ({self.window})")
        return self

    @model_validator(mode="after")
    def _slots_need_the_fast_backend(self) -> Self:
        if self.slots > 1 and self.backend == "transformers":
            raise ValueError(f"--slots {self.slots} needs the fast backend; --backend transformers runs one at a time")
        return self

    @property
    def decode_window(self) -> int:
        """Seconds decoded in one window: MusicGen's window, or less when no request may be that long."""
        return min(self.window, self.max_duration)


class ClusterSettings(BaseSettings):
    """`musicgen-api cluster` only: where the replicas run and how many. Left unset, each is worked out from the
    Ray cluster's GPUs when it starts (see `cluster.deploy.plan`)."""

    model_config = SettingsConfigDict(env_prefix="MUSICGEN_CLUSTER_", extra="ignore")

    address: str | None = None  # Ray cluster to join ("auto", "ray://head:10001"); none: start Ray on this machine
    replicas: int | None = Field(None, ge=1)  # fixed replica count (default: one per GPU, or 1 without GPUs)
    min_replicas: int | None = Field(None, ge=1)  # with max_replicas: autoscale, aiming at one request per replica
    max_replicas: int | None = Field(None, ge=1)
    gpus_per_replica: float | None = Field(None, ge=0)  # default 1 when the cluster has GPUs, else 0
    cpus_per_replica: float = Field(1.0, ge=0)
    max_queued: int | None = Field(None, ge=1)  # requests that may wait for a replica (default: the replica count)

    @model_validator(mode="after")
    def _one_way_to_count(self) -> Self:
        if self.replicas is not None and (self.min_replicas is not None or self.max_replicas is not None):
            raise ValueError("give either replicas (a fixed count) or min/max replicas (autoscaling), not both")
        if self.min_replicas is not None and self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} is more than max_replicas {self.max_replicas}")
        return self


# MUSICGEN_* variables read by the `generate`/`health` client rather than by a Settings class.
CLIENT_VARIABLES = ("MUSICGEN_URL",)


def unknown_variables() -> list[str]:
    """`MUSICGEN_*` environment variables that no settings class (nor the client) reads: most likely misspelt."""
    known = set(CLIENT_VARIABLES)
    for kind in (Settings, ClusterSettings):
        prefix = str(kind.model_config.get("env_prefix", ""))
        known |= {f"{prefix}{name}".upper() for name in kind.model_fields}
    return sorted(name for name in os.environ if name.upper().startswith("MUSICGEN_") and name.upper() not in known)


def warn_unknown_variables() -> None:
    """Say so at start-up: a misspelt variable would otherwise be ignored without a word."""
    for name in unknown_variables():
        log.warning("ignoring the environment variable %s: no setting has that name (see the README's Options)", name)
