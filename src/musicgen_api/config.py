"""Server settings: one typed object, filled from command-line flags and `MUSICGEN_*` environment variables.

Every knob an operator can turn lives here, so the rest of the code takes a `Settings` and never reads the
environment itself.
"""

from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Device = Literal["auto", "cuda", "cpu"]
DType = Literal["auto", "float32", "float16", "bfloat16"]
Quantize = Literal["none", "int8"]
Backend = Literal["fast", "transformers"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MUSICGEN_", extra="ignore")

    host: str = "127.0.0.1"  # interface to listen on; 0.0.0.0 to serve other machines
    port: int = Field(5000, ge=1, le=65535)  # the spec's clients talk to port 5000
    model: str = "facebook/musicgen-small"  # hub id or local folder, loaded with from_pretrained
    device: Device = "auto"  # auto: CUDA when available, else CPU
    dtype: DType = "auto"  # auto: float16 on CUDA; float32 on CPU, the decoder bfloat16 where the CPU has it natively
    quantize: Quantize = "none"  # int8: the fast decoder's weights as int8 (weight-only), fastest on CPU, less exact
    backend: Backend = "fast"  # fast: our decode loop; transformers: its generate(), kept as the reference
    compile: bool = True  # CUDA only: fuse the decode step with torch.compile before capturing it (slower start-up)
    mbd: bool = True  # load MultiBand Diffusion at start-up so requests may ask for `mbd: true`
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
    send_timeout_s: float = Field(30.0, gt=0)  # a client that takes longer to accept one event is dropped
    log_format: Literal["text", "json"] = "text"  # json: one object per line, with the request id
    log_level: Literal["debug", "info", "warning", "error"] = "info"


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
