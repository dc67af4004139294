"""The config watcher (SPEC §9): keeps the active config bundle, hot-reloaded, in a holder.

A watcher thread, owned by the service, that
- loads the bundle at start from the first configured source: the config service
  (`ConfigSourceSettings.url`, `GET <url>/active`), else a bundle file, else the built-in defaults;
- loads it again on every message of the Redis stream `cfg:events` (a plain `XREAD` from the last
  seen entry ID, so every instance sees every message; the content of a message is ignored, it is
  only a trigger), and on a safety-net poll every `poll_s` seconds;
- validates each bundle (JSON, schema, then the caller's `validate`) before it replaces the active
  one, and publishes it whole, so the loop reads one `ActiveBundle` per batch;
- publishes a `ConfigStatus` after every attempt, for `/health`.

A second thread (`config_events.ConfigEventsReader`) only reads `cfg:events` and wakes the first:
a Redis client may retry a failed call for seconds, and the poll must not wait for it.

Decisions:
- A bundle is applied when its content differs from the active one in any way, `rev` included. A
  different content under the same rev is applied too (with a warning): the content decides.
- Only bundles from the config service are cached on disk; the cache stands in for the service
  when it is unreachable at start (source "cache"). A file source is itself on disk.
- `stale`: the configured source (service or file) has not delivered a usable bundle (or a 304 for
  the active one) for more than `STALE_POLLS` poll intervals; a source that keeps serving a
  refused bundle is stale too, since the service does not run what the source says.
- While no bundle is active, or the active one comes from the cache, a failed attempt is retried
  with a doubling backoff capped at `min(poll_s, MAX_RETRY_S)`; otherwise the poll period applies.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from s2feature.config.bundle import BundleError, ConfigBundle, bundle_changes
from s2feature.config.overrides import BundleOverrides
from s2feature.config_source.cache import BundleCache, CachedBundle, CacheError
from s2feature.config_source.files import load_bundle
from s2feature.config_source.remote import (
    ActiveBundleClient,
    ConfigFetchError,
    check_base_url,
    display_url,
)
from s2feature.service.config_events import EVENTS_STREAM, ConfigEventsReader
from s2feature.service.status import ConfigSource, ConfigStatus, Published
from s2feature.streams.client import AnyRedis

log = logging.getLogger(__name__)

STALE_POLLS: Final = 3
MAX_RETRY_S: Final = 30.0
FIRST_RETRY_S: Final = 0.5
_FIRST_ID_WAIT_S: Final = 2.0  # how long the first load waits for the stream's last ID
_ERROR_PAUSE_S: Final = 1.0  # after an unexpected error, so a persistent one does not spin
_POLL_JITTER: Final = 0.1  # instances started together do not poll together


@dataclass(frozen=True)
class ConfigSourceSettings:
    """Where bundles come from and how often they are checked.

    url: base URL of the config service (`GET <url>/active`); None: no service.
    file: a bundle file (JSON/YAML), used when `url` is None; neither: the built-in defaults.
    poll_s: safety-net poll period in seconds, beside the `cfg:events` triggers.
    cache_path: where the last good bundle from the service is kept.
    timeout_s: bound on one whole `GET /active` exchange.
    overrides: the `S2_DQC_*`/`S2_REGIME_*` values merged over every bundle from any source
    (`config/overrides.py`); the cache keeps the source's bundle, without them.
    """

    url: str | None = field(default=None, repr=False)  # may hold credentials: see __repr__
    file: Path | None = None
    poll_s: float = 30.0
    cache_path: Path = Path("data/config-cache.json")
    timeout_s: float = 5.0
    overrides: BundleOverrides = field(default_factory=BundleOverrides)

    def __post_init__(self) -> None:
        if self.url is not None:
            check_base_url(self.url)
        for name in ("poll_s", "timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"config {name} must be a positive number of seconds, got {value}")

    def __repr__(self) -> str:
        url = display_url(self.url) if self.url is not None else None
        return (
            f"ConfigSourceSettings(url={url!r}, file={self.file!r}, poll_s={self.poll_s!r}, "
            f"cache_path={self.cache_path!r}, timeout_s={self.timeout_s!r}, "
            f"overrides={self.overrides!r})"
        )

    @property
    def source(self) -> ConfigSource:
        """The configured source: "url", "file" or "defaults"."""
        if self.url is not None:
            return "url"
        return "file" if self.file is not None else "defaults"


@dataclass(frozen=True)
class ActiveBundle:
    """The bundle the service runs on, how it was obtained and when (wall-clock epoch seconds).

    A new value is published when the bundle changes, and also when only its source changes (the
    service answers again after a start on the cache): compare `bundle`, not the holder value,
    to decide what to rebuild.
    """

    bundle: ConfigBundle
    source: ConfigSource
    fetched_at: float


class _RejectedError(Exception):
    """An attempt that produced no usable bundle; `str()` is the one-line reason."""


class ConfigWatcher:
    """Keeps `active` (the bundle, or None before any was approved) and `status` up to date.

    `validate` is the caller's extra check: it raises (any exception; its message is the
    reason) to refuse a bundle the schema accepts but the service cannot run (e.g. another
    `base_interval`). `redis` may be a standalone or a cluster client; it is used only for
    `cfg:events`. Its threads never die on an error: they log it and carry on. A watcher is
    started once.
    """

    def __init__(
        self,
        settings: ConfigSourceSettings,
        redis: AnyRedis,
        validate: Callable[[ConfigBundle], None] = lambda bundle: None,
        *,
        active: Published[ActiveBundle | None] | None = None,
        status: Published[ConfigStatus] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.active: Published[ActiveBundle | None] = (
            active if active is not None else Published(None)
        )
        self.status: Published[ConfigStatus] = (
            status if status is not None else Published(ConfigStatus())
        )
        self._redis = redis
        self._validate = validate
        self._clock = clock
        self._client = (
            ActiveBundleClient(settings.url, settings.timeout_s)
            if settings.url is not None
            else None
        )
        self._cache = BundleCache(settings.cache_path)
        self._etag: str | None = None  # the service's ETag for the active bundle
        self._fetched: ConfigBundle | None = None  # the service's last bundle, before overrides
        self._rejected = 0
        self._last_error: str | None = None
        self._last_success_at: float | None = None
        self._started_at = clock()
        self._retry_s = FIRST_RETRY_S
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by the reader on a cfg:events message
        self._events = ConfigEventsReader(redis, on_trigger=self._wake.set)
        self._thread = threading.Thread(target=self._run, name="s2-config-watch", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the threads; the first load happens on the watcher thread (see `wait_ready`)."""
        self._events.start()
        self._started_at = self._clock()
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both threads and join them.

        The watcher thread ends at once, the `cfg:events` reader after its current read (see
        `ConfigEventsReader.stop`).
        """
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._events.stop(timeout)

    def wait_ready(self, timeout: float) -> ActiveBundle | None:
        """The active bundle once there is one, or None if none was approved within `timeout`."""
        return self.active.wait_for(lambda value: value is not None, timeout)

    @property
    def alive(self) -> bool:
        """Whether the watcher thread runs (it only ends on `stop`)."""
        return self._thread.is_alive()

    # -- the watcher thread: loads ------------------------------------------------------------

    def _run(self) -> None:
        # The reader takes the stream's last ID before the first load, so a change announced
        # while the first load runs still triggers another one. Redis being down must not delay
        # the first load for long: the reader then triggers a reload once it reaches Redis.
        self._events.wait_positioned(_FIRST_ID_WAIT_S)
        next_check: float | None = None  # None: the first load is still to come
        while not self._stop.is_set():
            try:
                if next_check is None:
                    next_check = time.monotonic()  # a failing first load is retried as a poll
                    next_check = self._attempt("start")
                else:
                    next_check = self._wait_and_attempt(next_check)
            except Exception:  # a bug must not end hot reload for the life of the process
                log.exception(
                    "config watcher error; carrying on", extra={"event": "config_watch_error"}
                )
                self._stop.wait(_ERROR_PAUSE_S)

    def _wait_and_attempt(self, next_check: float) -> float:
        """Wait for a `cfg:events` trigger or the next scheduled check, then attempt a load.

        Returns the monotonic time of the next scheduled check."""
        triggered = self._wake.wait(max(0.0, next_check - time.monotonic()))
        if self._stop.is_set():
            return next_check
        if triggered:
            self._wake.clear()  # messages arriving during the load below set it again
            return self._attempt(EVENTS_STREAM)
        if time.monotonic() >= next_check:
            return self._attempt("poll")
        return next_check

    # -- one load attempt ----------------------------------------------------------------------

    def _attempt(self, trigger: str) -> float:
        """Load from the configured source once and publish the outcome; the next check time."""
        now = self._clock()
        try:
            candidate = self._load()
        except _RejectedError as rejected:
            self._reject(str(rejected), trigger)
        else:
            self._last_success_at = now
            self._last_error = None
            self._retry_s = FIRST_RETRY_S
            if candidate is not None:
                self._apply(candidate, self.settings.source, now, trigger)
        if self.active.get() is None and self._client is not None:
            self._fall_back_to_cache(trigger)
        self._publish_status()
        return time.monotonic() + self._delay()

    def _load(self) -> ConfigBundle | None:
        """A validated bundle from the configured source; None: unchanged (HTTP 304)."""
        if self._client is not None:
            current = self.active.get()
            etag = self._etag if current is not None and current.source == "url" else None
            try:
                fetched = self._client.fetch(etag)
            except ConfigFetchError as exc:
                raise _RejectedError(str(exc)) from None
            if fetched is None:
                return None
            bundle = self._overridden(fetched.bundle)
            self._check(bundle)
            self._etag = fetched.etag
            self._fetched = fetched.bundle
            return bundle
        if self.settings.file is not None:
            try:
                bundle = load_bundle(self.settings.file)
            except BundleError as exc:
                raise _RejectedError(" ".join(str(exc).split())) from None
        else:
            bundle = ConfigBundle()
        bundle = self._overridden(bundle)
        self._check(bundle)
        return bundle

    def _overridden(self, bundle: ConfigBundle) -> ConfigBundle:
        """The bundle with the environment's overrides merged in; refused when the merge does
        not validate (e.g. an `S2_REGIME_FROZEN_BELOW` above the bundle's `extreme_above`)."""
        try:
            return self.settings.overrides.apply(bundle)
        except BundleError as exc:
            reason = " ".join(str(exc).split())
            raise _RejectedError(
                f"bundle {bundle.rev} refused with the S2_DQC_*/S2_REGIME_* overrides: {reason}"
            ) from None

    def _check(self, bundle: ConfigBundle) -> None:
        try:
            self._validate(bundle)
        except Exception as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise _RejectedError(f"bundle {bundle.rev} refused: {reason}") from None

    def _apply(self, bundle: ConfigBundle, source: ConfigSource, now: float, trigger: str) -> None:
        current = self.active.get()
        if current is not None and current.bundle == bundle:
            if current.source != source:
                self.active.set(ActiveBundle(bundle, source, now))
                self._write_cache(bundle, source, now)
                log.info(
                    "config source %s answers again with the active bundle %s",
                    source,
                    bundle.rev,
                    extra={"event": "config_source_restored", "rev": bundle.rev, "source": source},
                )
            return
        old_rev = current.bundle.rev if current is not None else None
        changed = bundle_changes(current.bundle, bundle) if current is not None else []
        self.active.set(ActiveBundle(bundle, source, now))
        self._write_cache(bundle, source, now)
        if current is not None and old_rev == bundle.rev:
            log.warning(
                "config rev %s reused for a different bundle; applied",
                bundle.rev,
                extra={"event": "config_rev_reused", "rev": bundle.rev, "changed": changed},
            )
        log.info(
            "config applied: rev %s -> %s from %s (%s), changed: %s",
            old_rev,
            bundle.rev,
            source,
            trigger,
            ", ".join(changed) or "-",
            extra={
                "event": "config_applied",
                "old_rev": old_rev,
                "new_rev": bundle.rev,
                "changed": changed,
                "source": source,
                "trigger": trigger,
            },
        )

    def _reject(self, reason: str, trigger: str) -> None:
        self._rejected += 1
        self._last_error = reason
        current = self.active.get()
        kept = current.bundle.rev if current is not None else None
        log.warning(
            "config rejected (%s): %s; keeping rev %s",
            trigger,
            reason,
            kept,
            extra={
                "event": "config_rejected",
                "reason": reason,
                "kept_rev": kept,
                "trigger": trigger,
            },
        )

    def _fall_back_to_cache(self, trigger: str) -> None:
        try:
            cached = self._cache.read()
        except CacheError as exc:
            self._last_error = f"{self._last_error}; {exc}" if self._last_error else str(exc)
            log.error(str(exc), extra={"event": "config_cache_unusable", "reason": str(exc)})
            return
        if cached is None:
            return
        try:
            bundle = self._overridden(cached.bundle)
            self._validate(bundle)
        except Exception as exc:
            reason = f"cached bundle {cached.bundle.rev} refused: {' '.join(str(exc).split())}"
            self._last_error = f"{self._last_error}; {reason}" if self._last_error else reason
            log.error(reason, extra={"event": "config_cache_unusable", "reason": reason})
            return
        self.active.set(ActiveBundle(bundle, "cache", cached.fetched_at))
        log.warning(
            "config service unreachable; running on the cached bundle %s fetched at %s",
            bundle.rev,
            cached.fetched_at,
            extra={
                "event": "config_applied",
                "old_rev": None,
                "new_rev": bundle.rev,
                "changed": [],
                "source": "cache",
                "trigger": trigger,
            },
        )

    def _write_cache(self, bundle: ConfigBundle, source: ConfigSource, now: float) -> None:
        if source != "url" or self._client is None:
            return
        # The source's own bundle: overrides are merged on every read, so a cache never carries
        # the overrides of an earlier start.
        raw = self._fetched if self._fetched is not None else bundle
        try:
            self._cache.write(CachedBundle(raw, now, self._client.url))
        except CacheError as exc:
            # The bundle is applied all the same; only a later start without the service loses.
            log.error(str(exc), extra={"event": "config_cache_write_failed", "reason": str(exc)})

    def _delay(self) -> float:
        current = self.active.get()
        degraded = current is None or current.source == "cache"
        if degraded and self._last_error is not None:
            delay = min(self._retry_s, self.settings.poll_s, MAX_RETRY_S)
            self._retry_s = min(self._retry_s * 2, MAX_RETRY_S)
            return delay
        return self.settings.poll_s * (1 - _POLL_JITTER * random.random())

    def _publish_status(self) -> None:
        current = self.active.get()
        since = self._last_success_at if self._last_success_at is not None else self._started_at
        stale = (
            self.settings.source != "defaults"
            and self._clock() - since > STALE_POLLS * self.settings.poll_s
        )
        self.status.set(
            replace(
                self.status.get(),
                rev=current.bundle.rev if current is not None else None,
                source=current.source if current is not None else None,
                fetched_at=current.fetched_at if current is not None else None,
                last_success_at=self._last_success_at,
                last_error=self._last_error,
                rejected=self._rejected,
                stale=stale,
            )
        )
