"""Which input streams this consumer owns: their leases taken, renewed, lost and released.

A stream is consumed only while this consumer holds its lease (`streams/lease.py`): a second
instance configured with the same symbol waits instead of splitting the stream's entries, and
takes over, with the entries the first left pending, when the first stops or its lease expires.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from functools import partial

import redis
from redis.exceptions import RedisClusterException

from s2feature.service.retry import Backoff
from s2feature.service.worker import SeriesWorker
from s2feature.streams.lease import LeaseLost, renew_all

log = logging.getLogger("s2feature.service")


class Ownership:
    """The leases of the configured streams. `on_taken` runs when a lease is taken (restore the
    stream's state and drain what its earlier owners left pending)."""

    def __init__(
        self,
        workers: Mapping[str, SeriesWorker],
        backoff: Backoff,
        lease_ttl_ms: int,
        on_taken: Callable[[SeriesWorker], None],
    ) -> None:
        self.workers = workers
        self.backoff = backoff
        self.on_taken = on_taken
        self.owned: set[str] = set()  # stream keys whose lease this consumer holds
        self.holders: dict[str, str | None] = {}  # stream key -> holder seen when not owned
        self._period_s = lease_ttl_ms / 3000  # renew 3 times per TTL
        self._checked_at = -math.inf

    def owned_workers(self) -> list[SeriesWorker]:
        return [w for key, w in self.workers.items() if key in self.owned]

    def keep(self, force: bool = False) -> None:
        """Renew the leases this consumer holds and try to take the others, at most three times
        per lease TTL (or now, with `force`)."""
        if not self.due(force):
            return
        self.renew_owned()
        for key, worker in self.workers.items():
            if key in self.owned:
                continue
            lease = worker.io.lease
            if self.backoff.call("acquire lease", lease.acquire):
                self.owned.add(key)
                self.holders.pop(key, None)
                log.info(
                    "%s: lease taken",
                    worker.series.symbol,
                    extra={"event": "lease_taken", "symbol": worker.series.symbol},
                )
                self.on_taken(worker)
            else:
                holder = self.backoff.call("read lease", lease.holder)
                self.holders[key] = holder
                log.warning(
                    "%s: owned by consumer %s; waiting (at most %d ms after it stops renewing)",
                    worker.series.symbol,
                    holder,
                    lease.ttl_ms,
                    extra={"event": "lease_waiting", "symbol": worker.series.symbol},
                )

    def due(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._checked_at < self._period_s:
            return False
        self._checked_at = now
        return True

    def renew_owned(self) -> None:
        owned = self.owned_workers()
        renew = partial(renew_all, [worker.io.lease for worker in owned])
        for worker, kept in zip(owned, self.backoff.call("renew lease", renew), strict=True):
            if not kept:
                self.lose(worker, "its lease expired or was taken")

    def lose(self, worker: SeriesWorker, why: str) -> None:
        log.error(
            "%s: no longer owned by this consumer (%s); its state is dropped and its unacked "
            "entries are left to the owner",
            worker.series.symbol,
            why,
            extra={"event": "lease_lost", "symbol": worker.series.symbol},
        )
        self.owned.discard(worker.io.key)
        worker.forget()

    def guarded(self, worker: SeriesWorker, step: Callable[[], int]) -> int:
        """Run a step of an owned stream; a checkpoint refused by the lease fence ends the
        ownership instead of the service."""
        try:
            return step()
        except LeaseLost as exc:
            self.lose(worker, str(exc))
            return 0

    def release_all(self) -> None:
        """Hand the streams over at once on exit (best effort: an unreachable Redis lets the
        leases expire instead)."""
        for worker in self.owned_workers():
            try:
                worker.io.lease.release()
            except (redis.RedisError, RedisClusterException) as exc:
                log.warning("%s: lease not released (%s)", worker.series.symbol, exc)
        self.owned.clear()
