"""The recompute task registry: ids, scope conflicts, FIFO on one worker, progress, endings."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from s2feature.jobs.recompute import RecomputeRequest
from s2feature.jobs.tasks import (
    DAY_MS,
    RegistryClosedError,
    ScopeConflictError,
    TaskRegistry,
    TaskView,
    estimate_batches,
)
from tests.support.recompute_runner import SIGNALS_PER_BATCH, SteppedRunner
from tests.support.redis_servers import wait_for

JAN5 = int(datetime(2025, 1, 5, tzinfo=UTC).timestamp() * 1000)


def request(*symbols: str, from_day: float = 0, to_day: float = 1) -> RecomputeRequest:
    return RecomputeRequest(
        symbols=symbols or ("BTCUSDT",),
        windows=("1m",),
        from_ts=JAN5 + int(from_day * DAY_MS),
        to_ts=JAN5 + int(to_day * DAY_MS) - 1,  # inclusive: the last millisecond before to_day
    )


class FakeMonotonic:
    """A monotonic clock the test moves by hand (rates and ETAs become exact)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runner() -> SteppedRunner:
    return SteppedRunner()


@pytest.fixture
def clock() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def registry(runner: SteppedRunner, clock: FakeMonotonic) -> Iterator[TaskRegistry]:
    tasks = TaskRegistry(runner, wall_clock=lambda: JAN5 / 1000 + 3600, monotonic=clock)
    tasks.start()
    yield tasks
    tasks.close(timeout_s=10.0)


def state_of(tasks: TaskRegistry, task_id: str) -> TaskView:
    view = tasks.get(task_id)
    assert view is not None
    return view


def wait_state(tasks: TaskRegistry, task_id: str, state: str) -> TaskView:
    wait_for(lambda: state_of(tasks, task_id).state == state, timeout_s=10.0, what=state)
    return state_of(tasks, task_id)


@pytest.mark.parametrize(
    ("from_day", "to_day", "symbols", "batches"),
    [
        (0, 1, 1, 1),  # exactly one UTC day
        (0, 1.5, 1, 2),  # into the second day
        (0.5, 1.5, 2, 4),  # two partial days, two symbols
        (0, 90, 3, 270),
        (0.25, 0.5, 1, 1),
    ],
)
def test_one_batch_per_symbol_and_utc_day(
    from_day: float, to_day: float, symbols: int, batches: int
) -> None:
    names = ("AAA", "BBB", "CCC")[:symbols]
    assert estimate_batches(request(*names, from_day=from_day, to_day=to_day)) == batches


def test_overlap_needs_a_shared_symbol_and_shared_time() -> None:
    base = request("BTCUSDT", "ETHUSDT", from_day=1, to_day=3)
    assert base.overlaps(request("ETHUSDT", from_day=2, to_day=4))
    assert not base.overlaps(request("SOLUSDT", from_day=1, to_day=3))
    assert not base.overlaps(request("BTCUSDT", from_day=3, to_day=4))  # the ranges only touch
    assert not base.overlaps(request("BTCUSDT", from_day=0, to_day=1))


def test_ids_carry_the_utc_day_of_submission_and_a_counter(runner: SteppedRunner) -> None:
    wall = [datetime(2025, 1, 5, 23, 59, tzinfo=UTC).timestamp()]
    tasks = TaskRegistry(runner, wall_clock=lambda: wall[0])
    first = tasks.submit(request("AAA")).task_id
    second = tasks.submit(request("BBB")).task_id
    wall[0] += 120  # past midnight UTC: a new day, a new counter
    third = tasks.submit(request("CCC")).task_id
    assert (first, second, third) == (
        "recomp-20250105-0001",
        "recomp-20250105-0002",
        "recomp-20250106-0001",
    )
    tasks.close()


def test_a_queued_task_reports_its_estimate(registry: TaskRegistry) -> None:
    view = registry.submit(request("AAA", from_day=0, to_day=3))
    assert (view.state, view.batches_done, view.batches_total) == ("queued", 0, 3)
    assert (view.signals_written, view.rate_per_s, view.eta_s, view.errors) == (0, None, None, ())


def test_an_overlapping_scope_is_refused_naming_the_active_task(
    registry: TaskRegistry, runner: SteppedRunner
) -> None:
    running = registry.submit(request("AAA", "BBB", from_day=0, to_day=2)).task_id
    queued = registry.submit(request("CCC", from_day=0, to_day=2)).task_id
    with pytest.raises(ScopeConflictError) as refused:
        registry.submit(request("BBB", from_day=1, to_day=3))
    assert refused.value.task_id == running
    with pytest.raises(ScopeConflictError) as refused:
        registry.submit(request("CCC", from_day=1, to_day=3))
    assert refused.value.task_id == queued
    # Once both ended, the same scopes are accepted again.
    runner.release(6)
    wait_state(registry, queued, "done")
    assert registry.submit(request("BBB", from_day=1, to_day=3)).state == "queued"


