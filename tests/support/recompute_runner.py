"""A recompute runner whose batches the test releases one by one.

It stands in for the recompute job behind the task registry: it does no feature work, it only
follows the runner contract (progress per batch, the stop event between batches, the count of
signals written or an exception), so the registry and the API can be driven step by step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from s2feature.jobs.recompute import Progress, RecomputeRequest, Resume
from s2feature.jobs.tasks import estimate_batches

SIGNALS_PER_BATCH = 7


class RunnerFailedError(RuntimeError):
    """Raised by the runner when told to fail."""


@dataclass
class SteppedRunner:
    """Runs `estimate_batches(request)` batches (from `resume` on), each after one `release()`.

    `fail_at`: the batch (1-based) at which it raises `RunnerFailedError` instead of finishing.
    `started` lists the task ids in the order their runs began; `running` is set while a run is
    in progress.
    """

    fail_at: int | None = None
    started: list[str] = field(default_factory=list)
    running: threading.Event = field(default_factory=threading.Event)
    _permits: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _active: int = 0
    max_active: int = 0

    def release(self, batches: int = 1) -> None:
        """Let `batches` more batches finish."""
        for _ in range(batches):
            self._permits.release()

    def __call__(
        self,
        request: RecomputeRequest,
        task_id: str,
        progress: Callable[[Progress], None],
        stop: threading.Event,
        resume: Resume,
    ) -> int:
        with self._lock:
            self.started.append(task_id)
            self._active += 1
            self.max_active = max(self.max_active, self._active)
        self.running.set()
        try:
            return self._batches(request, progress, stop, resume)
        finally:
            with self._lock:
                self._active -= 1
            self.running.clear()

    def _batches(
        self,
        request: RecomputeRequest,
        progress: Callable[[Progress], None],
        stop: threading.Event,
        resume: Resume,
    ) -> int:
        total = estimate_batches(request)
        written = resume.signals_written
        for batch in range(resume.batches_done + 1, total + 1):
            while not self._permits.acquire(timeout=0.01):
                if stop.is_set():
                    return written
            if self.fail_at == batch:
                raise RunnerFailedError(f"batch {batch} failed")
            written += SIGNALS_PER_BATCH
            progress(Progress(batch, total, written))
        return written
