"""Recompute tasks kept in a real SQLite store and run by the real job on a real lake: a task
stopped between batches is resumed by the next registry of the same owner from its last finished
batch (and gives the signals of an uninterrupted run), a resume under another config rev is
refused, and the hourly gap fill (force = false) writes only the signals that are missing."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from s2feature.config.bundle import ConfigBundle
from s2feature.data.synth import derive_ticks
from s2feature.domain import DAY_MS, SeriesId
from s2feature.jobs.gap_fill import GapFill
from s2feature.jobs.recompute import Progress, RecomputeRequest, Resume
from s2feature.jobs.schedule import HOUR_MS, Due
from s2feature.jobs.task_runner import LakeRecomputeRunner
from s2feature.jobs.tasks import TaskRegistry, TaskView
from s2feature.lake.parquet import BarLake
from s2feature.store.sqlite import SqliteStore
from tests.support.market_gen import SeriesSpec, make_series
from tests.support.recompute_runner import SteppedRunner
from tests.support.redis_servers import wait_for

SERIES = SeriesId("binance", "fut", "BTCUSDT")
BUNDLE = ConfigBundle().with_overrides(rev="rev-a")
WINDOWS = ("1m", "5m", "1h")


@pytest.fixture(scope="module")
def lake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four days of one-minute bars (read only by the tests)."""
    root = tmp_path_factory.mktemp("lake")
    bars = make_series(SeriesSpec(seed=11, n=4 * 1440, base_ms=60_000, sigma=0.002))
    BarLake(root, auto_compact_parts=None).append(
        SERIES.symbol, derive_ticks(bars, seed=11, market=SERIES.market).to_bars()
    )
    return root


def last_whole_days(lake: BarLake, days: int) -> tuple[int, int]:
    last = lake.last_close_time(SERIES.symbol)
    assert last is not None
    to_ts = last // DAY_MS * DAY_MS - 1  # the end of the last whole UTC day
    return to_ts - days * DAY_MS + 1, to_ts


class Recorder:
    """The real job behind the registry, recording where each run started; `stop_after` sets
    the registry's stop event once that many batches of a run are done (a stop between
    batches, as at a service shutdown)."""

    def __init__(self, runner: LakeRecomputeRunner, stop_after: int | None = None) -> None:
        self.runner = runner
        self.stop_after = stop_after
        self.resumed_from: list[int] = []

    def __call__(
        self,
        request: RecomputeRequest,
        task_id: str,
        progress: Callable[[Progress], None],
        stop: threading.Event,
        resume: Resume,
    ) -> int:
        self.resumed_from.append(resume.batches_done)

        def report(p: Progress) -> None:
            progress(p)
            if self.stop_after is not None and p.batches_done - resume.batches_done >= (
                self.stop_after
            ):
                stop.set()

        return self.runner(request, task_id, report, stop, resume)


def registry(
    db: Path, lake: BarLake, recorder_of: Callable[[LakeRecomputeRunner], Recorder], rev: str
) -> tuple[TaskRegistry, Recorder, SqliteStore]:
    store = SqliteStore(db)
    bundle = BUNDLE.with_overrides(rev=rev)
    recorder = recorder_of(LakeRecomputeRunner(lambda: store, lake, lambda: bundle, {}))
    tasks = TaskRegistry(recorder, task_store=lambda: store, owner="s2-a")
    tasks.start()
    wait_for(lambda: tasks.ready, timeout_s=30, what="the registry to open its store")
    return tasks, recorder, store


@pytest.fixture
def opened() -> Iterator[list[tuple[TaskRegistry, SqliteStore]]]:
    items: list[tuple[TaskRegistry, SqliteStore]] = []
    yield items
    for tasks, store in items:
        tasks.close()
        store.close()


def view_of(tasks: TaskRegistry, task_id: str) -> TaskView:
    view = tasks.get(task_id)
    assert view is not None
    return view


def finished(tasks: TaskRegistry, task_id: str) -> TaskView:
    wait_for(
        lambda: view_of(tasks, task_id).state not in ("queued", "running"),
        timeout_s=120,
        what=f"{task_id} to end",
    )
    return view_of(tasks, task_id)


def features_by_id(store: SqliteStore) -> dict[str, Any]:
    docs = store.query_signals(SERIES.symbol)
    return {d["signal_id"]: (d["features"], d["dqc"], d["mode"], d["config_rev"]) for d in docs}


