"""What a model replica and the ingress say to each other besides the job's own events: plain data, so the ingress
(which runs no model) never imports the replica's torch-bound code."""

from dataclasses import dataclass

INGRESS_NAME = "MusicIngress"  # the deployment the replicas report to


@dataclass(frozen=True)
class Accepted:
    """First item of a stream: this replica has started the piece."""

    replica: str
    job_id: str
    slot: int  # which of the replica's slots it runs in
    phase: int  # that slot's phase once started (see board)


@dataclass(frozen=True)
class Refused:
    """First and only item of a stream: the request was not started (an InvalidRequest, naming its field, or
    Busy)."""

    message: str
    busy: bool = False
    field: str | None = None