def test_tasks_run_one_at_a_time_in_submission_order(
    registry: TaskRegistry, runner: SteppedRunner
) -> None:
    ids = [registry.submit(request(name)).task_id for name in ("AAA", "BBB", "CCC")]
    wait_state(registry, ids[0], "running")
    assert [state_of(registry, i).state for i in ids[1:]] == ["queued", "queued"]
    runner.release(3)
    for task_id in ids:
        wait_state(registry, task_id, "done")
    assert runner.started == ids
    assert runner.max_active == 1


def test_the_runner_runs_off_the_submitting_thread() -> None:
    seen: list[str] = []

    def record(
        req: RecomputeRequest, task_id: str, progress: object, stop: object, resume: object
    ) -> int:
        seen.append(threading.current_thread().name)
        return 0

    tasks = TaskRegistry(record)
    tasks.start()
    task_id = tasks.submit(request()).task_id
    wait_state(tasks, task_id, "done")
    tasks.close()
    assert seen == ["recompute"]


def test_progress_rate_and_eta(
    registry: TaskRegistry, runner: SteppedRunner, clock: FakeMonotonic
) -> None:
    task_id = registry.submit(request("AAA", from_day=0, to_day=4)).task_id
    wait_state(registry, task_id, "running")
    clock.now += 10.0
    runner.release(1)
    wait_for(lambda: state_of(registry, task_id).batches_done == 1, timeout_s=10.0)
    view = state_of(registry, task_id)
    assert (view.batches_done, view.batches_total, view.signals_written) == (
        1,
        4,
        SIGNALS_PER_BATCH,
    )
    assert view.rate_per_s == pytest.approx(SIGNALS_PER_BATCH / 10.0)
    assert view.eta_s == pytest.approx(30.0)  # 10 s per batch, 3 left
    runner.release(3)
    done = wait_state(registry, task_id, "done")
    assert (done.batches_done, done.signals_written, done.eta_s) == (4, 4 * SIGNALS_PER_BATCH, None)
    assert done.rate_per_s == pytest.approx(4 * SIGNALS_PER_BATCH / 10.0)


def test_a_failing_runner_fails_the_task_and_the_next_one_runs(clock: FakeMonotonic) -> None:
    runner = SteppedRunner(fail_at=2)
    tasks = TaskRegistry(runner, monotonic=clock)
    tasks.start()
    failing = tasks.submit(request("AAA", from_day=0, to_day=3)).task_id
    runner.release(2)
    view = wait_state(tasks, failing, "failed")
    assert view.batches_done == 1
    assert view.errors == ("RunnerFailedError: batch 2 failed",)
    runner.fail_at = None
    following = tasks.submit(request("AAA", from_day=0, to_day=1)).task_id
    runner.release(1)
    assert wait_state(tasks, following, "done").errors == ()
    tasks.close()


def test_close_interrupts_the_running_and_the_queued_tasks(runner: SteppedRunner) -> None:
    tasks = TaskRegistry(runner)
    tasks.start()
    running = tasks.submit(request("AAA", from_day=0, to_day=3)).task_id
    queued = tasks.submit(request("BBB")).task_id
    wait_state(tasks, running, "running")
    runner.release(1)
    wait_for(lambda: state_of(tasks, running).batches_done == 1, timeout_s=10.0)
    tasks.close(timeout_s=10.0)
    assert state_of(tasks, running).state == "interrupted"
    assert state_of(tasks, running).errors == ("the service stopped while it ran",)
    assert state_of(tasks, queued).state == "interrupted"
    assert state_of(tasks, queued).errors == ("the service stopped before it ran",)
    assert runner.started == [running]
    with pytest.raises(RegistryClosedError):
        tasks.submit(request("CCC"))


def test_unknown_ids_are_none_and_old_finished_tasks_are_forgotten() -> None:
    tasks = TaskRegistry(lambda req, task_id, progress, stop, resume: 0, keep_finished=2)
    tasks.start()
    ids = []
    for name in ("AAA", "BBB", "CCC", "DDD"):
        ids.append(tasks.submit(request(name)).task_id)
        wait_state(tasks, ids[-1], "done")
    tasks.close()
    assert tasks.get("recomp-20250105-9999") is None
    # Submitting the fourth forgot the oldest beyond the two most recent finished ones.
    assert [tasks.get(i) is not None for i in ids] == [False, True, True, True]