def test_a_stopped_task_resumes_from_its_last_batch_and_equals_an_uninterrupted_run(
    tmp_path: Path, lake_root: Path, opened: list[tuple[TaskRegistry, SqliteStore]]
) -> None:
    lake = BarLake(lake_root)
    from_ts, to_ts = last_whole_days(lake, 3)
    request = RecomputeRequest((SERIES.symbol,), WINDOWS, from_ts, to_ts)

    first, _, first_store = registry(
        tmp_path / "s2.db", lake, lambda r: Recorder(r, stop_after=1), "rev-a"
    )
    opened.append((first, first_store))
    task_id = first.submit(request).task_id
    stopped = finished(first, task_id)
    assert (stopped.state, stopped.batches_done, stopped.batches_total) == ("interrupted", 1, 3)
    first.close()
    record = first_store.get_task(task_id)
    assert record is not None
    # The store keeps it running, at its last finished batch, for the next start.
    assert (record["state"], record["batches_done"], record["config_rev"]) == (
        "running",
        1,
        "rev-a",
    )
    written_before = record["signals_written"]
    assert written_before > 0

    second, recorder, second_store = registry(tmp_path / "s2.db", lake, Recorder, "rev-a")
    opened.append((second, second_store))
    done = finished(second, task_id)
    assert recorder.resumed_from == [1]
    assert (done.state, done.batches_done, done.batches_total, done.errors) == ("done", 3, 3, ())

    # An uninterrupted run of the same request in another store writes the same signals.
    reference, _, reference_store = registry(tmp_path / "ref.db", lake, Recorder, "rev-a")
    opened.append((reference, reference_store))
    whole = finished(reference, reference.submit(request).task_id)
    assert done.signals_written == whole.signals_written > written_before
    assert features_by_id(second_store) == features_by_id(reference_store)
    assert {m for _, _, m, _ in features_by_id(second_store).values()} == {"recompute"}
    # Ids stay unique across the restart: the next task takes the next number.
    later = RecomputeRequest((SERIES.symbol,), ("1h",), to_ts + 1, to_ts + HOUR_MS)
    assert second.submit(later).task_id == task_id[:-4] + "0002"


def test_a_resume_under_another_config_rev_is_refused_and_the_task_interrupted(
    tmp_path: Path, lake_root: Path, opened: list[tuple[TaskRegistry, SqliteStore]]
) -> None:
    lake = BarLake(lake_root)
    from_ts, to_ts = last_whole_days(lake, 2)
    first, _, first_store = registry(
        tmp_path / "s2.db", lake, lambda r: Recorder(r, stop_after=1), "rev-a"
    )
    opened.append((first, first_store))
    task_id = first.submit(RecomputeRequest((SERIES.symbol,), ("1h",), from_ts, to_ts)).task_id
    finished(first, task_id)
    first.close()

    second, _, second_store = registry(tmp_path / "s2.db", lake, Recorder, "rev-b")
    opened.append((second, second_store))
    refused = finished(second, task_id)
    assert (refused.state, refused.batches_done) == ("interrupted", 1)
    assert "config rev changed from rev-a to rev-b" in refused.errors[0]
    stored = second_store.get_task(task_id)
    assert stored is not None
    assert stored["state"] == "interrupted"


def test_the_gap_fill_writes_only_the_missing_signals(
    tmp_path: Path, lake_root: Path, opened: list[tuple[TaskRegistry, SqliteStore]]
) -> None:
    lake = BarLake(lake_root)
    last = lake.last_close_time(SERIES.symbol)
    assert last is not None
    due = (last + 1) // HOUR_MS * HOUR_MS  # the last full hour the lake covers
    tasks, _, store = registry(tmp_path / "s2.db", lake, Recorder, "rev-a")
    opened.append((tasks, store))
    fill = GapFill(tasks, lambda: [SERIES.symbol], lake, WINDOWS, 2 * HOUR_MS)

    fill(Due("recompute", due, HOUR_MS, None))
    (first,) = [t for t in store.query_tasks() if t["origin"] == "schedule"]
    full = finished(tasks, first["task_id"])
    in_range = store.query_signals(SERIES.symbol, None, due - 2 * HOUR_MS, due - 1)
    assert full.signals_written == len(in_range) == 120 + 24 + 2

    # An outage: some snapshots never reached the store.
    missing = [d["signal_id"] for d in in_range[::7]]
    with sqlite3.connect(tmp_path / "s2.db") as db:
        db.executemany("DELETE FROM signals WHERE signal_id = ?", [(i,) for i in missing])
    kept = {d["signal_id"]: d["computed_at"] for d in in_range if d["signal_id"] not in missing}

    fill(Due("recompute", due, HOUR_MS, None))
    second = [t for t in store.query_tasks() if t["origin"] == "schedule"][-1]
    assert second["task_id"] != first["task_id"]
    refill = finished(tasks, second["task_id"])
    assert refill.signals_written == len(missing)
    after = {d["signal_id"]: d for d in store.query_signals(SERIES.symbol, None, due - 2 * HOUR_MS)}
    assert set(after) == {d["signal_id"] for d in in_range}
    # Nothing already stored was written again.
    assert {i: after[i]["computed_at"] for i in kept} == kept


