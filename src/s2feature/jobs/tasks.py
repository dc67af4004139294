"""Recompute tasks: a registry of submitted tasks and the one worker thread that runs them.

Tasks run one at a time, first in first out, on a thread of their own (`recompute`), never in the
HTTP event loop or the consumer loop. The work itself is a `Runner` given to the registry; it
reports progress after each batch and must return soon after the `stop` event is set (between
batches is enough).

Task states: `queued` -> `running` -> `done` | `failed` | `interrupted`.

With a task store (`TaskStore`: the service's store), every task and its progress after each
batch are stored, so that:
- task ids (`recomp-YYYYMMDD-NNNN`) are unique across restarts and across instances sharing the
  store: an id is taken by inserting the task, and an id already stored is never reused;
- a service that stops leaves its queued and running tasks so in the store, and the next start
  under the same consumer name (`owner`) resumes them, each from its last finished batch; the
  runner refuses a resume that is not safe (`ResumeRefusedError`), and the task ends
  `interrupted` with the reason;
- `get` answers for any stored task, also after a restart or from another instance.

Without a task store (tests, a bare app) tasks live in memory only, and a stop interrupts them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from s2feature.domain import DAY_MS
from s2feature.jobs.recompute import (
    Progress,
    RecomputeError,
    RecomputeRequest,
    Resume,
    ResumeRefusedError,
)
from s2feature.jobs.task_record import (
    ACTIVE,
    FINISHED,
    TaskRecord,
    TaskState,
    TaskView,
    stored_view,
)
from s2feature.store.base import StoreError, TaskStore

__all__ = [
    "DAY_MS",
    "RegistryClosedError",
    "RegistryNotReadyError",
    "Runner",
    "ScopeConflictError",
    "TaskRegistry",
    "TaskState",
    "TaskView",
    "estimate_batches",
]

log = logging.getLogger(__name__)

_ID_ATTEMPTS = 10_000  # ids per day: `NNNN`


def estimate_batches(request: RecomputeRequest) -> int:
    """One batch per symbol and UTC day touched by `[from_ts, to_ts]` (both inclusive)."""
    first_day = request.from_ts // DAY_MS
    last_day = request.to_ts // DAY_MS
    return len(request.symbols) * (last_day - first_day + 1)


class Runner(Protocol):
    """Runs one task from `resume` on; returns the signals written (in all, resumed runs
    included) and raises on failure (`ResumeRefusedError`: the resume is not safe)."""

    def __call__(
        self,
        request: RecomputeRequest,
        task_id: str,
        progress: Callable[[Progress], None],
        stop: threading.Event,
        resume: Resume,
    ) -> int: ...


class ScopeConflictError(Exception):
    """The scope overlaps the scope of a queued or running task, named by `task_id`."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"the scope overlaps the scope of task {task_id}")
        self.task_id = task_id


class RegistryClosedError(Exception):
    """The registry does not accept tasks (the service is stopping, or not ready yet)."""


class RegistryNotReadyError(RegistryClosedError):
    """The task store is not open yet (the service is starting)."""


