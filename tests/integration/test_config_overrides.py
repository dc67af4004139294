"""The `S2_DQC_*`/`S2_REGIME_*` overrides through hot reloads: every bundle the watcher applies,
from a file, the config service or the disk cache, carries them; the cache keeps the service's
own bundle."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from s2feature.config.bundle import ConfigBundle
from s2feature.config.overrides import BundleOverrides
from s2feature.config_source.cache import BundleCache
from s2feature.service.config_events import EVENTS_STREAM
from s2feature.service.config_watch import ConfigSourceSettings, ConfigWatcher
from tests.support.config_server import ConfigServer
from tests.support.redis_servers import RedisServer, wait_for

pytestmark = pytest.mark.redis
NEVER_S = 3600.0  # only cfg:events messages trigger a reload
OVERRIDES = BundleOverrides.of({"dqc": {"jump_lookback": 50}, "regime": {"frozen_below": 0.2}})


@pytest.fixture
def watchers(redis_server: RedisServer) -> Iterator[list[ConfigWatcher]]:
    started: list[ConfigWatcher] = []
    yield started
    for watcher in started:
        watcher.stop()


def start(watchers: list[ConfigWatcher], client: redis.Redis, **settings: Any) -> ConfigWatcher:
    watcher = ConfigWatcher(
        ConfigSourceSettings(poll_s=NEVER_S, overrides=OVERRIDES, **settings), client
    )
    watchers.append(watcher)
    watcher.start()
    return watcher


def active_bundle(watcher: ConfigWatcher, rev_prefix: str) -> ConfigBundle:
    def arrived() -> bool:
        active = watcher.active.get()
        return active is not None and active.bundle.rev.startswith(rev_prefix + "+")

    wait_for(arrived, timeout_s=30, what=f"bundle {rev_prefix}")
    active = watcher.active.get()
    assert active is not None
    return active.bundle


def test_a_reloaded_file_bundle_keeps_the_overrides(
    redis_server: RedisServer, watchers: list[ConfigWatcher], tmp_path: Path
) -> None:
    client = redis_server.client()
    bundle_file = tmp_path / "bundle.json"
    bundle_file.write_text(json.dumps({"rev": "r1", "dqc": {"jump_lookback": 300}}))
    watcher = start(watchers, client, file=bundle_file, cache_path=tmp_path / "cache.json")
    first = active_bundle(watcher, "r1")
    assert first.rev == f"r1+env.{OVERRIDES.digest}"
    assert (first.dqc.jump_lookback, first.regime.frozen_below) == (50, 0.2)

    # r2 changes an overridden field and one that is not: the environment still wins the
    # first, the bundle decides the second.
    bundle_file.write_text(
        json.dumps({"rev": "r2", "dqc": {"jump_lookback": 200, "jump_mad_multiplier": 5.0}})
    )
    client.xadd(EVENTS_STREAM, {"rev": "r2"})
    second = active_bundle(watcher, "r2")
    assert (second.dqc.jump_lookback, second.dqc.jump_mad_multiplier) == (50, 5.0)
    assert second.regime.frozen_below == 0.2

    # A bundle the overrides contradict is refused, and the active one stays.
    bundle_file.write_text(json.dumps({"rev": "r3", "regime": {"extreme_above": 0.15}}))
    client.xadd(EVENTS_STREAM, {"rev": "r3"})
    wait_for(lambda: watcher.status.get().rejected == 1, timeout_s=30, what="r3 refused")
    assert "S2_DQC_*/S2_REGIME_*" in str(watcher.status.get().last_error)
    active = watcher.active.get()
    assert active is not None
    assert active.bundle == second


def test_the_cache_holds_the_service_bundle_and_a_start_on_it_merges_again(
    redis_server: RedisServer, watchers: list[ConfigWatcher], tmp_path: Path
) -> None:
    client = redis_server.client()
    cache_path = tmp_path / "cache.json"
    with ConfigServer({"rev": "r1", "dqc": {"jump_lookback": 300}}) as server:
        watcher = start(watchers, client, url=server.url, cache_path=cache_path)
        assert active_bundle(watcher, "r1").dqc.jump_lookback == 50
        wait_for(cache_path.exists, timeout_s=30, what="the cache")
        cached = BundleCache(cache_path).read()
        assert cached is not None
        assert (cached.bundle.rev, cached.bundle.dqc.jump_lookback) == ("r1", 300)
        url = server.url
    # The service is gone: a new start runs on the cache, with the overrides merged again.
    again = start(watchers, client, url=url, cache_path=cache_path, timeout_s=0.5)
    bundle = active_bundle(again, "r1")
    active = again.active.get()
    assert active is not None
    assert active.source == "cache"
    assert (bundle.dqc.jump_lookback, bundle.regime.frozen_below) == (50, 0.2)
