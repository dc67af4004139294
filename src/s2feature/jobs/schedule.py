"""A small scheduler of periodic jobs: due times in UTC, a missed run caught up once at start,
and each run done once across instances through a Redis lock.

A job is registered as `(name, rule, callable)`: `Every(HOUR_MS)` is due at every full hour,
`Every(DAY_MS, 5 * MINUTE_MS)` at 00:05 UTC each day. The callable gets the `Due` run (its time,
and `claim` for locks finer than the whole run).

- **Catch-up.** At start each job's most recent due time is taken as pending: a run missed while
  the service was down is done once, not once per missed period (and never several times).
- **Once across instances.** Before a run, the lock `feat:lock:<name>:<due, UTC>` is set with
  `SET NX PX <period>` on Redis; the instance that set it runs the job, the others skip that run.
  The key is a single key in S2's own `feat:*` key space, so it works on Redis Cluster and with
  the service's ACL user. A job that locks per part (the hourly recompute locks each symbol)
  is registered with `once=False` and claims its parts through `Due.claim`. A restart within the
  period finds its lock taken and does not run the job again.
- **Failures.** A lock that cannot be set (Redis unreachable) or a job that raises `RetryLater`
  is retried every `retry_s` until the next due time replaces it. Any other exception of a job is
  logged; that run is over.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from redis.exceptions import RedisError

from s2feature.streams.client import AnyRedis

__all__ = [
    "HOUR_MS",
    "MINUTE_MS",
    "Due",
    "Every",
    "RedisRunLock",
    "RetryLater",
    "RunLock",
    "Scheduler",
    "lock_key",
]

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
LOCK_PREFIX = "feat:lock:"
_MAX_SLEEP_S = 30.0  # re-read the clock at least this often (a wall clock may jump)


@dataclass(frozen=True)
class Every:
    """Due at `offset_ms + k * period_ms` ms since the epoch, i.e. at fixed UTC times."""

    period_ms: int
    offset_ms: int = 0

    def __post_init__(self) -> None:
        if self.period_ms <= 0 or not 0 <= self.offset_ms < self.period_ms:
            raise ValueError(f"need period > 0 and 0 <= offset < period, got {self}")

    def last_due(self, now_ms: int) -> int:
        """The latest due time at or before `now_ms`."""
        return (now_ms - self.offset_ms) // self.period_ms * self.period_ms + self.offset_ms

    def next_due(self, now_ms: int) -> int:
        """The first due time after `now_ms`."""
        return self.last_due(now_ms) + self.period_ms


def utc_stamp(epoch_ms: int) -> str:
    """`20250105T1400Z`: a due time in lock keys and logs."""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y%m%dT%H%MZ")


def lock_key(name: str, due_ms: int) -> str:
    """The Redis key of one run's lock (`name` may carry a part: `recompute:BTCUSDT`)."""
    return f"{LOCK_PREFIX}{name}:{utc_stamp(due_ms)}"


class RunLock(Protocol):
    """Claims a run; True for the one claimant that runs it (and again for that claimant)."""

    def claim(self, key: str, ttl_ms: int) -> bool: ...


class RedisRunLock:
    """A run lock in Redis: `SET key <owner> NX PX ttl`; the owner that set it may claim it
    again (a run retried by the same process). `owner` is unique per process."""

    def __init__(self, client: AnyRedis, owner: str = "") -> None:
        self._client = client
        self.owner = f"{owner or 's2'}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def claim(self, key: str, ttl_ms: int) -> bool:
        if self._client.set(key, self.owner, nx=True, px=ttl_ms):
            return True
        holder = self._client.get(key)
        holder_text = holder.decode() if isinstance(holder, bytes) else holder
        return bool(holder_text == self.owner)


class RetryLater(Exception):  # noqa: N818 - a signal to the scheduler, not an error
    """Raised by a job that cannot run yet (e.g. the service is still starting)."""


@dataclass(frozen=True)
class Due:
    """One run of a job: its due time, and `claim(part)` to lock a part of it across instances
    (True: this instance does that part)."""

    job: str
    at_ms: int
    period_ms: int
    lock: RunLock | None

    def claim(self, part: str) -> bool:
        if self.lock is None:
            return True
        return self.lock.claim(lock_key(f"{self.job}:{part}", self.at_ms), self.period_ms)


