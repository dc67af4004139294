"""The recompute job behind the task registry, in the registry's process: `plan` +
`run_recompute` for each task. `s2-feature run` runs its tasks in a child process instead
(`jobs/task_process.py`): on a thread, the job's Python work holds the interpreter lock the
consumer loop needs. This runner is for in-process use (tests, tools).

The tasks run on the registry's thread with a store connection of their own (`SharedStore`,
opened once and shared by the registry's records and the job's writes), never the consumer
loop's: a recompute batch that waits for the database lock does not hold up the loop's lock, and
the loop's writes do not hold up the job's. The job writes batch by batch and gives the
interpreter up between batches, so the loop keeps running while a long task runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from s2feature.config.bundle import ConfigBundle
from s2feature.domain import SeriesId
from s2feature.jobs.recompute import Progress, RecomputeRequest, Resume, plan, run_recompute
from s2feature.lake.parquet import BarLake
from s2feature.store.base import Store

__all__ = ["LakeRecomputeRunner", "SharedStore", "wait_for_bundle"]


def wait_for_bundle(
    bundle: Callable[[], ConfigBundle | None], stop: threading.Event, poll_s: float
) -> ConfigBundle | None:
    """The active bundle once one is approved (a task waits for it); None if stopped first."""
    current = bundle()
    while current is None:
        if stop.wait(poll_s):
            return None
        current = bundle()
    return current


class SharedStore:
    """Opens a store on first use and gives every later caller the same one."""

    def __init__(self, open_store: Callable[[], Store]) -> None:
        self._open_store = open_store
        self._store: Store | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Store:
        with self._lock:
            if self._store is None:
                self._store = self._open_store()
            return self._store

    def close(self) -> None:
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()


class LakeRecomputeRunner:
    """Runs recompute tasks from `lake` into `store`, under the active bundle at each task's
    start (`bundle`: None while no bundle is approved; the task waits for one). `series` gives
    the venue and market of the live series (`S2_SYMBOLS`)."""

    def __init__(
        self,
        store: Callable[[], Store],
        lake: BarLake,
        bundle: Callable[[], ConfigBundle | None],
        series: Mapping[str, SeriesId],
        *,
        bundle_poll_s: float = 1.0,
    ) -> None:
        self._store = store
        self._lake = lake
        self._bundle = bundle
        self._series = dict(series)
        self._bundle_poll_s = bundle_poll_s

    def __call__(
        self,
        request: RecomputeRequest,
        task_id: str,
        progress: Callable[[Progress], None],
        stop: threading.Event,
        resume: Resume,
    ) -> int:
        bundle = wait_for_bundle(self._bundle, stop, self._bundle_poll_s)
        if bundle is None:  # stopped first
            return resume.signals_written
        task = plan(request, self._lake, bundle, self._series)
        result = run_recompute(
            task, self._store(), self._lake, bundle, task_id, progress, stop, resume=resume
        )
        return result.signals_written
