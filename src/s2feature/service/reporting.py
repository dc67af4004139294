"""The loop's status value (`status.LoopStatus`), built between batches and published whole.

Lag comes from the workers' state (no I/O). Backlog and pending cost one `XINFO GROUPS` per
stream (all of them in one pipeline), so they are refreshed at most once per `refresh_s`; a
failure to refresh keeps the last figures (the failure itself shows in the Redis dependency
status).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import redis
from redis.exceptions import RedisClusterException

from s2feature.service.ownership import Ownership
from s2feature.service.retry import Backoff
from s2feature.service.status import DependencyStatus, LoopStatus, Published, StreamStatus
from s2feature.service.worker import SeriesWorker

MIN_INTERVAL_S: Final = 0.1


def consumer_of(token: str | None) -> str | None:
    """The consumer name in a lease token `<random>@<consumer>`."""
    if token is None:
        return None
    return token.partition("@")[2] or token


class StatusReporter:
    def __init__(
        self,
        workers: Mapping[str, SeriesWorker],
        ownership: Ownership,
        backoff: Backoff,
        consumer: str,
        group: str,
        published: Published[LoopStatus],
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.workers = workers
        self.ownership = ownership
        self.backoff = backoff
        self.consumer = consumer
        self.group = group
        self.published = published
        self.refresh_s = refresh_s
        self.clock = clock
        self._counts: dict[str, tuple[int | None, int | None]] = {}  # key -> (backlog, pending)
        self._counted_at = -float("inf")
        self._published_at = -float("inf")

    def publish(
        self, started: bool, batches: int, waiting_for: str | None = None, force: bool = True
    ) -> None:
        """Publish a new status value; unless `force`, at most every `MIN_INTERVAL_S` (the loop
        calls this after every batch, and readers need no finer grain)."""
        now = self.clock()
        if not force and now - self._published_at < MIN_INTERVAL_S:
            return
        self._published_at = now
        if now - self._counted_at >= self.refresh_s and started:
            self._counted_at = now
            self._refresh_counts()
        streams = {}
        for key, worker in self.workers.items():
            owned = key in self.ownership.owned
            owner = self.consumer if owned else consumer_of(self.ownership.holders.get(key))
            event_ms = worker.last_event_ms if owned else None
            backlog, pending = self._counts.get(key, (None, None))
            failure = worker.io.read_failure
            reads = DependencyStatus()
            if failure is not None:
                reads = DependencyStatus(
                    ok=False,
                    # the failure's start, from the monotonic clock to wall-clock time
                    failing_since=now - max(0.0, time.monotonic() - failure.since),
                    last_error=failure.last_error,
                    where=failure.node,
                )
            streams[worker.series.symbol] = StreamStatus(
                owner=owner,
                owned=owned,
                lag_ms=None if event_ms is None else max(0, int(now * 1000) - event_ms),
                last_event_ms=event_ms,
                backlog=backlog,
                pending=pending,
                reads=reads,
            )
        self.published.set(
            LoopStatus(
                started=started,
                updated_at=now,
                batches=batches,
                redis=self.backoff.status_of("redis"),
                store=self.backoff.status_of("store"),
                streams=streams,
                waiting_for=waiting_for,
            )
        )

    def _refresh_counts(self) -> None:
        """Backlog and pending of every stream: one pipeline of `XINFO GROUPS` (a hundred
        streams read one after the other held the loop for tens of milliseconds)."""
        keys = list(self.workers)
        if not keys:
            return
        try:
            pipe = self.workers[keys[0]].io.client.pipeline(transaction=False)
            for key in keys:
                pipe.xinfo_groups(key)
            replies: list[Any] = pipe.execute(raise_on_error=False)
        except (redis.RedisError, RedisClusterException):
            return  # keep the last figures; the loop's own calls report the failure
        for key, groups in zip(keys, replies, strict=True):
            if isinstance(groups, Exception):
                continue
            for group in groups:
                name = group.get("name")
                if isinstance(name, bytes):
                    name = name.decode()
                if name != self.group:
                    continue
                pending = group.get("pending")
                lag = group.get("lag")  # entries not yet delivered to the group (None: unknown)
                backlog = None if lag is None or pending is None else int(lag) + int(pending)
                self._counts[key] = (backlog, None if pending is None else int(pending))
