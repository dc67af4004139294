"""The scheduler's timing rules on a hand-moved clock (no lock): catch-up once at start, missed
periods collapse into one run, `RetryLater` retries, a failing run is not repeated."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from s2feature.jobs.schedule import HOUR_MS, Due, Every, RetryLater, Scheduler


class Clock:
    def __init__(self, *when: int) -> None:
        self.now_s = datetime(*when, tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.now_s


def ms(*when: int) -> int:
    return int(datetime(*when, tzinfo=UTC).timestamp() * 1000)


def test_catch_up_once_then_each_full_hour_and_missed_hours_collapse() -> None:
    clock = Clock(2025, 1, 5, 14, 20)
    runs: list[int] = []
    scheduler = Scheduler(None, clock=clock)
    scheduler.register("fill", Every(HOUR_MS), lambda due: runs.append(due.at_ms))
    wait_s = scheduler.run_pending()
    assert runs == [ms(2025, 1, 5, 14)]  # the 14:00 run, caught up at start
    assert wait_s == pytest.approx(30.0)  # the clock is re-read at least every 30 s
    clock.now_s += 30 * 60  # 14:50
    scheduler.run_pending()
    assert len(runs) == 1
    clock.now_s += 3 * 3600  # 17:50: 15:00, 16:00 and 17:00 went by
    scheduler.run_pending()
    assert runs == [ms(2025, 1, 5, 14), ms(2025, 1, 5, 17)]


def test_retry_later_runs_again_after_the_retry_time_and_a_failure_is_not_repeated() -> None:
    clock = Clock(2025, 1, 5, 14, 0, 5)
    calls: list[int] = []

    def not_ready_once(due: Due) -> None:
        calls.append(due.at_ms)
        if len(calls) == 1:
            raise RetryLater("starting")

    def broken(due: Due) -> None:
        calls.append(-1)
        raise KeyError("a bug")

    scheduler = Scheduler(None, clock=clock, retry_s=10)
    scheduler.register("fill", Every(HOUR_MS), not_ready_once)
    scheduler.register("broken", Every(HOUR_MS), broken)
    scheduler.run_pending()
    assert calls == [ms(2025, 1, 5, 14), -1]
    clock.now_s += 5
    scheduler.run_pending()
    assert len(calls) == 2  # not before the retry time
    clock.now_s += 5
    scheduler.run_pending()
    assert calls == [ms(2025, 1, 5, 14), -1, ms(2025, 1, 5, 14)]
    clock.now_s += 60
    scheduler.run_pending()
    assert len(calls) == 3  # neither is repeated within the hour


def test_jobs_are_registered_once_and_before_the_start() -> None:
    scheduler = Scheduler(None, clock=Clock(2025, 1, 5))
    scheduler.register("fill", Every(HOUR_MS), lambda due: None)
    with pytest.raises(ValueError, match="registered already"):
        scheduler.register("fill", Every(HOUR_MS), lambda due: None)
    scheduler.run_pending()
    with pytest.raises(RuntimeError, match="before the scheduler starts"):
        scheduler.register("regime", Every(24 * HOUR_MS), lambda due: None)
    assert scheduler.jobs == ["fill"]