JobFunction = Callable[[Due], None]


@dataclass
class _Job:
    name: str
    rule: Every
    run: JobFunction
    once: bool
    pending: int | None = None  # due time of the run to do
    retry_at_ms: int = 0
    next_ms: int = 0  # the next due time to watch for


class Scheduler:
    """Runs the registered jobs on a thread of its own (`scheduler`) from `start()` to `stop()`.

    `lock` makes runs once across instances (None: every instance runs every job); `clock`
    gives epoch seconds. `run_pending` is one step of the thread, usable without it.
    """

    def __init__(
        self,
        lock: RunLock | None,
        *,
        clock: Callable[[], float] = time.time,
        retry_s: float = 30.0,
    ) -> None:
        self._lock = lock
        self._clock = clock
        self._retry_ms = int(retry_s * 1000)
        self._jobs: list[_Job] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False

    def register(self, name: str, rule: Every, run: JobFunction, *, once: bool = True) -> None:
        """Add a job; `once=False` leaves the locking to the job (`Due.claim`)."""
        if self._started:
            raise RuntimeError("register jobs before the scheduler starts")
        if any(job.name == name for job in self._jobs):
            raise ValueError(f"a job named {name!r} is registered already")
        self._jobs.append(_Job(name, rule, run, once))

    @property
    def jobs(self) -> list[str]:
        return [job.name for job in self._jobs]

    def catch_up(self) -> None:
        """Mark each job's most recent due time pending (done once, at start)."""
        now = self._now_ms()
        for job in self._jobs:
            job.pending = job.rule.last_due(now)
            job.next_ms = job.rule.next_due(now)
        self._started = True

    def start(self) -> None:
        """Catch up and start the thread."""
        if self._thread is not None:
            return
        self.catch_up()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (a running job finishes first, within `timeout_s`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.run_pending())

    def run_pending(self) -> float:
        """Run what is due now; the seconds until something may be due again."""
        if not self._started:
            self.catch_up()
        now = self._now_ms()
        wake = now + int(_MAX_SLEEP_S * 1000)
        for job in self._jobs:
            if now >= job.next_ms:
                # Periods missed while busy collapse into their latest due time.
                job.pending, job.retry_at_ms = job.rule.last_due(now), 0
                job.next_ms = job.rule.next_due(now)
            if job.pending is not None and now >= job.retry_at_ms:
                self._fire(job, job.pending, now)
            wake = min(wake, job.next_ms)
            if job.pending is not None:
                wake = min(wake, job.retry_at_ms)
        return max(0.0, (wake - self._now_ms()) / 1000)

    def _claimed(self, job: _Job, due_ms: int) -> bool:
        """Whether this instance does the run (a job with `once=False` locks its own parts)."""
        if not job.once or self._lock is None:
            return True
        return self._lock.claim(lock_key(job.name, due_ms), job.rule.period_ms)

    def _fire(self, job: _Job, due_ms: int, now: int) -> None:
        context = {"job": job.name, "due": utc_stamp(due_ms)}
        try:
            if not self._claimed(job, due_ms):
                log.info(
                    "%s due %s: run by another instance",
                    job.name,
                    context["due"],
                    extra={"event": "job_skipped", **context},
                )
                job.pending = None
                return
            log.info(
                "%s due %s: running",
                job.name,
                context["due"],
                extra={"event": "job_run", **context},
            )
            job.run(Due(job.name, due_ms, job.rule.period_ms, self._lock))
        except (RetryLater, RedisError, OSError) as exc:
            job.retry_at_ms = now + self._retry_ms
            log.warning(
                "%s due %s: retried in %.0f s: %s",
                job.name,
                context["due"],
                self._retry_ms / 1000,
                exc,
                extra={"event": "job_retry", **context},
            )
            return
        except Exception:
            log.exception(
                "%s due %s failed",
                job.name,
                context["due"],
                extra={"event": "job_failed", **context},
            )
        job.pending = None
