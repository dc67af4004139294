"""Parity: events through the live service on a real redis-server, then a recompute of the same
range from the lake the service wrote gives the stored signals again (1e-9 relative, dqc equal)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import redis

from s2feature.config.bundle import ConfigBundle
from s2feature.domain import SeriesId
from s2feature.jobs import RecomputeRequest, plan, run_recompute
from s2feature.lake.parquet import BarLake
from s2feature.service.runner import Service
from s2feature.service.settings import load_settings
from s2feature.store.sqlite import SqliteStore
from tests.support import service_checks as checks
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.redis
SERIES = SeriesId("binance", "fut", "BTCUSDT")


def test_recompute_of_the_service_range_equals_what_the_service_stored(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    series = SERIES
    env = {
        "S2_REDIS_ADDRESSES": f"127.0.0.1:{redis_server.port}",
        "S2_SYMBOLS": "binance:fut:BTCUSDT",
        "S2_WINDOWS": "1m,5m,1h",
        "S2_CONSUMER_NAME": "test-consumer",
        "S2_DB_SQLITE_PATH": str(tmp_path / "s2.db"),
        "S2_LAKE_DIR": str(tmp_path / "lake"),
    }
    client: redis.Redis = redis_server.client()
    entries = checks.input_entries(series, checks.input_bars(series, 1600, 7), 7)
    for fields in entries:
        client.xadd(series.stream_key, fields)  # type: ignore[arg-type]
    settings = load_settings(env)
    store = SqliteStore(tmp_path / "s2.db")
    lake = BarLake(tmp_path / "lake")
    Service(settings, client, store, lake).run(idle_exit_s=0.3)
    live = store.query_signals(series.symbol)
    assert live
    assert {d["mode"] for d in live} == {"realtime"}
    from_ts, to_ts = live[0]["t0"], live[-1]["t0"]

    bundle = ConfigBundle()
    request = RecomputeRequest((series.symbol,), ("1m", "5m", "1h"), from_ts, to_ts, force=True)
    task = plan(request, lake, bundle, {series.symbol: series})
    result = run_recompute(task, store, lake, bundle, "recomp-parity-0001")
    recomputed = store.query_signals(series.symbol)
    store.close()

    assert result.signals_written == len(live)
    assert [d["signal_id"] for d in recomputed] == [d["signal_id"] for d in live]
    for new, old in zip(recomputed, live, strict=True):
        assert new["mode"] == "recompute"
        assert_same_signal(new, old)


def assert_same_signal(new: dict[str, Any], old: dict[str, Any]) -> None:
    rest = [k for k in old if k not in ("features", "mode", "computed_at")]
    assert {k: new[k] for k in rest} == {k: old[k] for k in rest}, old["signal_id"]
    assert list(new["features"]) == list(old["features"])
    for name, value in old["features"].items():
        got = new["features"][name]
        if isinstance(value, float):
            assert math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-12), (old["signal_id"], name)
        else:
            assert got == value, (old["signal_id"], name)
