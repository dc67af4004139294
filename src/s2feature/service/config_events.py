"""The `cfg:events` reader: turns messages of that Redis stream into reload triggers (SPEC §9).

Every instance sees every message: a plain `XREAD` from the last ID this reader saw, no consumer
group. A message's content is ignored; it only says "the config may have changed". The reader
runs on a thread of its own because a Redis client may retry a failed call for seconds, and the
config watcher's safety-net poll must go on meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Final

from s2feature.streams.client import AnyRedis

log = logging.getLogger(__name__)

EVENTS_STREAM: Final = "cfg:events"
BLOCK_MS: Final = 500  # one blocked XREAD; bounds how long stop() waits for it
_RETRY_S: Final = 1.0  # pause after a failed Redis call or an unexpected error


class ConfigEventsReader:
    """Calls `on_trigger` (from its own thread) after new `cfg:events` messages, and once when
    Redis answers again after an outage, since a change may have been announced while no message
    could be written. Several messages read at once make one call."""

    def __init__(
        self, redis: AnyRedis, on_trigger: Callable[[], None], stream: str = EVENTS_STREAM
    ) -> None:
        self._redis = redis
        self._on_trigger = on_trigger
        self._stream = stream
        self._last_id: str | None = None  # None: not known yet (Redis not reached)
        self._positioned = threading.Event()
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s2-config-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_positioned(self, timeout: float) -> bool:
        """Wait until the stream's last ID is known (messages after it are triggers); whether it
        is. Taking it before a load means a message written during that load is not missed."""
        return self._positioned.wait(timeout)

    def stop(self, timeout: float) -> None:
        """Stop and join. A read stuck in the Redis client's own retries against a dead server
        may outlive `timeout`; the daemon thread then ends after it and triggers nothing."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._read() and not self._stop.is_set():
                    self._on_trigger()
            except Exception:  # a bug must not end the triggers for the life of the process
                log.exception(
                    "config events reader error; carrying on",
                    extra={"event": "config_watch_error"},
                )
                self._stop.wait(_RETRY_S)

    def _read(self) -> bool:
        """One Redis call; whether a reload is due (new messages, or Redis reached again)."""
        try:
            if self._last_id is None:
                newest: Any = self._redis.xrevrange(self._stream, count=1)
                self._last_id = _decode(newest[0][0]) if newest else "0-0"
                self._positioned.set()
                return self._succeeded()
            reply: Any = self._redis.xread({self._stream: self._last_id}, count=100, block=BLOCK_MS)
        except Exception as exc:
            self._failed(exc)
            self._stop.wait(_RETRY_S)
            return False
        recovered = self._succeeded()
        entries = _stream_entries(reply)
        if entries:
            self._last_id = _decode(entries[-1][0])
        return bool(entries) or recovered

    def _failed(self, exc: Exception) -> None:
        if not self._failing:  # once per outage, not once per read
            log.warning(
                "cannot read %s: %s; the config poll still reloads the config",
                self._stream,
                exc,
                extra={"event": "config_events_unavailable", "error": str(exc)},
            )
        self._failing = True

    def _succeeded(self) -> bool:
        """Record a successful Redis call; whether it ends an outage."""
        recovered = self._failing
        if recovered:
            log.info("reading %s again", self._stream, extra={"event": "config_events_available"})
        self._failing = False
        return recovered


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_entries(reply: Any) -> list[Any]:
    """The entries of the one stream read, from a RESP2 (list) or RESP3 (dict) XREAD reply."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [entry for entries in reply.values() for entry in entries]
    return [entry for _key, entries in reply for entry in entries]