def stored_task(task_id: str, owner: str, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "task_id": task_id,
        "owner": owner,
        "origin": "api",
        "state": "running",
        "request": {
            "symbols": [SERIES.symbol],
            "windows": ["1h"],
            "from_ts": 0,
            "to_ts": DAY_MS - 1,
            "force": False,
        },
        "config_rev": None,
        "batches_done": 0,
        "batches_total": 1,
        "signals_written": 0,
        "signals_skipped": 0,
        "errors": [],
        "submitted_at": 0,
        "started_at": None,
        "finished_at": None,
        "run_s": 0.0,
    }
    return doc | changes


def test_only_the_owner_resumes_and_an_unreadable_task_is_interrupted(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s2.db")
    other = stored_task("recomp-20250105-0001", "s2-b")
    broken = stored_task("recomp-20250105-0002", "s2-a")
    broken["request"]["windows"] = ["2m"]
    for doc in (other, broken):
        store.save_task(doc)
    runner = SteppedRunner()
    jan5_noon = 1_736_078_400.0  # 2025-01-05T12:00Z: the day of the stored ids
    tasks = TaskRegistry(
        runner, task_store=lambda: store, owner="s2-a", wall_clock=lambda: jan5_noon
    )
    tasks.start()
    try:
        wait_for(lambda: tasks.ready, timeout_s=30, what="the registry to open its store")
        assert runner.started == []  # another owner's task is left to its owner
        assert view_of(tasks, other["task_id"]).state == "running"  # answered from the store
        refused = store.get_task(broken["task_id"])
        assert refused is not None
        assert refused["state"] == "interrupted"
        assert "cannot be resumed: windows" in refused["errors"][0]
        # Ids already stored, whoever took them, are not given again.
        new = tasks.submit(RecomputeRequest((SERIES.symbol,), ("1h",), DAY_MS, 2 * DAY_MS - 1))
        assert new.task_id == "recomp-20250105-0003"
    finally:
        tasks.close()
        store.close()


def test_finished_tasks_older_than_the_retention_are_deleted_at_open_and_after_a_task(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "s2.db")
    jan5_noon_ms = 1_736_078_400_000  # 2025-01-05T12:00Z
    now_ms = [jan5_noon_ms]
    retention_ms = 30 * DAY_MS
    old = stored_task(
        "recomp-20241201-0001", "s2-b", state="done", finished_at=now_ms[0] - retention_ms - 1
    )
    recent = stored_task(
        "recomp-20241210-0001", "s2-a", state="failed", finished_at=now_ms[0] - retention_ms + 1
    )
    # Unfinished (another owner's): never deleted, however old.
    running = stored_task("recomp-20241101-0001", "s2-b", started_at=0)
    for doc in (old, recent, running):
        store.save_task(doc)
    runner = SteppedRunner()
    tasks = TaskRegistry(
        runner,
        task_store=lambda: store,
        owner="s2-a",
        wall_clock=lambda: now_ms[0] / 1000,
        retention_ms=retention_ms,
        prune_every_s=0.0,
    )
    tasks.start()
    try:
        wait_for(lambda: tasks.ready, timeout_s=30, what="the registry to open its store")
        stored = [t["task_id"] for t in store.query_tasks()]
        assert stored == ["recomp-20241101-0001", "recomp-20241210-0001"]
        assert tasks.get(old["task_id"]) is None  # GET: 404 once deleted
        # Two days later a task finishes: `recent` is now past the retention too.
        now_ms[0] += 2 * DAY_MS
        new = tasks.submit(RecomputeRequest((SERIES.symbol,), ("1h",), DAY_MS, 2 * DAY_MS - 1))
        runner.release(new.batches_total)
        assert finished(tasks, new.task_id).state == "done"
        wait_for(
            lambda: store.get_task(recent["task_id"]) is None,
            timeout_s=30,
            what="the prune after the task",
        )
        assert [t["task_id"] for t in store.query_tasks()] == [
            "recomp-20241101-0001",
            new.task_id,
        ]
    finally:
        tasks.close()
        store.close()
