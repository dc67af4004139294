"""Retry with capped exponential backoff and jitter, for the transient failures of Redis and the
store. A call is retried until it succeeds, fails for good, or shutdown is requested.

The retrier also remembers which dependency is failing and since when: the status the loop
publishes (and `/health`) reads it, and `on_retry` lets the loop publish it while it waits.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Literal, TypeVar

import redis
from redis.exceptions import RedisClusterException

from s2feature.service.status import DependencyStatus
from s2feature.store.base import StoreUnavailable
from s2feature.streams.client import is_retryable

log = logging.getLogger("s2feature.service")
T = TypeVar("T")
Dependency = Literal["redis", "store"]


class Abandoned(Exception):  # noqa: N818 - control flow, not an error
    """Shutdown was requested while a call was still being retried."""


class Backoff:
    """Retries `fn` while it fails transiently: delays `base_s * 2**attempt`, capped at `cap_s`,
    each scaled by a random factor in [0.5, 1] so that instances do not retry in step."""

    def __init__(
        self,
        stop: threading.Event,
        base_s: float = 0.05,
        cap_s: float = 5.0,
        on_retry: Callable[[], None] | None = None,
        on_failure: Callable[[Dependency], None] | None = None,
    ) -> None:
        """`on_retry` runs before each wait, `on_failure` (metrics) with the failing
        dependency."""
        self.stop = stop
        self.base_s = base_s
        self.cap_s = cap_s
        self.on_retry = on_retry
        self.on_failure = on_failure
        self.failing: dict[Dependency, DependencyStatus] = {}

    def call(self, what: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                result = fn()
            except (StoreUnavailable, redis.RedisError, RedisClusterException) as exc:
                if not isinstance(exc, StoreUnavailable) and not is_retryable(exc):
                    raise
                attempt += 1
                dependency = self._record(exc)
                if self.on_failure is not None:
                    self.on_failure(dependency)
                delay = min(self.cap_s, self.base_s * 2**attempt) * random.uniform(0.5, 1.0)
                log.warning(
                    "retry %s after %s (attempt %d, %.2f s)",
                    what,
                    exc,
                    attempt,
                    delay,
                    extra={
                        "event": "retry",
                        "what": what,
                        "dependency": dependency,
                        "attempt": attempt,
                        "delay_s": round(delay, 3),
                        "error": str(exc),
                    },
                )
                if self.on_retry is not None:
                    self.on_retry()
                if self.stop.wait(delay):
                    raise Abandoned(what) from exc
            else:
                if self.failing:
                    # Calls run one at a time, each retried until it succeeds: a success means
                    # what the earlier calls waited for has recovered.
                    self.failing = {}
                return result

    def _record(self, exc: BaseException) -> Dependency:
        dependency: Dependency = "store" if isinstance(exc, StoreUnavailable) else "redis"
        before = self.failing.get(dependency)
        since = before.failing_since if before is not None else time.time()
        self.failing = {
            **self.failing,
            dependency: DependencyStatus(ok=False, failing_since=since, last_error=str(exc)),
        }
        return dependency

    def status_of(self, dependency: Dependency) -> DependencyStatus:
        return self.failing.get(dependency) or DependencyStatus()
