"""Recompute tasks: a registry of submitted tasks and the one worker thread that runs them.

Tasks run one at a time, first in first out, on a thread of their own (`recompute`), never in the
HTTP event loop. The work itself is a `Runner` given to the registry; it reports progress through
a callback and must return soon after the `stop` event is set (between batches is enough).

Task states: `queued` -> `running` -> `done` | `failed` | `interrupted`. A task that the service
stopped before or while running it ends `interrupted`, with the reason in its errors.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

log = logging.getLogger(__name__)

TaskState = Literal["queued", "running", "done", "failed", "interrupted"]
DAY_MS = 86_400_000
_ACTIVE: frozenset[TaskState] = frozenset({"queued", "running"})


@dataclass(frozen=True)
class RecomputeRequest:
    """What to recompute: `symbols` x `windows` over `[from_ts, to_ts)` in epoch milliseconds.

    `force = False` writes only signals that are absent or stored under another config rev.
    """

    symbols: tuple[str, ...]
    windows: tuple[str, ...]
    from_ts: int
    to_ts: int
    force: bool = False

    def overlaps(self, other: RecomputeRequest) -> bool:
        """Whether the two scopes share a symbol and a stretch of time (windows do not matter)."""
        shared = not set(self.symbols).isdisjoint(other.symbols)
        return shared and self.from_ts < other.to_ts and other.from_ts < self.to_ts


def estimate_batches(request: RecomputeRequest) -> int:
    """One batch per symbol and UTC day touched by `[from_ts, to_ts)`."""
    first_day = request.from_ts // DAY_MS
    last_day = (request.to_ts - 1) // DAY_MS
    return len(request.symbols) * (last_day - first_day + 1)


Progress = Callable[[int, int, int], None]
"""`progress(batches_done, batches_total, signals_written)`, called by a runner as it goes."""


class Runner(Protocol):
    """Runs one task; returns the number of signals written and raises on failure."""

    def __call__(
        self, request: RecomputeRequest, task_id: str, progress: Progress, stop: threading.Event
    ) -> int: ...


class ScopeConflictError(Exception):
    """The scope overlaps the scope of a queued or running task, named by `task_id`."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"the scope overlaps the scope of task {task_id}")
        self.task_id = task_id


class RegistryClosedError(Exception):
    """The registry no longer accepts tasks (the service is stopping)."""


@dataclass(frozen=True)
class TaskView:
    """A task's state as `GET /features/recompute/{task_id}` reports it.

    `rate_per_s` is signals written per second of running; `eta_s` extrapolates the time per
    finished batch to the batches left (null before the first batch finishes and once it ends).
    """

    task_id: str
    state: TaskState
    batches_done: int
    batches_total: int
    signals_written: int
    rate_per_s: float | None
    eta_s: float | None
    errors: tuple[str, ...]


@dataclass
class _Task:
    task_id: str
    request: RecomputeRequest
    state: TaskState
    batches_total: int
    batches_done: int = 0
    signals_written: int = 0
    started: float | None = None
    finished: float | None = None
    errors: list[str] = field(default_factory=list)

    def view(self, now: float) -> TaskView:
        rate = eta = None
        if self.started is not None:
            elapsed = (self.finished if self.finished is not None else now) - self.started
            rate = self.signals_written / elapsed if elapsed > 0 else None
            left = max(0, self.batches_total - self.batches_done)
            if self.state == "running" and self.batches_done > 0:
                eta = elapsed / self.batches_done * left
        return TaskView(
            task_id=self.task_id,
            state=self.state,
            batches_done=self.batches_done,
            batches_total=self.batches_total,
            signals_written=self.signals_written,
            rate_per_s=rate,
            eta_s=eta,
            errors=tuple(self.errors),
        )


