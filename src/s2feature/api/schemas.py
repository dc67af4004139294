"""Wire schemas of the health endpoints (the OpenAPI document is generated from them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from s2feature.service.health import HealthState
from s2feature.service.status import ConfigSource


class _Schema(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DependencyCheck(_Schema):
    """Redis or the store, as last seen by the consumer loop."""

    status: HealthState
    failing_for_s: float | None = Field(
        description="seconds the dependency has been failing in a row; null when it is not"
    )
    last_error: str | None
    where: str | None = Field(description="what could not be reached (a node address)")


class ConfigCheck(_Schema):
    """The active config bundle."""

    status: HealthState
    rev: str | None = Field(description="rev of the active bundle; null: none approved yet")
    source: ConfigSource | None
    age_s: float | None = Field(description="seconds since the active bundle was obtained")
    stale: bool = Field(description="the configured source has not answered for too long")
    rejected: int = Field(description="bundles refused since start")
    last_error: str | None


class StreamCheck(_Schema):
    """One input stream."""

    status: HealthState
    lag_ms: int | None = Field(description="now minus the event time of the last applied event")
    backlog: int | None = Field(description="entries not yet read by the group plus pending")
    pending: int | None = Field(description="entries delivered and not yet acknowledged")
    owner: str | None = Field(description="consumer holding the stream's lease")
    owned: bool = Field(description="whether this instance holds the lease")
    read_error: str | None = Field(description="last read error while reads are failing")


class LoopCheck(_Schema):
    """The consumer loop."""

    status: HealthState
    started: bool = Field(description="whether the loop is consuming")
    batches: int = Field(description="batches processed since start")
    silent_s: float | None = Field(
        description="seconds since the loop last reported; null when it never did"
    )
    waiting_for: str | None = Field(description="why the loop is not consuming, when it is not")


class Checks(_Schema):
    loop: LoopCheck
    store: DependencyCheck
    redis: DependencyCheck
    config: ConfigCheck
    streams: dict[str, StreamCheck] = Field(description="by symbol")


class HealthBody(_Schema):
    """Body of `GET /health`: 200 for OK and DEGRADED, 503 for DOWN."""

    status: HealthState
    reasons: list[str] = Field(description="why the status is not OK, most severe first")
    checks: Checks
    version: str


class LiveBody(_Schema):
    """Body of `GET /health/live`."""

    status: Literal["alive"]


class ReadyBody(_Schema):
    """Body of `GET /health/ready`: 200 when ready, 503 when not."""

    ready: bool
    status: HealthState
    reasons: list[str]
