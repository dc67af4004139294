"""The health verdict over each rule: pure values in, OK / DEGRADED / DOWN with reasons out."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from s2feature.service.health import HealthLimits, assess, worst
from s2feature.service.status import ConfigStatus, DependencyStatus, LoopStatus, StreamStatus

NOW = 1_800_000_000.0
LIMITS = HealthLimits(down_after_s=5.0, lag_degraded_ms=60_000, stuck_after_s=30.0)
HEALTHY_STREAM = StreamStatus(owner="c1", owned=True, lag_ms=250, backlog=0, pending=0)
LOOP = LoopStatus(
    started=True, updated_at=NOW - 0.5, batches=10, streams={"BTCUSDT": HEALTHY_STREAM}
)
CONFIG = ConfigStatus(rev="r7", source="url", fetched_at=NOW - 60, last_success_at=NOW - 1)


def with_dependency(name: str, status: DependencyStatus) -> LoopStatus:
    changes: dict[str, Any] = {name: status}
    return replace(LOOP, **changes)


def failing(
    for_s: float, error: str = "Connection refused", where: str | None = None
) -> DependencyStatus:
    return DependencyStatus(ok=False, failing_since=NOW - for_s, last_error=error, where=where)


def test_everything_fine_is_ok_without_reasons() -> None:
    health = assess(LOOP, CONFIG, NOW, LIMITS)
    assert (health.status, health.reasons) == ("OK", ())
    assert health.ready
    assert health.streams["BTCUSDT"].state == "OK"


def test_no_approved_config_is_down_with_the_error() -> None:
    config = ConfigStatus(last_error="GET /active: connection refused")
    health = assess(LOOP, config, NOW, LIMITS)
    assert health.status == "DOWN"
    assert health.config.state == "DOWN"
    assert health.reasons == ("no approved config: GET /active: connection refused",)
    assert not health.ready


def test_config_from_the_cache_is_degraded_with_rev_and_age() -> None:
    config = replace(CONFIG, source="cache", fetched_at=NOW - 120)
    health = assess(LOOP, config, NOW, LIMITS)
    assert health.status == "DEGRADED"
    assert health.reasons == ("config rev r7 from the disk cache, 120 s old",)
    assert health.ready


def test_stale_config_is_degraded_naming_the_error() -> None:
    config = replace(CONFIG, stale=True, last_error="timeout")
    health = assess(LOOP, config, NOW, LIMITS)
    assert health.status == "DEGRADED"
    assert health.reasons == ("config rev r7 is stale: the source is not answering: timeout",)


@pytest.mark.parametrize("name", ["redis", "store"])
def test_a_dependency_failing_longer_than_one_backoff_cycle_is_down(name: str) -> None:
    loop = with_dependency(name, failing(5.5, where="127.0.0.1:7001"))
    health = assess(loop, CONFIG, NOW, LIMITS)
    assert health.status == "DOWN"
    assert getattr(health, name).state == "DOWN"
    assert health.reasons == (f"{name} failing for 5.5 s at 127.0.0.1:7001: Connection refused",)
    assert not health.ready


@pytest.mark.parametrize("name", ["redis", "store"])
def test_a_dependency_failing_within_one_backoff_cycle_is_degraded(name: str) -> None:
    loop = with_dependency(name, failing(4.5))
    health = assess(loop, CONFIG, NOW, LIMITS)
    assert health.status == "DEGRADED"
    assert health.reasons == (f"{name} failing, retrying (4.5 s): Connection refused",)


def test_a_failure_without_a_start_time_counts_as_just_begun() -> None:
    loop = replace(LOOP, redis=DependencyStatus(ok=False, last_error="boom"))
    assert assess(loop, CONFIG, NOW, LIMITS).status == "DEGRADED"


def test_the_down_limit_is_a_parameter() -> None:
    loop = replace(LOOP, redis=failing(4.5))
    assert assess(loop, CONFIG, NOW, replace(LIMITS, down_after_s=4.0)).status == "DOWN"


def test_stream_reads_failing_too_long_are_down_naming_the_node() -> None:
    stream = replace(HEALTHY_STREAM, reads=failing(6, "Timeout reading", "10.0.0.3:7002"))
    health = assess(replace(LOOP, streams={"BTCUSDT": stream}), CONFIG, NOW, LIMITS)
    assert health.status == "DOWN"
    assert health.streams["BTCUSDT"].state == "DOWN"
    assert health.reasons == (
        "stream BTCUSDT: reads failing for 6.0 s at 10.0.0.3:7002: Timeout reading",
    )


def test_stream_lag_above_the_threshold_is_degraded() -> None:
    stream = replace(HEALTHY_STREAM, lag_ms=60_001)
    health = assess(replace(LOOP, streams={"BTCUSDT": stream}), CONFIG, NOW, LIMITS)
    assert health.status == "DEGRADED"
    assert health.reasons == ("stream BTCUSDT: lag 60001 ms above 60000 ms",)


def test_stream_lag_at_the_threshold_is_ok() -> None:
    stream = replace(HEALTHY_STREAM, lag_ms=60_000)
    assert assess(replace(LOOP, streams={"X": stream}), CONFIG, NOW, LIMITS).status == "OK"


def test_streams_owned_by_another_instance_are_not_judged_here() -> None:
    stream = StreamStatus(owner="c2", owned=False, lag_ms=10**9, reads=failing(100))
    health = assess(replace(LOOP, streams={"ETHUSDT": stream}), CONFIG, NOW, LIMITS)
    assert health.status == "OK"
    assert health.streams["ETHUSDT"].state == "OK"


def test_a_loop_silent_longer_than_the_stuck_limit_is_down() -> None:
    loop = replace(LOOP, updated_at=NOW - 31)
    health = assess(loop, CONFIG, NOW, LIMITS)
    assert health.status == "DOWN"
    assert health.reasons == ("the consumer loop has not reported for 31 s",)
    assert not health.ready


def test_a_loop_that_never_reported_is_degraded_and_not_ready() -> None:
    health = assess(LoopStatus(), CONFIG, NOW, LIMITS)
    assert health.status == "DEGRADED"
    assert health.reasons == ("the consumer loop has not reported yet",)
    assert not health.ready


def test_a_loop_not_started_says_what_it_waits_for_and_is_not_ready() -> None:
    loop = LoopStatus(started=False, updated_at=NOW - 1, waiting_for="the store")
    health = assess(loop, CONFIG, NOW, LIMITS)
    assert health.status == "DEGRADED"
    assert health.reasons == ("the consumer loop has not started: waiting for the store",)
    assert not health.ready


def test_the_worst_finding_wins_and_reasons_come_most_severe_first() -> None:
    stream = replace(HEALTHY_STREAM, lag_ms=90_000)
    loop = replace(LOOP, streams={"BTCUSDT": stream}, store=failing(10, "disk I/O error"))
    config = replace(CONFIG, source="cache")
    health = assess(loop, config, NOW, LIMITS)
    assert health.status == "DOWN"
    assert health.reasons == (
        "store failing for 10.0 s: disk I/O error",
        "config rev r7 from the disk cache, 60 s old",
        "stream BTCUSDT: lag 90000 ms above 60000 ms",
    )


def test_worst() -> None:
    assert worst() == "OK"
    assert worst("OK", "DEGRADED") == "DEGRADED"
    assert worst("DOWN", "DEGRADED", "OK") == "DOWN"


@pytest.mark.parametrize(
    "bad",
    [{"down_after_s": 0.0}, {"stuck_after_s": -1.0}, {"lag_degraded_ms": 0}],
    ids=["down_after", "stuck_after", "lag"],
)
def test_limits_must_be_positive(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="positive"):
        HealthLimits(**bad)  # type: ignore[arg-type]
