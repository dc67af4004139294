"""The service's status as immutable values: published by the threads that know it (the consumer
loop after each batch, the config watcher after each fetch), read by `/health` and metrics.

Readers never call into the loop: they read the latest published value, which is replaced whole
(a reference assignment), so a reader sees one consistent value or the one before it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

ConfigSource = Literal["url", "cache", "file", "defaults"]
T = TypeVar("T")


@dataclass(frozen=True)
class DependencyStatus:
    """A dependency (Redis, the store) as last seen by the loop."""

    ok: bool = True
    failing_since: float | None = None  # wall-clock epoch seconds of the first failure in a row
    last_error: str | None = None
    where: str | None = None  # what could not be reached (a node address), when known


@dataclass(frozen=True)
class StreamStatus:
    """One input stream as last seen by the loop."""

    owner: str | None = None  # consumer holding the stream's lease (None: unknown or free)
    owned: bool = False  # whether this instance holds it
    lag_ms: int | None = None  # now minus the event time of the last applied event
    last_event_ms: int | None = None  # event time of the last applied event
    backlog: int | None = None  # entries not yet read by the group plus pending
    pending: int | None = None  # entries delivered and not yet acked
    reads: DependencyStatus = field(default_factory=DependencyStatus)


@dataclass(frozen=True)
class ConfigStatus:
    """The active config bundle and how it was obtained."""

    rev: str | None = None  # None: no approved bundle yet
    source: ConfigSource | None = None
    fetched_at: float | None = None  # wall-clock epoch seconds the active bundle was obtained
    last_success_at: float | None = None  # last successful contact with the configured source
    last_error: str | None = None
    rejected: int = 0  # bundles refused (invalid, unreachable source) since start
    stale: bool = False  # the configured source has not answered for too long


@dataclass(frozen=True)
class LoopStatus:
    """What the consumer loop publishes after each batch (and while it waits or retries)."""

    started: bool = False  # the loop is consuming (config approved, groups created)
    updated_at: float = 0.0  # wall-clock epoch seconds of this value
    batches: int = 0
    redis: DependencyStatus = field(default_factory=DependencyStatus)
    store: DependencyStatus = field(default_factory=DependencyStatus)
    streams: dict[str, StreamStatus] = field(default_factory=dict)  # by symbol
    waiting_for: str | None = None  # why the loop is not consuming, when it is not


class Published(Generic[T]):
    """One published immutable value, replaced whole."""

    def __init__(self, initial: T) -> None:
        self._value = initial
        self._changed = threading.Condition()

    def get(self) -> T:
        return self._value

    def set(self, value: T) -> None:
        with self._changed:
            self._value = value
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[T], bool], timeout: float) -> T:
        """Wait until `predicate(value)` holds or `timeout` seconds passed; the value then."""
        with self._changed:
            self._changed.wait_for(lambda: predicate(self._value), timeout)
            return self._value
