"""The config watcher against a real config service on loopback and a real redis-server.

Every wait is a bounded poll on a published value (never a sleep followed by an assertion).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from s2feature.config.bundle import ConfigBundle
from s2feature.config_source.cache import BundleCache, CachedBundle
from s2feature.service.config_events import EVENTS_STREAM
from s2feature.service.config_watch import (
    ActiveBundle,
    ConfigSourceSettings,
    ConfigWatcher,
)
from s2feature.service.status import ConfigStatus
from tests.support.config_server import ConfigServer
from tests.support.redis_cluster import RedisClusterHarness
from tests.support.redis_servers import RedisServer, wait_for

NEVER_S = 3600.0  # a poll period no test waits for: only cfg:events messages trigger
R1: dict[str, Any] = {"rev": "r1", "liq_threshold_usdt": 2e6}
R2: dict[str, Any] = {"rev": "r2", "liq_threshold_usdt": 3e6, "windows": {"atr_period": 21}}

WatcherFactory = Callable[..., ConfigWatcher]


@pytest.fixture
def config_server() -> Iterator[ConfigServer]:
    with ConfigServer(R1) as server:
        yield server


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    return redis_server.client()


@pytest.fixture
def make_watcher(client: redis.Redis, tmp_path: Path) -> Iterator[WatcherFactory]:
    """Build and start watchers (cache under tmp_path); every one is stopped after the test."""
    started: list[ConfigWatcher] = []

    def make(
        validate: Callable[[ConfigBundle], None] = lambda bundle: None, **settings: Any
    ) -> ConfigWatcher:
        settings.setdefault("cache_path", tmp_path / "config-cache.json")
        settings.setdefault("poll_s", NEVER_S)
        watcher = ConfigWatcher(ConfigSourceSettings(**settings), client, validate)
        started.append(watcher)
        watcher.start()
        return watcher

    yield make
    for watcher in started:
        watcher.stop()
        assert not watcher.alive


def rev_of(watcher: ConfigWatcher) -> str | None:
    active = watcher.active.get()
    return active.bundle.rev if active is not None else None


def wait_status(
    watcher: ConfigWatcher, condition: Callable[[ConfigStatus], bool], what: str
) -> ConfigStatus:
    wait_for(lambda: condition(watcher.status.get()), timeout_s=30, what=what)
    return watcher.status.get()


def announce(client: redis.Redis) -> None:
    """A cfg:events message; its content does not matter."""
    client.xadd(EVENTS_STREAM, {"any": "thing"})


def ready(watcher: ConfigWatcher) -> ActiveBundle:
    active = watcher.wait_ready(30)
    assert active is not None, watcher.status.get()
    return active


def applied_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "config_applied"]


# -- start and the sources ---------------------------------------------------------------------


def test_start_publishes_the_service_bundle_and_caches_it(
    make_watcher: WatcherFactory, config_server: ConfigServer, tmp_path: Path
) -> None:
    watcher = make_watcher(url=config_server.url)
    active = ready(watcher)
    assert (active.bundle.rev, active.source) == ("r1", "url")
    assert active.bundle.liq_threshold_usdt == 2e6
    status = wait_status(watcher, lambda s: s.rev == "r1", "status r1")
    assert (status.source, status.last_error, status.rejected, status.stale) == (
        "url",
        None,
        0,
        False,
    )
    assert status.fetched_at == active.fetched_at
    cached = BundleCache(tmp_path / "config-cache.json").read()
    assert cached is not None
    assert cached.bundle == active.bundle
    assert cached.source == f"{config_server.url}/active"


def test_without_a_url_the_file_is_the_source_and_is_reloaded_on_cfg_events(
    make_watcher: WatcherFactory, client: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text("rev: f1\nliq_threshold_usdt: 5.0e+5\n")
    watcher = make_watcher(file=path)
    active = ready(watcher)
    assert (active.bundle.rev, active.source, active.bundle.liq_threshold_usdt) == (
        "f1",
        "file",
        5e5,
    )
    path.write_text("rev: f2\nliq_threshold_usdt: 6.0e+5\n")
    announce(client)
    wait_for(lambda: rev_of(watcher) == "f2", timeout_s=30, what="rev f2 from the file")
    reloaded = watcher.active.get()
    assert reloaded is not None
    assert (reloaded.bundle, reloaded.source) == (
        ConfigBundle(rev="f2", liq_threshold_usdt=6e5),
        "file",
    )
    assert reloaded.fetched_at >= active.fetched_at
    # A file source is not cached: the cache stands in for the config service only.
    assert not (tmp_path / "config-cache.json").exists()


def test_a_missing_file_at_start_publishes_nothing_until_it_appears(
    make_watcher: WatcherFactory, tmp_path: Path
) -> None:
    path = tmp_path / "later.json"
    watcher = make_watcher(file=path, poll_s=0.3)
    status = wait_status(watcher, lambda s: s.rejected >= 2, "retries without the file")
    assert status.last_error is not None
    assert "cannot read config bundle" in status.last_error
    assert watcher.active.get() is None
    path.write_text(json.dumps({"rev": "f1"}))
    assert ready(watcher).bundle.rev == "f1"


def test_neither_url_nor_file_is_the_built_in_defaults(make_watcher: WatcherFactory) -> None:
    active = ready(make_watcher())
    assert (active.bundle, active.source) == (ConfigBundle(), "defaults")


# -- reload triggers ---------------------------------------------------------------------------


def _cached_rev(cache: BundleCache) -> str | None:
    cached = cache.read()
    return None if cached is None else cached.bundle.rev


def test_a_new_rev_is_applied_on_a_cfg_events_message_and_logged_with_the_changes(
    make_watcher: WatcherFactory,
    config_server: ConfigServer,
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="s2feature.service.config_watch")
    watcher = make_watcher(url=config_server.url)
    ready(watcher)
    config_server.serve(R2)
    announce(client)
    wait_for(lambda: rev_of(watcher) == "r2", timeout_s=30, what="rev r2 applied")
    active = watcher.active.get()
    assert active is not None
    assert (active.bundle.windows.atr_period, active.bundle.liq_threshold_usdt) == (21, 3e6)
    # The bundle is published before its log line and cache file are written: wait for both.
    wait_for(lambda: len(applied_records(caplog)) >= 2, timeout_s=30, what="r2 logged")
    cache = BundleCache(watcher.settings.cache_path)
    wait_for(lambda: _cached_rev(cache) == "r2", timeout_s=30, what="r2 cached")
    records = applied_records(caplog)
    assert [(r.old_rev, r.new_rev) for r in records] == [(None, "r1"), ("r1", "r2")]  # type: ignore[attr-defined]
    assert records[-1].changed == ["windows.atr_period", "liq_threshold_usdt"]  # type: ignore[attr-defined]
    cached = BundleCache(watcher.settings.cache_path).read()
    assert cached is not None
    assert cached.bundle.rev == "r2"


def test_a_new_rev_is_applied_by_the_poll_without_any_message(
    make_watcher: WatcherFactory, config_server: ConfigServer
) -> None:
    watcher = make_watcher(url=config_server.url, poll_s=0.2)
    ready(watcher)
    config_server.serve(R2)
    wait_for(lambda: rev_of(watcher) == "r2", timeout_s=30, what="rev r2 by the poll")


def test_an_unchanged_bundle_is_a_304_and_keeps_the_published_value(
    make_watcher: WatcherFactory, config_server: ConfigServer, client: redis.Redis
) -> None:
    watcher = make_watcher(url=config_server.url)
    first = ready(watcher)
    announce(client)
    wait_for(lambda: config_server.answered(304) >= 1, timeout_s=30, what="a 304")
    assert config_server.requests[-1].if_none_match == config_server.etag_of(R1)
    wait_status(
        watcher,
        lambda s: s.last_success_at is not None and s.last_success_at > first.fetched_at,
        "the 304 counted as contact",
    )
    assert watcher.active.get() is first


def test_a_message_sent_during_the_first_fetch_triggers_another_fetch(
    make_watcher: WatcherFactory, config_server: ConfigServer, client: redis.Redis
) -> None:
    # The change is announced while the first fetch is in flight, after r1 was chosen to be
    # served: only reading cfg:events from the ID taken before the fetch sees that message.
    def announce_r2_once() -> None:
        config_server.on_request = None
        config_server.serve(R2)
        announce(client)

    config_server.on_request = announce_r2_once
    config_server.serve(R1)
    client.xadd(EVENTS_STREAM, {"old": "message"})  # before start: not a trigger
    watcher = make_watcher(url=config_server.url)
    wait_for(lambda: rev_of(watcher) == "r2", timeout_s=30, what="rev r2 after the racing event")


def test_messages_before_start_do_not_trigger_a_reload(
    make_watcher: WatcherFactory, config_server: ConfigServer, client: redis.Redis
) -> None:
    for _ in range(3):
        announce(client)
    watcher = make_watcher(url=config_server.url)
    ready(watcher)
    config_server.serve(R2)
    announce(client)  # the first message after start: exactly one more fetch
    wait_for(lambda: rev_of(watcher) == "r2", timeout_s=30, what="rev r2")
    assert len(config_server.requests) == 2


# -- invalid bundles ---------------------------------------------------------------------------


def _break(server: ConfigServer, kind: str) -> None:
    if kind == "http-500":
        server.break_with_status(500)
    elif kind == "bad-json":
        server.break_with_body(b'{"rev": "r3",')
    elif kind == "schema":
        server.break_with_body(json.dumps({"rev": "r3", "bounds": {"spread_bps_max": 0}}).encode())
    elif kind == "unknown-feature":
        server.break_with_body(json.dumps({"rev": "r3", "features": {"enabled": ["x"]}}).encode())
    elif kind == "timeout":
        server.hang()
    else:
        server.stop()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("http-500", "HTTP 500"),
        ("bad-json", "body is not JSON"),
        ("schema", "bounds.spread_bps_max"),
        ("unknown-feature", "unknown feature"),
        ("timeout", "no answer within 0.5 s"),
        ("server-stopped", "refused"),
    ],
)
def test_an_invalid_bundle_never_replaces_the_active_one(
    make_watcher: WatcherFactory,
    config_server: ConfigServer,
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    reason: str,
) -> None:
    watcher = make_watcher(url=config_server.url, timeout_s=0.5)
    first = ready(watcher)
    _break(config_server, kind)
    announce(client)
    status = wait_status(watcher, lambda s: s.rejected == 1, "one rejection")
    assert status.last_error is not None
    assert reason in status.last_error
    assert (status.rev, status.source) == ("r1", "url")
    assert watcher.active.get() is first
    rejected = [r for r in caplog.records if getattr(r, "event", None) == "config_rejected"]
    assert [(r.kept_rev, reason in r.reason) for r in rejected] == [("r1", True)]  # type: ignore[attr-defined]
    # The source mends: the next trigger applies its bundle and clears the error.
    if kind == "server-stopped":
        config_server.start()
    config_server.serve(R2)
    announce(client)
    wait_for(lambda: rev_of(watcher) == "r2", timeout_s=30, what="rev r2 after the repair")
    status = wait_status(watcher, lambda s: s.rev == "r2", "status r2")
    assert (status.last_error, status.rejected) == (None, 1)


def test_the_callers_check_refuses_a_bundle_the_schema_accepts(
    make_watcher: WatcherFactory, config_server: ConfigServer, client: redis.Redis
) -> None:
    def same_base_interval(bundle: ConfigBundle) -> None:
        if bundle.base_interval != "1m":
            raise ValueError(f"base_interval {bundle.base_interval} differs from the running 1m")

    watcher = make_watcher(same_base_interval, url=config_server.url)
    ready(watcher)
    config_server.serve({**R2, "base_interval": "5m"})
    announce(client)
    status = wait_status(watcher, lambda s: s.rejected == 1, "the refusal")
    assert status.last_error == "bundle r2 refused: base_interval 5m differs from the running 1m"
    assert rev_of(watcher) == "r1"
    cached = BundleCache(watcher.settings.cache_path).read()
    assert cached is not None
    assert cached.bundle.rev == "r1"  # a refused bundle is never cached


def test_an_invalid_file_never_replaces_the_active_bundle(
    make_watcher: WatcherFactory, client: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps({"rev": "f1"}))
    watcher = make_watcher(file=path)
    ready(watcher)
    path.write_text('{"rev": "f2", "liq_threshold_usdt": -5}')
    announce(client)
    status = wait_status(watcher, lambda s: s.rejected == 1, "the file rejected")
    assert status.last_error is not None
    assert "liq_threshold_usdt" in status.last_error
    assert rev_of(watcher) == "f1"


# -- the config service unreachable at start ---------------------------------------------------


def test_service_down_at_start_runs_on_the_cache_then_returns_to_the_service(
    make_watcher: WatcherFactory, config_server: ConfigServer, tmp_path: Path
) -> None:
    cache = BundleCache(tmp_path / "config-cache.json")
    cached_bundle = ConfigBundle(rev="c9", liq_threshold_usdt=7e5)
    cache.write(CachedBundle(cached_bundle, fetched_at=1_000.0, source="elsewhere"))
    config_server.stop()
    watcher = make_watcher(url=config_server.url, poll_s=0.3, timeout_s=0.5)
    active = ready(watcher)
    assert (active.bundle, active.source, active.fetched_at) == (cached_bundle, "cache", 1_000.0)
    status = wait_status(watcher, lambda s: s.rev == "c9", "status on the cache")
    assert (status.source, status.fetched_at) == ("cache", 1_000.0)  # its age: now - fetched_at
    assert status.last_error is not None
    assert "refused" in status.last_error
    config_server.start()
    wait_for(lambda: rev_of(watcher) == "r1", timeout_s=30, what="back on the service")
    status = wait_status(watcher, lambda s: s.source == "url", "status from the service")
    assert (status.rev, status.last_error) == ("r1", None)


def test_the_cached_bundle_is_returned_to_when_only_its_source_changes(
    make_watcher: WatcherFactory, config_server: ConfigServer, tmp_path: Path
) -> None:
    # The service answers again with the very bundle that was cached: same bundle, new source.
    cache = BundleCache(tmp_path / "config-cache.json")
    cache.write(CachedBundle(ConfigBundle.model_validate(R1), fetched_at=1.0, source="s"))
    config_server.stop()
    watcher = make_watcher(url=config_server.url, poll_s=0.3, timeout_s=0.5)
    assert ready(watcher).source == "cache"
    config_server.start()
    wait_for(
        lambda: (a := watcher.active.get()) is not None and a.source == "url",
        timeout_s=30,
        what="source url",
    )
    assert rev_of(watcher) == "r1"


def test_service_down_and_no_cache_publishes_nothing_until_the_service_answers(
    make_watcher: WatcherFactory, config_server: ConfigServer
) -> None:
    config_server.stop()
    watcher = make_watcher(url=config_server.url, poll_s=0.3, timeout_s=0.5)
    status = wait_status(watcher, lambda s: s.rejected >= 2, "retries while down")
    assert watcher.active.get() is None
    assert (status.rev, status.source) == (None, None)
    assert status.last_error is not None
    assert "refused" in status.last_error
    config_server.start()
    active = ready(watcher)
    assert (active.bundle.rev, active.source) == ("r1", "url")


def test_a_corrupt_cache_is_reported_and_not_used(
    make_watcher: WatcherFactory, config_server: ConfigServer, tmp_path: Path
) -> None:
    (tmp_path / "config-cache.json").write_text("{torn")
    config_server.stop()
    watcher = make_watcher(url=config_server.url, poll_s=0.3, timeout_s=0.5)
    status = wait_status(watcher, lambda s: s.rejected >= 1, "first attempt")
    assert status.last_error is not None
    assert "is corrupt" in status.last_error
    assert watcher.active.get() is None


def test_a_cached_bundle_the_callers_check_refuses_is_not_used(
    make_watcher: WatcherFactory, config_server: ConfigServer, tmp_path: Path
) -> None:
    def only_1m(bundle: ConfigBundle) -> None:
        if bundle.base_interval != "1m":
            raise ValueError("another base_interval")

    cache = BundleCache(tmp_path / "config-cache.json")
    cache.write(CachedBundle(ConfigBundle(rev="c1", base_interval="5m"), 1.0, "s"))
    config_server.stop()
    watcher = make_watcher(only_1m, url=config_server.url, poll_s=0.3, timeout_s=0.5)
    status = wait_status(watcher, lambda s: s.rejected >= 1, "first attempt")
    assert status.last_error is not None
    assert "cached bundle c1 refused: another base_interval" in status.last_error
    assert watcher.active.get() is None


def test_a_source_that_keeps_failing_becomes_stale(
    make_watcher: WatcherFactory, config_server: ConfigServer
) -> None:
    watcher = make_watcher(url=config_server.url, poll_s=0.2, timeout_s=0.5)
    ready(watcher)
    assert not watcher.status.get().stale
    config_server.break_with_status(503)
    status = wait_status(watcher, lambda s: s.stale, "stale")
    assert status.rev == "r1"
    config_server.serve(R1)
    wait_status(watcher, lambda s: not s.stale and s.last_error is None, "fresh again")


# -- Redis trouble -----------------------------------------------------------------------------


def test_the_watcher_survives_redis_restarts_and_reads_cfg_events_again(
    make_watcher: WatcherFactory,
    config_server: ConfigServer,
    redis_server: RedisServer,
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    watcher = make_watcher(url=config_server.url)
    ready(watcher)
    redis_server.kill()
    wait_for(
        lambda: any(
            getattr(r, "event", None) == "config_events_unavailable" for r in caplog.records
        ),
        timeout_s=30,
        what="the watcher noticing the outage",
    )
    config_server.serve(R2)
    redis_server.restart()
    # The watcher refetches once Redis answers again (a message may have been missed), and
    # later messages still trigger.
    wait_for(lambda: rev_of(watcher) == "r2", timeout_s=30, what="rev r2 after the outage")
    config_server.serve({**R2, "rev": "r3"})
    announce(client)
    wait_for(lambda: rev_of(watcher) == "r3", timeout_s=30, what="rev r3 on cfg:events")
    assert watcher.alive


def test_redis_down_at_start_still_loads_the_bundle(
    make_watcher: WatcherFactory, config_server: ConfigServer, redis_server: RedisServer
) -> None:
    redis_server.kill()
    watcher = make_watcher(url=config_server.url)
    assert ready(watcher).bundle.rev == "r1"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"poll_s": 0}, "config poll_s must be a positive number of seconds, got 0"),
        ({"poll_s": float("inf")}, "config poll_s must be"),
        ({"poll_s": float("nan")}, "config poll_s must be"),
        ({"timeout_s": -1}, "config timeout_s must be a positive number of seconds, got -1"),
        ({"url": ""}, "config service URL must be http"),
        ({"url": "ftp://u:secret@host/"}, "config service URL must be http"),
    ],
    ids=["zero-poll", "inf-poll", "nan-poll", "negative-timeout", "empty-url", "ftp-url"],
)
def test_settings_refuse_unusable_values(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        ConfigSourceSettings(**settings)
    assert "secret" not in str(caught.value)


def test_settings_never_show_the_url_credentials() -> None:
    settings = ConfigSourceSettings(url="https://ops:secret@cfg.local/s10")
    assert "secret" not in repr(settings)
    assert "https://cfg.local/s10" in repr(settings)
    assert settings.source == "url"


def test_cfg_events_are_read_through_a_cluster_client(
    redis_cluster: RedisClusterHarness, config_server: ConfigServer, tmp_path: Path
) -> None:
    client = redis_cluster.client()
    watcher = ConfigWatcher(
        ConfigSourceSettings(
            url=config_server.url, poll_s=NEVER_S, cache_path=tmp_path / "cache.json"
        ),
        client,
    )
    watcher.start()
    try:
        ready(watcher)
        config_server.serve(R2)
        client.xadd(EVENTS_STREAM, {"any": "thing"})
        wait_for(lambda: rev_of(watcher) == "r2", timeout_s=30, what="rev r2 via the cluster")
    finally:
        watcher.stop()
        client.close()


def test_cfg_events_are_read_through_a_resp3_client(
    redis_server: RedisServer, config_server: ConfigServer, tmp_path: Path
) -> None:
    # RESP3 returns XREAD replies as a map, RESP2 as a list: both are triggers.
    client = redis_server.client(protocol=3)
    watcher = ConfigWatcher(
        ConfigSourceSettings(
            url=config_server.url, poll_s=NEVER_S, cache_path=tmp_path / "cache.json"
        ),
        client,
    )
    watcher.start()
    try:
        ready(watcher)
        config_server.serve(R2)
        announce(client)
        wait_for(lambda: rev_of(watcher) == "r2", timeout_s=30, what="rev r2 via RESP3")
    finally:
        watcher.stop()


def test_an_unexpected_error_is_logged_and_the_watcher_carries_on(
    redis_server: RedisServer,
    config_server: ConfigServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = threading.Event()
    broken.set()

    def clock() -> float:  # fails on the watcher thread while `broken` is set
        if broken.is_set() and threading.current_thread().name == "s2-config-watch":
            raise RuntimeError("clock broken on purpose")
        return time.time()

    watcher = ConfigWatcher(
        ConfigSourceSettings(url=config_server.url, poll_s=0.2, cache_path=tmp_path / "c.json"),
        redis_server.client(),
        clock=clock,
    )
    watcher.start()
    try:
        wait_for(
            lambda: any(getattr(r, "event", None) == "config_watch_error" for r in caplog.records),
            timeout_s=30,
            what="the error logged",
        )
        assert watcher.alive
        assert watcher.active.get() is None
        broken.clear()
        assert ready(watcher).bundle.rev == "r1"
    finally:
        watcher.stop()
