"""Recompute tasks run in a child process (`ProcessRecomputeRunner`), behind a real task
registry with a real SQLite store and a real lake: the same signals and records as the
in-process runner; a stop reaches the child as SIGTERM and ends the task between batches,
resumable, with no child left; a child killed outright fails the task with a clear error; the
store credentials are never on the child's command line nor in its logs."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from s2feature.config.bundle import ConfigBundle
from s2feature.data.synth import derive_ticks
from s2feature.domain import DAY_MS, SeriesId
from s2feature.jobs.recompute import Progress, RecomputeRequest, Resume
from s2feature.jobs.task_process import ProcessRecomputeRunner
from s2feature.jobs.task_runner import LakeRecomputeRunner
from s2feature.jobs.tasks import Runner, TaskRegistry, TaskView
from s2feature.lake.parquet import BarLake
from s2feature.store.factory import StoreSettings
from s2feature.store.sqlite import SqliteStore
from tests.support.market_gen import SeriesSpec, make_series
from tests.support.redis_servers import wait_for

SERIES = SeriesId("binance", "fut", "BTCUSDT")
BUNDLE = ConfigBundle().with_overrides(rev="rev-p")
WINDOWS = ("1m", "5m", "1h")
SECRET = "pw-that-must-stay-hidden-3141"


def lake_of(root: Path, days: int, seed: int) -> Path:
    bars = make_series(SeriesSpec(seed=seed, n=days * 1440, base_ms=60_000, sigma=0.002))
    BarLake(root, auto_compact_parts=None).append(
        SERIES.symbol, derive_ticks(bars, seed=seed, market=SERIES.market).to_bars()
    )
    return root


@pytest.fixture(scope="module")
def short_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four days of one-minute bars."""
    return lake_of(tmp_path_factory.mktemp("short-lake"), 4, seed=21)