class TaskRegistry:
    """Accepts recompute tasks and runs them one at a time on its worker thread.

    `task_store` opens the store the tasks are kept in (called once, on the worker thread, and
    retried while it raises StoreError; None: memory only). `owner` is the consumer name: a
    restart under the same name resumes its tasks. `wall_clock` (epoch seconds) dates the task
    ids (`recomp-YYYYMMDD-NNNN`, the UTC day of submission and a counter within the day);
    `monotonic` times the rate and ETA. At most `keep_finished` finished tasks are kept in
    memory, the oldest forgotten first. The store keeps finished tasks for `retention_ms` after
    they ended (0: for ever): older ones, of any owner, are deleted when the store is opened and
    then at most every `prune_every_s`, after a task finishes.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        task_store: Callable[[], TaskStore] | None = None,
        owner: str = "",
        estimate: Callable[[RecomputeRequest], int] = estimate_batches,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        keep_finished: int = 1000,
        retry_s: float = 2.0,
        retention_ms: int = 0,
        prune_every_s: float = 3600.0,
    ) -> None:
        self._runner = runner
        self._open_store = task_store
        self._store: TaskStore | None = None
        self._owner = owner
        self._estimate = estimate
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._keep_finished = keep_finished
        self._retry_s = retry_s
        self._retention_ms = retention_ms
        self._prune_every_s = prune_every_s
        self._pruned_at: float | None = None  # monotonic time of the last prune
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._tasks: OrderedDict[str, TaskRecord] = OrderedDict()
        self._queue: list[str] = []
        self._day = ""
        self._counter = 0
        self._closed = False
        self._ready = task_store is None  # memory only: ready at once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        """Whether tasks are accepted (the task store is open and its tasks are loaded)."""
        with self._lock:
            return self._ready and not self._closed

    def start(self) -> None:
        """Start the worker thread (it opens the task store and resumes the stored tasks first);
        tasks submitted before wait in the queue."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._work, name="recompute", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Refuse new tasks, stop the running one between batches and wait for it.

        Queued and running tasks end `interrupted` in memory; in the task store they stay
        queued or running, with the progress of their last finished batch, for the next start
        to resume. A runner that does not return within `timeout_s` of the stop event is left
        behind (the worker is a daemon thread) and logged.
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

    def submit(self, request: RecomputeRequest, origin: str = "api") -> TaskView:
        """Queue `request`; its view (state `queued`). `origin` says who asked (`api`,
        `schedule`), for the stored record.

        Raises `ScopeConflictError` when the scope overlaps a queued or running task's,
        `RegistryNotReadyError` before the task store is open, `RegistryClosedError` once
        `close()` was called, and StoreError when the task cannot be stored.
        """
        with self._lock:
            if self._closed:
                raise RegistryClosedError("the service is stopping")
            if not self._ready:
                raise RegistryNotReadyError("the service is starting: its task store is not open")
            for task in self._tasks.values():
                if task.state in ACTIVE and task.request.overlaps(request):
                    raise ScopeConflictError(task.task_id)
            task = TaskRecord(
                "",
                request,
                "queued",
                self._estimate(request),
                owner=self._owner,
                origin=origin,
                submitted_at=int(self._wall_clock() * 1000),
            )
            self._take_id(task)
            self._tasks[task.task_id] = task
            self._queue.append(task.task_id)
            self._forget_old()
            self._wake.notify_all()
            view = task.view(self._monotonic())
        log.info(
            "recompute task %s queued",
            task.task_id,
            extra={"event": "recompute_queued", "task_id": task.task_id, "origin": origin},
        )
        return view

    def state_counts(self) -> dict[TaskState, int]:
        """How many tasks this process holds in each state (finished ones as far as they are
        remembered)."""
        counts: dict[TaskState, int] = {}
        with self._lock:
            for task in self._tasks.values():
                counts[task.state] = counts.get(task.state, 0) + 1
        return counts

    def get(self, task_id: str) -> TaskView | None:
        """The task's view, or None for an unknown id. A task this process does not hold is
        looked up in the task store (StoreError when it cannot be read; RegistryNotReadyError
        before it is open, when the answer could not be known)."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None:
                return task.view(self._monotonic())
            store = self._store
            if store is None and not self._ready:
                raise RegistryNotReadyError("the service is starting: its task store is not open")
        if store is None:
            return None
        doc = store.get_task(task_id)
        return None if doc is None else stored_view(doc)

    # ------------------------------------------------------------------ ids and memory

    def _take_id(self, task: TaskRecord) -> None:
        """Give `task` the next free id of its day; with a store, by inserting it."""
        day = datetime.fromtimestamp(self._wall_clock(), UTC).strftime("%Y%m%d")
        if day != self._day:
            self._day, self._counter = day, 0
        for _ in range(_ID_ATTEMPTS):
            self._counter += 1
            task.task_id = f"recomp-{day}-{self._counter:04d}"
            if self._store is None or self._store.insert_task(task.doc(self._monotonic())):
                return
            # Taken (by an earlier run of the service, or another instance): skip past the
            # highest id of the day in one step.
            taken = self._store.query_tasks(id_prefix=f"recomp-{day}-")
            numbers = [int(str(t["task_id"]).rsplit("-", 1)[1]) for t in taken]
            self._counter = max([self._counter, *numbers])
        raise StoreError(f"no free recompute task id left for {day}")

    def _forget_old(self) -> None:
        finished = [t.task_id for t in self._tasks.values() if t.state not in ACTIVE]
        for task_id in finished[: max(0, len(finished) - self._keep_finished)]:
            del self._tasks[task_id]

    def _end(self, task: TaskRecord, state: TaskState, error: str | None = None) -> None:
        task.state = state
        task.finished = self._monotonic() if task.started is not None else None
        task.finished_at = int(self._wall_clock() * 1000)
        if error is not None:
            task.errors.append(error)

    def _save(self, task: TaskRecord) -> None:
        """Store the task as it is now (on the worker thread; a no-op without a store)."""
        store = self._store
        if store is None:
            return
        with self._lock:
            doc = task.doc(self._monotonic())
        store.save_task(doc)

    # ------------------------------------------------------------------ worker

    def _open(self) -> bool:
        """Open the task store and queue the owner's unfinished tasks (False: stopped first)."""
        if self._open_store is None:
            return True
        while not self._stop.is_set():
            try:
                store = self._open_store()
                stored = store.query_tasks(owner=self._owner, states=ACTIVE)
                break
            except StoreError as exc:
                log.warning(
                    "recompute task store not available: %s",
                    exc,
                    extra={"event": "retry", "what": "open task store"},
                )
                self._stop.wait(self._retry_s)
        else:
            return False
        resumed = [self._resumable(doc, store) for doc in stored]
        with self._lock:
            self._store = store
            for task in resumed:
                if task is None:
                    continue
                self._tasks[task.task_id] = task
                if task.state in ACTIVE:
                    task.state = "queued"
                    self._queue.append(task.task_id)
            self._ready = True
            self._wake.notify_all()
        self._prune()
        return True

    def _prune(self) -> None:
        """Delete the stored tasks that finished more than the retention ago (on the worker
        thread). A failure is logged and left for the next time: old records do no harm."""
        store = self._store
        if store is None or self._retention_ms <= 0:
            return
        now = self._monotonic()
        if self._pruned_at is not None and now - self._pruned_at < self._prune_every_s:
            return
        self._pruned_at = now
        before = int(self._wall_clock() * 1000) - self._retention_ms
        try:
            deleted = store.delete_tasks(before, FINISHED)
        except StoreError as exc:
            log.warning(
                "old recompute tasks not deleted: %s",
                exc,
                extra={"event": "recompute_prune_failed"},
            )
            return
        if deleted:
            log.info(
                "deleted %d recompute tasks that finished over %d days ago",
                deleted,
                self._retention_ms // DAY_MS,
                extra={"event": "recompute_pruned", "tasks": deleted},
            )

    def _resumable(self, doc: dict[str, Any], store: TaskStore) -> TaskRecord | None:
        try:
            task = TaskRecord.of_doc(doc)
        except (RecomputeError, KeyError, TypeError, ValueError) as exc:
            doc = {**doc, "state": "interrupted"}
            doc["errors"] = [*doc.get("errors", []), f"cannot be resumed: {exc}"]
            store.save_task(doc)
            log.warning(
                "recompute task %s cannot be resumed: %s",
                doc.get("task_id"),
                exc,
                extra={"event": "recompute_interrupted", "task_id": doc.get("task_id")},
            )
            return None
        log.info(
            "recompute task %s resumed after batch %d of %d",
            task.task_id,
            task.batches_done,
            task.batches_total,
            extra={"event": "recompute_resumed", "task_id": task.task_id},
        )
        return task

    def _work(self) -> None:
        if not self._open():
            return
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                task = self._tasks[self._queue.pop(0)]
                task.state, task.started = "running", self._monotonic()
                task.finished = None
                task.started_at = task.started_at or int(self._wall_clock() * 1000)
            try:
                self._save(task)
                self._run(task)
                self._prune()
            except StoreError as exc:
                # The task store failed: the task's record may be behind, never ahead, of
                # what was written, and a restart resumes from there.
                with self._lock:
                    if task.state == "running":
                        self._end(task, "failed", f"{type(exc).__name__}: {exc}")
                with contextlib.suppress(StoreError):
                    self._save(task)
                log.exception(
                    "recompute task %s: its record could not be stored",
                    task.task_id,
                    extra={"event": "recompute_failed", "task_id": task.task_id},
                )

    def _run(self, task: TaskRecord) -> None:
        log.info(
            "recompute task %s running",
            task.task_id,
            extra={"event": "recompute_running", "task_id": task.task_id},
        )

        def progress(p: Progress) -> None:
            with self._lock:
                task.batches_done = p.batches_done
                task.batches_total = p.batches_total
                task.signals_written = p.signals_written
                task.signals_skipped = p.signals_skipped
                task.config_rev = p.config_rev or task.config_rev
            self._save(task)

        resume = Resume(
            task.batches_done, task.signals_written, task.signals_skipped, task.config_rev
        )
        try:
            written = self._runner(task.request, task.task_id, progress, self._stop, resume)
        except ResumeRefusedError as exc:
            self._finish(task, "interrupted", f"cannot be resumed: {exc}")
            return
        except StoreError:
            raise
        except Exception as exc:
            self._finish(task, "failed", f"{type(exc).__name__}: {exc}", exc_info=True)
            return
        with self._lock:
            task.signals_written = written
            stopped = self._stop.is_set() and task.batches_done < task.batches_total
        if stopped:
            # Left running in the store (with its last finished batch) for the next start.
            with self._lock:
                self._end(task, "interrupted", "the service stopped while it ran")
            log.info(
                "recompute task %s stopped after batch %d",
                task.task_id,
                task.batches_done,
                extra={"event": "recompute_stopped", "task_id": task.task_id},
            )
            return
        self._finish(task, "done")

    def _finish(
        self, task: TaskRecord, state: TaskState, error: str | None = None, exc_info: bool = False
    ) -> None:
        with self._lock:
            self._end(task, state, error)
        self._save(task)
        log.log(
            logging.ERROR if state == "failed" else logging.INFO,
            "recompute task %s %s: %d signals written",
            task.task_id,
            state,
            task.signals_written,
            exc_info=exc_info,
            extra={
                "event": "recompute_" + state,
                "task_id": task.task_id,
                "signals": task.signals_written,
            },
        )