class TaskRegistry:
    """Accepts recompute tasks and runs them one at a time on its worker thread.

    `wall_clock` (epoch seconds) dates the task ids (`recomp-YYYYMMDD-NNNN`, the UTC day of
    submission and a counter within the day); `monotonic` times the rate and ETA. At most
    `keep_finished` finished tasks are remembered, the oldest forgotten first.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        estimate: Callable[[RecomputeRequest], int] = estimate_batches,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        keep_finished: int = 1000,
    ) -> None:
        self._runner = runner
        self._estimate = estimate
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._keep_finished = keep_finished
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._tasks: OrderedDict[str, _Task] = OrderedDict()
        self._queue: list[str] = []
        self._day = ""
        self._counter = 0
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker thread; tasks submitted before wait in the queue."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._work, name="recompute", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Refuse new tasks, interrupt the queued ones, stop the running one and wait for it.

        A runner that does not return within `timeout_s` of the stop event is left behind (the
        worker is a daemon thread); its task stays `running` and is logged.
        """
        with self._lock:
            self._closed = True
            self._stop.set()
            for task_id in self._queue:
                self._end(self._tasks[task_id], "interrupted", "the service stopped before it ran")
            self._queue.clear()
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning(
                    "recompute task did not stop in %.0f s",
                    timeout_s,
                    extra={"event": "recompute_stop_timeout"},
                )

    def submit(self, request: RecomputeRequest) -> TaskView:
        """Queue `request`; its view (state `queued`).

        Raises `ScopeConflictError` when the scope overlaps a queued or running task's, and
        `RegistryClosedError` once `close()` was called.
        """
        with self._lock:
            if self._closed:
                raise RegistryClosedError("the service is stopping")
            for task in self._tasks.values():
                if task.state in _ACTIVE and task.request.overlaps(request):
                    raise ScopeConflictError(task.task_id)
            task = _Task(self._next_id(), request, "queued", self._estimate(request))
            self._tasks[task.task_id] = task
            self._queue.append(task.task_id)
            self._forget_old()
            self._wake.notify_all()
            view = task.view(self._monotonic())
        log.info(
            "recompute task %s queued",
            task.task_id,
            extra={"event": "recompute_queued", "task_id": task.task_id},
        )
        return view

    def state_counts(self) -> dict[TaskState, int]:
        """How many tasks are in each state (finished ones as far as they are remembered)."""
        counts: dict[TaskState, int] = {}
        with self._lock:
            for task in self._tasks.values():
                counts[task.state] = counts.get(task.state, 0) + 1
        return counts

    def get(self, task_id: str) -> TaskView | None:
        """The task's view, or None for an unknown (or forgotten) id."""
        with self._lock:
            task = self._tasks.get(task_id)
            return None if task is None else task.view(self._monotonic())

    def _next_id(self) -> str:
        day = datetime.fromtimestamp(self._wall_clock(), UTC).strftime("%Y%m%d")
        if day != self._day:
            self._day, self._counter = day, 0
        self._counter += 1
        return f"recomp-{day}-{self._counter:04d}"

    def _forget_old(self) -> None:
        finished = [t.task_id for t in self._tasks.values() if t.state not in _ACTIVE]
        for task_id in finished[: max(0, len(finished) - self._keep_finished)]:
            del self._tasks[task_id]

    def _end(self, task: _Task, state: TaskState, error: str | None = None) -> None:
        task.state = state
        task.finished = self._monotonic() if task.started is not None else None
        if error is not None:
            task.errors.append(error)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                task = self._tasks[self._queue.pop(0)]
                task.state, task.started = "running", self._monotonic()
            self._run(task)

    def _run(self, task: _Task) -> None:
        log.info(
            "recompute task %s running",
            task.task_id,
            extra={"event": "recompute_running", "task_id": task.task_id},
        )

        def progress(batches_done: int, batches_total: int, signals_written: int) -> None:
            with self._lock:
                task.batches_done = batches_done
                task.batches_total = batches_total
                task.signals_written = signals_written

        try:
            written = self._runner(task.request, task.task_id, progress, self._stop)
        except Exception as exc:
            with self._lock:
                self._end(task, "failed", f"{type(exc).__name__}: {exc}")
            log.exception(
                "recompute task %s failed",
                task.task_id,
                extra={"event": "recompute_failed", "task_id": task.task_id},
            )
            return
        with self._lock:
            task.signals_written = written
            if self._stop.is_set() and task.batches_done < task.batches_total:
                self._end(task, "interrupted", "the service stopped while it ran")
            else:
                self._end(task, "done")
            state = task.state
        log.info(
            "recompute task %s %s: %d signals written",
            task.task_id,
            state,
            written,
            extra={"event": "recompute_" + state, "task_id": task.task_id, "signals": written},
        )
