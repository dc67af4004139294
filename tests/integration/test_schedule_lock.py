"""The scheduler against a real redis-server: a run is done once across instances, a missed run
is caught up once at start (and not again by a restart within its period), parts are claimed one
by one, and a Redis outage delays a run instead of losing it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from s2feature.jobs.schedule import HOUR_MS, MINUTE_MS, Due, Every, RedisRunLock, Scheduler
from tests.support.redis_servers import RedisServer

DAY_MS = 24 * HOUR_MS
DAILY = Every(DAY_MS, 5 * MINUTE_MS)  # 00:05 UTC, as the regime job


def epoch_s(*when: int) -> float:
    return datetime(*when, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def instance(
    server: RedisServer, clock: Clock, runs: list[tuple[str, int]], name: str
) -> Scheduler:
    scheduler = Scheduler(RedisRunLock(server.client(), owner=name), clock=clock)

    def job(due: Due) -> None:
        runs.append((name, due.at_ms))

    scheduler.register("regime", DAILY, job)
    return scheduler


def test_due_times_are_utc_multiples_with_an_offset() -> None:
    now = int(epoch_s(2025, 1, 5, 14, 30) * 1000)
    assert DAILY.last_due(now) == int(epoch_s(2025, 1, 5, 0, 5) * 1000)
    assert DAILY.next_due(now) == int(epoch_s(2025, 1, 6, 0, 5) * 1000)
    hourly = Every(HOUR_MS)
    assert hourly.last_due(now) == int(epoch_s(2025, 1, 5, 14) * 1000)
    assert hourly.next_due(hourly.last_due(now)) == int(epoch_s(2025, 1, 5, 15) * 1000)
    with pytest.raises(ValueError, match="offset < period"):
        Every(HOUR_MS, HOUR_MS)


def test_two_instances_run_each_due_time_once(redis_server: RedisServer) -> None:
    clock = Clock(epoch_s(2025, 1, 5, 14, 30))
    runs: list[tuple[str, int]] = []
    a = instance(redis_server, clock, runs, "a")
    b = instance(redis_server, clock, runs, "b")
    # Both start after 00:05 and find that day's run not done: one of them catches it up.
    a.run_pending()
    b.run_pending()
    jan5 = int(epoch_s(2025, 1, 5, 0, 5) * 1000)
    assert runs == [("a", jan5)]
    assert redis_server.client().pttl("feat:lock:regime:20250105T0005Z") > 0
    # Nothing is due again until the next day's 00:05, then once more, once.
    clock.now_s = epoch_s(2025, 1, 6, 0, 4)
    a.run_pending()
    b.run_pending()
    assert len(runs) == 1
    clock.now_s = epoch_s(2025, 1, 6, 0, 5, 1)
    b.run_pending()
    a.run_pending()
    assert runs == [("a", jan5), ("b", jan5 + DAY_MS)]


def test_a_restart_within_the_period_does_not_run_again(redis_server: RedisServer) -> None:
    clock = Clock(epoch_s(2025, 1, 5, 0, 30))
    runs: list[tuple[str, int]] = []
    instance(redis_server, clock, runs, "first").run_pending()
    clock.now_s = epoch_s(2025, 1, 5, 9)
    instance(redis_server, clock, runs, "restarted").run_pending()
    assert [who for who, _ in runs] == ["first"]


def test_parts_are_claimed_one_by_one_across_instances(redis_server: RedisServer) -> None:
    clock = Clock(epoch_s(2025, 1, 5, 14, 0, 10))
    done: list[tuple[str, str]] = []

    def fill_of(name: str, symbols: list[str]) -> Scheduler:
        scheduler = Scheduler(RedisRunLock(redis_server.client(), owner=name), clock=clock)

        def fill(due: Due) -> None:
            done.extend((name, s) for s in symbols if due.claim(s))

        scheduler.register("recompute", Every(HOUR_MS), fill, once=False)
        return scheduler

    fill_of("a", ["BTCUSDT", "ETHUSDT"]).run_pending()
    fill_of("b", ["ETHUSDT", "SOLUSDT"]).run_pending()
    assert sorted(done) == [("a", "BTCUSDT"), ("a", "ETHUSDT"), ("b", "SOLUSDT")]
    assert redis_server.client().exists("feat:lock:recompute:SOLUSDT:20250105T1400Z") == 1


def test_a_run_waits_out_a_redis_outage(redis_server: RedisServer) -> None:
    clock = Clock(epoch_s(2025, 1, 5, 14, 30))
    runs: list[tuple[str, int]] = []
    scheduler = instance(redis_server, clock, runs, "a")
    redis_server.stop()
    scheduler.run_pending()  # the lock cannot be taken: retried later, not run unlocked
    assert runs == []
    redis_server.start()
    clock.now_s += 31
    scheduler.run_pending()
    assert [who for who, _ in runs] == ["a"]
