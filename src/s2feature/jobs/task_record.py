"""A recompute task as the registry holds it (`TaskRecord`), as the store keeps it (its `doc()`),
and as `GET /features/recompute/{task_id}` shows it (`TaskView`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from s2feature.jobs.recompute import RecomputeRequest

__all__ = [
    "ACTIVE",
    "FINISHED",
    "TaskRecord",
    "TaskState",
    "TaskView",
    "request_doc",
    "request_of",
    "stored_view",
]

TaskState = Literal["queued", "running", "done", "failed", "interrupted"]
ACTIVE: tuple[TaskState, ...] = ("queued", "running")
FINISHED: tuple[TaskState, ...] = ("done", "failed", "interrupted")


@dataclass(frozen=True)
class TaskView:
    """A task's state as `GET /features/recompute/{task_id}` reports it.

    `rate_per_s` is signals written per second of running; `eta_s` extrapolates the time per
    batch finished in this run to the batches left (null before the first batch finishes and
    once it ends).
    """

    task_id: str
    state: TaskState
    batches_done: int
    batches_total: int
    signals_written: int
    rate_per_s: float | None
    eta_s: float | None
    errors: tuple[str, ...]


def request_doc(request: RecomputeRequest) -> dict[str, Any]:
    return {
        "symbols": list(request.symbols),
        "windows": list(request.windows),
        "from_ts": request.from_ts,
        "to_ts": request.to_ts,
        "force": request.force,
    }


def request_of(doc: dict[str, Any]) -> RecomputeRequest:
    return RecomputeRequest(
        symbols=tuple(doc["symbols"]),
        windows=tuple(doc["windows"]),
        from_ts=int(doc["from_ts"]),
        to_ts=int(doc["to_ts"]),
        force=bool(doc["force"]),
    )


@dataclass
class TaskRecord:
    task_id: str
    request: RecomputeRequest
    state: TaskState
    batches_total: int
    owner: str = ""
    origin: str = "api"
    batches_done: int = 0
    signals_written: int = 0
    signals_skipped: int = 0
    config_rev: str | None = None
    submitted_at: int = 0  # epoch ms
    started_at: int | None = None
    finished_at: int | None = None
    run_s_before: float = 0.0  # seconds spent running before this process took the task up
    batches_before: int = 0  # batches finished before this run began
    started: float | None = None  # monotonic start of this run
    finished: float | None = None
    errors: list[str] = field(default_factory=list)

    def elapsed(self, now: float) -> float:
        if self.started is None:
            return self.run_s_before
        return (
            self.run_s_before
            + (self.finished if self.finished is not None else now)
            - (self.started)
        )

    def view(self, now: float) -> TaskView:
        rate = eta = None
        ran = self.started is not None or self.run_s_before > 0
        if ran and self.state != "queued":  # a resumed task waiting its turn has no pace yet
            elapsed = self.elapsed(now)
            rate = self.signals_written / elapsed if elapsed > 0 else None
            done_here = self.batches_done - self.batches_before
            if self.state == "running" and done_here > 0 and self.started is not None:
                left = max(0, self.batches_total - self.batches_done)
                eta = (now - self.started) / done_here * left
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

    def doc(self, now: float) -> dict[str, Any]:
        """The stored form of the task."""
        return {
            "task_id": self.task_id,
            "owner": self.owner,
            "origin": self.origin,
            "state": self.state,
            "request": request_doc(self.request),
            "config_rev": self.config_rev,
            "batches_done": self.batches_done,
            "batches_total": self.batches_total,
            "signals_written": self.signals_written,
            "signals_skipped": self.signals_skipped,
            "errors": list(self.errors),
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "run_s": round(self.elapsed(now), 6),
        }

    @classmethod
    def of_doc(cls, doc: dict[str, Any]) -> TaskRecord:
        """A stored task (RecomputeError when its request is no longer valid)."""
        task = cls(
            task_id=str(doc["task_id"]),
            request=request_of(doc["request"]),
            state=doc["state"],
            batches_total=int(doc["batches_total"]),
            owner=str(doc.get("owner", "")),
            origin=str(doc.get("origin", "api")),
            batches_done=int(doc.get("batches_done", 0)),
            signals_written=int(doc.get("signals_written", 0)),
            signals_skipped=int(doc.get("signals_skipped", 0)),
            config_rev=doc.get("config_rev"),
            submitted_at=int(doc.get("submitted_at", 0)),
            started_at=doc.get("started_at"),
            finished_at=doc.get("finished_at"),
            run_s_before=float(doc.get("run_s", 0.0)),
            errors=[str(e) for e in doc.get("errors", [])],
        )
        task.batches_before = task.batches_done
        return task


def stored_view(doc: dict[str, Any]) -> TaskView:
    """The view of a task known only from the store (finished before a restart, or another
    instance's): no ETA, the rate over its recorded running time."""
    run_s = float(doc.get("run_s", 0.0))
    written = int(doc.get("signals_written", 0))
    return TaskView(
        task_id=str(doc["task_id"]),
        state=doc["state"],
        batches_done=int(doc.get("batches_done", 0)),
        batches_total=int(doc.get("batches_total", 0)),
        signals_written=written,
        rate_per_s=written / run_s if run_s > 0 else None,
        eta_s=None,
        errors=tuple(str(e) for e in doc.get("errors", [])),
    )