@pytest.fixture(scope="module")
def long_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twenty days: a task of many batches, still running when a test stops or kills it."""
    return lake_of(tmp_path_factory.mktemp("long-lake"), 20, seed=22)


def whole_days(lake_root: Path) -> RecomputeRequest:
    last = BarLake(lake_root).last_close_time(SERIES.symbol)
    first = BarLake(lake_root).read(SERIES.symbol).open_time[0]
    assert last is not None
    to_ts = last // DAY_MS * DAY_MS - 1
    from_ts = (int(first) // DAY_MS + 1) * DAY_MS
    return RecomputeRequest((SERIES.symbol,), WINDOWS, from_ts, to_ts)


def process_runner(db: Path, lake_root: Path, **kwargs: Any) -> ProcessRecomputeRunner:
    # The password is not used by SQLite; it stands for the ArangoDB one, which travels the same
    # way (the store settings on the child's stdin).
    store = StoreSettings(sqlite_path=db, arango_password=SECRET, arango_uri="http://u:x@h:1")
    series = {SERIES.symbol: SERIES}
    return ProcessRecomputeRunner(store, lake_root, lambda: BUNDLE, series, **kwargs)


class OnFirstBatch:
    """`runner`, calling `action` once, after the first batch it reports."""

    def __init__(self, runner: Runner, action: Callable[[threading.Event], None]) -> None:
        self.runner = runner
        self.action = action

    def __call__(
        self,
        request: RecomputeRequest,
        task_id: str,
        progress: Callable[[Progress], None],
        stop: threading.Event,
        resume: Resume,
    ) -> int:
        acted = False

        def report(p: Progress) -> None:
            nonlocal acted
            progress(p)
            if not acted:
                acted = True
                self.action(stop)

        return self.runner(request, task_id, report, stop, resume)


@pytest.fixture
def registries() -> Iterator[Callable[[Runner, Path], tuple[TaskRegistry, SqliteStore]]]:
    opened: list[tuple[TaskRegistry, SqliteStore]] = []

    def open_registry(runner: Runner, db: Path) -> tuple[TaskRegistry, SqliteStore]:
        store = SqliteStore(db)
        tasks = TaskRegistry(runner, task_store=lambda: store, owner="s2-p")
        tasks.start()
        wait_for(lambda: tasks.ready, timeout_s=30, what="the registry to open its store")
        opened.append((tasks, store))
        return tasks, store

    yield open_registry
    for tasks, store in opened:
        tasks.close()
        store.close()


def finished(tasks: TaskRegistry, task_id: str) -> TaskView:
    def view() -> TaskView:
        v = tasks.get(task_id)
        assert v is not None
        return v

    wait_for(lambda: view().state not in ("queued", "running"), timeout_s=180, what=task_id)
    return view()


def signals_of(store: SqliteStore) -> dict[str, Any]:
    docs = store.query_signals(SERIES.symbol)
    return {d["signal_id"]: (d["features"], d["dqc"], d["mode"], d["config_rev"]) for d in docs}


def recompute_events(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT doc FROM strategy_events WHERE kind = 'FEATURE_RECOMPUTE'"
        ).fetchall()
    return [json.loads(doc) for (doc,) in rows]


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_a_task_in_a_child_process_writes_what_the_in_process_runner_writes(
    tmp_path: Path,
    short_lake: Path,
    registries: Callable[[Runner, Path], tuple[TaskRegistry, SqliteStore]],
) -> None:
    request = whole_days(short_lake)
    in_db, child_db = tmp_path / "thread.db", tmp_path / "process.db"
    series = {SERIES.symbol: SERIES}
    stores: list[SqliteStore] = []  # the in-process job writes with the registry's store
    thread_runner = LakeRecomputeRunner(
        lambda: stores[0], BarLake(short_lake), lambda: BUNDLE, series
    )
    in_tasks, in_store = registries(thread_runner, in_db)
    stores.append(in_store)
    child_tasks, child_store = registries(process_runner(child_db, short_lake), child_db)

    in_view = finished(in_tasks, in_tasks.submit(request).task_id)
    child_view = finished(child_tasks, child_tasks.submit(request).task_id)

    assert child_view.state == "done", child_view.errors
    assert (child_view.batches_done, child_view.batches_total) == (3, 3)
    assert child_view.signals_written > 0
    assert child_view.signals_written == in_view.signals_written
    written = signals_of(child_store)
    assert len(written) == child_view.signals_written
    assert written == signals_of(in_store)
    # The parent kept the record; the child wrote the task's event.
    stored = child_store.get_task(child_view.task_id)
    assert stored is not None
    assert (stored["state"], stored["batches_done"]) == ("done", 3)
    (event,) = recompute_events(child_db)
    assert (event["task_id"], event["signals_written"], event["interrupted"]) == (
        child_view.task_id,
        child_view.signals_written,
        False,
    )


def test_a_stop_reaches_the_child_and_leaves_the_task_resumable_with_no_child_left(
    tmp_path: Path,
    long_lake: Path,
    registries: Callable[[Runner, Path], tuple[TaskRegistry, SqliteStore]],
) -> None:
    db = tmp_path / "s2.db"
    # A long timeout: the child must stop on its own, between batches, not be killed.
    runner = process_runner(db, long_lake, stop_timeout_s=120.0)
    children: list[int] = []

    def stop_now(stop: threading.Event) -> None:
        children.extend(runner.child_pids)
        stop.set()

    tasks, store = registries(OnFirstBatch(runner, stop_now), db)
    request = whole_days(long_lake)
    task_id = tasks.submit(request).task_id
    view = finished(tasks, task_id)

    assert view.state == "interrupted"
    assert 1 <= view.batches_done < view.batches_total
    (child,) = children
    assert not alive(child)
    assert runner.child_pids == frozenset()
    # The child returned between batches (SIGTERM handled), so it wrote the task's event.
    (event,) = recompute_events(db)
    assert event["interrupted"] is True
    assert event["batches_done"] == view.batches_done
    # In the store the task stays running at its last batch: the next start resumes it.
    stored = store.get_task(task_id)
    assert stored is not None
    assert (stored["state"], stored["batches_done"]) == ("running", view.batches_done)
    tasks.close()

    resumed, _ = registries(process_runner(db, long_lake), db)
    done = finished(resumed, task_id)
    assert done.state == "done", done.errors
    assert done.batches_done == done.batches_total


def test_a_child_killed_outright_fails_the_task_with_a_clear_error(
    tmp_path: Path,
    long_lake: Path,
    registries: Callable[[Runner, Path], tuple[TaskRegistry, SqliteStore]],
) -> None:
    db = tmp_path / "s2.db"
    runner = process_runner(db, long_lake, stderr=io.StringIO())
    children: list[int] = []

    def kill(_: threading.Event) -> None:
        children.extend(runner.child_pids)
        for pid in children:
            os.kill(pid, signal.SIGKILL)

    tasks, _ = registries(OnFirstBatch(runner, kill), db)
    view = finished(tasks, tasks.submit(whole_days(long_lake)).task_id)

    assert view.state == "failed"
    (error,) = view.errors
    assert "recompute process" in error
    assert "killed by signal SIGKILL" in error
    assert "without a result" in error
    (child,) = children
    assert not alive(child)


def test_the_store_credentials_are_not_on_the_command_line_nor_in_the_logs(
    tmp_path: Path,
    short_lake: Path,
    registries: Callable[[Runner, Path], tuple[TaskRegistry, SqliteStore]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The service's own secrets are in its environment: the child must not inherit them.
    monkeypatch.setenv("S2_API_TOKEN", SECRET)
    monkeypatch.setenv("S2_ARANGO_PASSWORD", SECRET)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer {SECRET}")
    monkeypatch.setenv("S2_TEST_KEPT_OUT", "1")
    db = tmp_path / "s2.db"
    logs = io.StringIO()
    runner = process_runner(db, short_lake, stderr=logs, log_level="DEBUG")
    command_lines: list[bytes] = []
    environments: list[bytes] = []

    def read_command_line(_: threading.Event) -> None:
        for pid in runner.child_pids:
            command_lines.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            environments.append(Path(f"/proc/{pid}/environ").read_bytes())

    tasks, _ = registries(OnFirstBatch(runner, read_command_line), db)
    view = finished(tasks, tasks.submit(whole_days(short_lake)).task_id)

    assert view.state == "done", view.errors
    (command_line,) = command_lines
    assert command_line.split(b"\0")[:-1] == [
        sys.executable.encode(),
        b"-m",
        b"s2feature.jobs.task_process",
    ]
    assert SECRET.encode() not in command_line
    (environment,) = environments
    names = {item.split(b"=", 1)[0] for item in environment.split(b"\0") if item}
    assert b"PATH" in names  # the rest of the environment is the parent's
    assert not {n for n in names if n.startswith(b"S2_")}
    assert b"OTEL_EXPORTER_OTLP_HEADERS" not in names
    assert SECRET.encode() not in environment
    assert SECRET not in logs.getvalue()
    assert "u:x@" not in logs.getvalue()
