"""The health verdict: a pure function of the published status values and the time.

`assess` turns a `LoopStatus` and a `ConfigStatus` into `OK`, `DEGRADED` or `DOWN`, with one
reason per finding, so `/health` can say why. It reads no clock and touches no dependency: the
caller passes `now` (wall-clock epoch seconds, the clock the status values are stamped with).

Rules (the worst finding wins):

- DOWN: no approved config (`config.rev is None`); Redis or the store failing for longer than
  `down_after_s` (one backoff cycle of the loop); an owned stream's reads failing for longer than
  that; a loop that has published nothing for longer than `stuck_after_s` (it is stuck).
- DEGRADED: config served from the disk cache, or stale (the configured source stopped
  answering); an owned stream's `lag_ms` above `lag_degraded_ms`; a dependency or an owned
  stream's reads failing for less than `down_after_s` (a retry is under way); the loop has not
  started consuming yet, or has not reported at all.
- OK otherwise.

Lag and read failures count only for streams this instance owns: the lag of a stream read by
another instance is that instance's to report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from s2feature.service.status import ConfigStatus, DependencyStatus, LoopStatus, StreamStatus

HealthState = Literal["OK", "DEGRADED", "DOWN"]

_RANK: dict[HealthState, int] = {"OK": 0, "DEGRADED": 1, "DOWN": 2}


def worst(*states: HealthState) -> HealthState:
    """The most severe of `states` (`OK` when there are none)."""
    return max(states, key=_RANK.__getitem__, default="OK")


@dataclass(frozen=True)
class HealthLimits:
    """Thresholds of the verdict."""

    # A dependency failing for longer than this is DOWN; equals the loop's backoff cap, so a
    # failure that survives one full retry cycle is not a blip.
    down_after_s: float = 5.0
    lag_degraded_ms: int = 60_000  # S2_LAG_DEGRADED_MS
    # The loop publishes after every batch and while it waits or retries (at least once per
    # backoff cycle or blocking read); silence this long means it is stuck.
    stuck_after_s: float = 30.0

    def __post_init__(self) -> None:
        if self.down_after_s <= 0 or self.stuck_after_s <= 0:
            raise ValueError("down_after_s and stuck_after_s must be positive")
        if self.lag_degraded_ms <= 0:
            raise ValueError("lag_degraded_ms must be positive")


@dataclass(frozen=True)
class Finding:
    """One check's state and, unless OK, why."""

    state: HealthState = "OK"
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Health:
    """The verdict: overall state, every reason, and each check's own finding."""

    status: HealthState
    reasons: tuple[str, ...]
    loop: Finding
    redis: Finding
    store: Finding
    config: Finding
    streams: dict[str, Finding]  # by symbol, every stream in the loop status
    started: bool  # the loop is consuming

    @property
    def ready(self) -> bool:
        """Whether the instance should receive traffic: consuming and not DOWN."""
        return self.started and self.status != "DOWN"


def failing_for_s(dep: DependencyStatus, now: float) -> float | None:
    """Seconds `dep` has been failing in a row at `now`, or None when it is not failing."""
    if dep.ok:
        return None
    if dep.failing_since is None:
        return 0.0
    return max(0.0, now - dep.failing_since)


def _dependency(name: str, dep: DependencyStatus, now: float, limits: HealthLimits) -> Finding:
    failing = failing_for_s(dep, now)
    if failing is None:
        return Finding()
    where = f" at {dep.where}" if dep.where else ""
    error = f": {dep.last_error}" if dep.last_error else ""
    if failing > limits.down_after_s:
        return Finding("DOWN", (f"{name} failing for {failing:.1f} s{where}{error}",))
    return Finding("DEGRADED", (f"{name} failing, retrying ({failing:.1f} s){where}{error}",))


def _stream(symbol: str, stream: StreamStatus, now: float, limits: HealthLimits) -> Finding:
    if not stream.owned:
        return Finding()
    reads = _dependency(f"stream {symbol}: reads", stream.reads, now, limits)
    findings = [reads]
    if stream.lag_ms is not None and stream.lag_ms > limits.lag_degraded_ms:
        lag = Finding(
            "DEGRADED",
            (f"stream {symbol}: lag {stream.lag_ms} ms above {limits.lag_degraded_ms} ms",),
        )
        findings.append(lag)
    return _merge(findings)


def _config(config: ConfigStatus, now: float) -> Finding:
    error = f": {config.last_error}" if config.last_error else ""
    if config.rev is None:
        return Finding("DOWN", (f"no approved config{error}",))
    reasons: list[str] = []
    if config.source == "cache":
        age = (
            "" if config.fetched_at is None else f", {max(0.0, now - config.fetched_at):.0f} s old"
        )
        reasons.append(f"config rev {config.rev} from the disk cache{age}")
    if config.stale:
        reasons.append(f"config rev {config.rev} is stale: the source is not answering{error}")
    return Finding("DEGRADED", tuple(reasons)) if reasons else Finding()


def _loop(loop: LoopStatus, now: float, limits: HealthLimits) -> Finding:
    if loop.updated_at <= 0.0:
        return Finding("DEGRADED", ("the consumer loop has not reported yet",))
    silent = now - loop.updated_at
    if silent > limits.stuck_after_s:
        return Finding("DOWN", (f"the consumer loop has not reported for {silent:.0f} s",))
    if not loop.started:
        waiting = f": waiting for {loop.waiting_for}" if loop.waiting_for else ""
        return Finding("DEGRADED", (f"the consumer loop has not started{waiting}",))
    return Finding()


def _merge(findings: list[Finding]) -> Finding:
    """One finding: the worst state, and the reasons of every finding, most severe first."""
    ordered = sorted(findings, key=lambda f: _RANK[f.state], reverse=True)  # stable
    return Finding(
        worst(*(f.state for f in findings)), tuple(r for f in ordered for r in f.reasons)
    )


def assess(
    loop: LoopStatus, config: ConfigStatus, now: float, limits: HealthLimits | None = None
) -> Health:
    """The verdict on `loop` and `config` at wall-clock time `now` (epoch seconds)."""
    limits = limits or HealthLimits()
    loop_finding = _loop(loop, now, limits)
    redis = _dependency("redis", loop.redis, now, limits)
    store = _dependency("store", loop.store, now, limits)
    config_finding = _config(config, now)
    streams = {symbol: _stream(symbol, s, now, limits) for symbol, s in loop.streams.items()}
    overall = _merge([config_finding, redis, store, *streams.values(), loop_finding])
    return Health(
        status=overall.state,
        reasons=overall.reasons,
        loop=loop_finding,
        redis=redis,
        store=store,
        config=config_finding,
        streams=streams,
        started=loop.started,
    )
