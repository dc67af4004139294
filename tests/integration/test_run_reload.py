"""Hot reload end to end: `s2-feature run` consuming while the config service changes its bundle
(announced on `cfg:events`), then serves a broken one: every snapshot equals a recompute under
the bundle in force when it was computed, and a broken bundle never replaces a good one."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from s2feature.store.sqlite import SqliteStore
from tests.integration.test_bundle_swap import BEFORE, SERIES, assert_outputs_equal, expected
from tests.integration.test_run_health import Instance, run_env
from tests.support import service_checks as checks
from tests.support.config_server import ConfigServer
from tests.support.redis_servers import RedisServer, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.timeout(300)]


def test_a_bundle_changed_while_events_flow_applies_between_batches(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    after = BEFORE.with_overrides(rev="b", windows={"atr_period": 10}, liq_threshold_usdt=5e5)
    server = ConfigServer(BEFORE.model_dump(mode="json")).start()
    client = redis_server.client()
    entries = checks.input_entries(SERIES, checks.input_bars(SERIES, 1_700, seed=21), seed=21)
    env = run_env(redis_server.port, tmp_path, S2_CONFIG_URL=server.url, S2_WINDOWS="1m,5m,1h")
    instance = Instance(env, tmp_path / "run.log")
    try:
        checks.add_entries(client, SERIES, entries[:4_500])
        wait_for(
            lambda: (
                checks.pending_count(client, SERIES) == 0
                and client.xlen(SERIES.stream_key) == 4_500
                and _group_delivered(client) == 4_500
            ),
            timeout_s=120,
            what="the first part consumed",
        )
        server.serve(after.model_dump(mode="json"))
        client.xadd("cfg:events", {"rev": "b"})
        wait_for(lambda: _applied(instance, "b"), timeout_s=60, what="rev b applied")
        server.break_with_body(b'{"rev": "c", "windows": {"atr_period": "fourteen"')
        client.xadd("cfg:events", {"rev": "c"})
        wait_for(lambda: _rejected(instance), timeout_s=60, what="the broken bundle refused")
        checks.add_entries(client, SERIES, entries[4_500:])
        wait_for(
            lambda: (
                _group_delivered(client) == len(entries)
                and checks.pending_count(client, SERIES) == 0
            ),
            timeout_s=120,
            what="the rest consumed",
        )
        _, body = instance.health()
        assert body["checks"]["config"]["rev"] == "b"  # the broken bundle did not replace it
        assert body["checks"]["config"]["rejected"] >= 1
        assert instance.stop() == 0
    finally:
        instance.kill()
        server.stop()
    applied = [r for r in instance.records() if r.get("event") == "config_applied"]
    assert applied[-1]["new_rev"] == "b"
    assert "windows.atr_period" in applied[-1]["changed"]
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    try:
        under_before = [
            d["t0"] for d in store.query_signals(SERIES.symbol) if d["config_rev"] == "a"
        ]
    finally:
        store.close()
    swapped_after = max(under_before)
    assert_outputs_equal(env, client, expected(env, swapped_after, after), after)


def _group_delivered(client: redis.Redis) -> int:
    (group,) = [g for g in client.xinfo_groups(SERIES.stream_key) if g["name"] == b"s2"]
    return int(group["entries-read"] or 0)


def _applied(instance: Instance, rev: str) -> bool:
    return any(
        r.get("event") == "config_applied" and r.get("new_rev") == rev for r in instance.records()
    )


def _rejected(instance: Instance) -> bool:
    return any(r.get("event") == "config_rejected" for r in instance.records())
