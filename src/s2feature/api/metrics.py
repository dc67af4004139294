"""`GET /metrics` (Prometheus text format, open like `/health`) and the recompute tasks' metrics.

The registry is the service's own (`observability.metrics.Metrics.registry`), passed in, so that
each app (and each test) exposes exactly its own metrics.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from s2feature.jobs.recompute import Progress, RecomputeRequest, Resume
from s2feature.jobs.tasks import Runner, TaskRegistry, TaskState
from s2feature.observability.metrics import Metrics

TASK_STATES: tuple[TaskState, ...] = ("queued", "running", "done", "failed", "interrupted")


def metrics_router(registry: CollectorRegistry) -> APIRouter:
    router = APIRouter(tags=["metrics"])

    # A plain `def`: FastAPI runs it in its thread pool, off the event loop.
    @router.get("/metrics", response_class=Response)
    def get_metrics() -> Response:
        """Every metric of the service, in the Prometheus text format."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


class TaskCollector(Collector):
    """`s2_recompute_tasks{state}` from the task registry, at scrape time."""

    def __init__(self, tasks: TaskRegistry) -> None:
        self.tasks = tasks

    def collect(self) -> Iterator[Metric]:
        counts = self.tasks.state_counts()
        family = GaugeMetricFamily(
            "s2_recompute_tasks", "Recompute tasks known, by state", labels=["state"]
        )
        for state in TASK_STATES:
            family.add_metric([state], float(counts.get(state, 0)))
        yield family


def counted_runner(runner: Runner, metrics: Metrics) -> Runner:
    """`runner`, counting the signals it writes as it reports them (`s2_recompute_signals_total`)
    and the tasks it fails (`s2_recompute_task_failures_total`)."""

    def run(
        request: RecomputeRequest,
        task_id: str,
        progress: Callable[[Progress], None],
        stop: threading.Event,
        resume: Resume,
    ) -> int:
        # Counts are cumulative over a task's runs: a resumed task's earlier runs are not counted
        # again by this process.
        counted = resume.signals_written

        def counting(p: Progress) -> None:
            nonlocal counted
            if p.signals_written > counted:
                metrics.recompute_signals.inc(p.signals_written - counted)
                counted = p.signals_written
            progress(p)

        try:
            written = runner(request, task_id, counting, stop, resume)
        except Exception:
            metrics.recompute_task_failures.inc()
            raise
        if written > counted:
            metrics.recompute_signals.inc(written - counted)
        return written

    return run
