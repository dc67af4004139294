"""Wire schemas of the `/features/*` endpoints (the OpenAPI document is generated from them)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

WINDOWS = ("1m", "5m", "1h", "4h", "1d")
SYMBOL_PATTERN = r"^[A-Z0-9]{3,}$"
MAX_SPAN_DAYS = 90
# The last millisecond of year 9999: every accepted time converts to a calendar date.
MAX_TS = 253_402_300_799_999

Window = Literal["1m", "5m", "1h", "4h", "1d"]
Symbol = Annotated[str, Field(pattern=SYMBOL_PATTERN)]
EpochMs = Annotated[int, Field(ge=0, le=MAX_TS, description="epoch milliseconds, UTC")]


class _Schema(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RecomputeBody(_Schema):
    """Body of `POST /features/recompute`.

    Every snapshot whose t0 is in `[from_ts, to_ts]` (both inclusive) is recomputed. Beyond this
    schema: every symbol must be known to the lake, `from_ts < to_ts`, and `to_ts - from_ts` is
    at most 90 days. Duplicates in `symbols` or `windows` count once.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    symbols: list[Symbol] = Field(min_length=1, description="symbols known to the lake")
    windows: list[Window] = Field(min_length=1, description="a non-empty subset of the windows")
    from_ts: EpochMs = Field(description="first t0 of the range, inclusive (epoch ms)")
    to_ts: EpochMs = Field(description="last t0 of the range, inclusive (epoch ms)")
    force: bool = Field(
        default=False,
        description="rewrite every signal; false writes only absent ones or ones of another rev",
    )


class FieldError(_Schema):
    """One reason a request was refused."""

    field: str | None = Field(description="the body field, header or parameter at fault")
    message: str


class ErrorBody(_Schema):
    """Body of every refusal: each reason at once."""

    errors: list[FieldError] = Field(min_length=1)


class ConflictBody(ErrorBody):
    """Body of a 409: the scope overlaps a queued or running task's."""

    task_id: str = Field(description="the task whose scope overlaps")


class Accepted(_Schema):
    """Body of a 202: the task is queued."""

    accepted: Literal[True]
    task_id: str = Field(description="e.g. recomp-20250105-0001 (UTC day of submission, counter)")
    estimated_batches: int = Field(ge=1, description="one per symbol and UTC day of the range")


class TaskStatus(_Schema):
    """Body of `GET /features/recompute/{task_id}`."""

    task_id: str
    state: Literal["queued", "running", "done", "failed", "interrupted"]
    batches_done: int = Field(ge=0)
    batches_total: int = Field(ge=0)
    signals_written: int = Field(ge=0)
    rate_per_s: float | None = Field(description="signals written per second of running")
    eta_s: float | None = Field(
        description="seconds left at the pace so far; null before the first batch and once ended"
    )
    errors: list[str] = Field(description="why the task failed or was interrupted")
