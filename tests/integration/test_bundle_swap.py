"""A config bundle swapped while the service runs (and one changed across a restart): every
snapshot is computed under one whole bundle, and from the swap on it equals a recompute under the
new bundle. A change to a parameter a family's state depends on rebuilds that family from the
lake; a change to thresholds only rebuilds nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import redis

from s2feature.compute.batch import compute_batch
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import SeriesId, Snapshot, window_index
from s2feature.lake.parquet import BarLake
from s2feature.service.runner import Service
from s2feature.service.settings import load_settings
from s2feature.service.worker import routing
from s2feature.store.sqlite import SqliteStore
from tests.support import service_checks as checks
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.redis
SERIES = SeriesId("binance", "fut", "BTCUSDT")
WINDOWS = "1m,5m,1h"
BEFORE = ConfigBundle(rev="a")
N_BARS, SWAP_AT = 1_700, 1_500  # rv_1d needs 1,441 bars before snapshots pass


class Holder:
    """The active bundle, as the config watcher holds it."""

    def __init__(self, bundle: ConfigBundle) -> None:
        self.bundle = bundle

    def __call__(self) -> ConfigBundle:
        return self.bundle


def env_for(server: RedisServer, tmp: Path) -> dict[str, str]:
    return {
        "S2_REDIS_ADDRESSES": f"127.0.0.1:{server.port}",
        "S2_SYMBOLS": "binance:fut:BTCUSDT",
        "S2_WINDOWS": WINDOWS,
        "S2_CONSUMER_NAME": "c1",
        "S2_DB_SQLITE_PATH": str(tmp / "s2.db"),
        "S2_LAKE_DIR": str(tmp / "lake"),
    }


def drain(service: Service) -> None:
    while service.run_once():
        pass
    service.flush_all(force=True)


def expected(env: dict[str, str], swapped_after: int, after: ConfigBundle) -> list[Snapshot]:
    """A recompute from the lake: snapshots up to `swapped_after` under the bundle before the
    swap, the later ones under the one after."""
    bars = BarLake(Path(env["S2_LAKE_DIR"])).read(SERIES.symbol)
    windows = WINDOWS.split(",")
    old = [s for s in compute_batch(bars, SERIES, windows, BEFORE) if s.t0 <= swapped_after]
    new = [s for s in compute_batch(bars, SERIES, windows, after) if s.t0 > swapped_after]
    return sorted([*old, *new], key=lambda s: (s.t0, window_index(s.window)))


def assert_outputs_equal(
    env: dict[str, str], client: redis.Redis, want: list[Snapshot], after: ConfigBundle
) -> None:
    def routes(snap: Snapshot) -> tuple[bool, bool]:
        mode = (after if snap.config_rev == after.rev else BEFORE).mode
        return routing(snap, mode.realtime, mode.persist_all)

    want_emit = [s for s in want if routes(s)[1]]
    got = checks.emitted(client, SERIES.symbol)
    assert [eid for eid, _ in got] == [f"{s.t0}-{window_index(s.window)}" for s in want_emit]
    for (_, payload), snap in zip(got, want_emit, strict=True):
        checks.assert_payload_matches(payload, snap)
    revs = {payload["config_rev"] for _, payload in got}
    assert revs == {BEFORE.rev, after.rev}, "the run must emit under both bundles"
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    try:
        stored = store.query_signals(SERIES.symbol)
    finally:
        store.close()
    want_store = [s for s in want if routes(s)[0]]
    assert [d["signal_id"] for d in stored] == [s.signal_id for s in want_store]
    for doc, snap in zip(stored, want_store, strict=True):
        checks.assert_payload_matches(doc, snap)


CHANGES: dict[str, tuple[dict[str, Any], set[str]]] = {
    "atr-period": ({"windows": {"atr_period": 10}}, {"atr"}),
    "coverage": ({"windows": {"coverage_min": 0.8}}, {"volatility"}),
    "thresholds-only": (
        {
            "liq_threshold_usdt": 5e5,
            "bounds": {"spread_bps_max": 100.0},
            "regime": {"frozen_below": 0.3, "extreme_above": 0.6},
            "features": {"required": ["atr_14", "rv_4h", "spread_bps"]},
            "dqc": {"jump_mad_multiplier": 4.0},
        },
        set(),
    ),
}


def rebuilt_families(caplog: pytest.LogCaptureFixture) -> set[str]:
    states = [
        str(getattr(r, "state", ""))
        for r in caplog.records
        if getattr(r, "event", None) == "config_in_force"
    ]
    assert len(states) == 1, states
    if states[0] == "thresholds only":
        return set()
    return {part.split("@")[0] for part in states[0].split(" rebuilt")[0].split(", ")}


@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_a_live_swap_equals_a_recompute_under_each_bundle(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, change: str
) -> None:
    overrides, families = CHANGES[change]
    after = BEFORE.with_overrides(rev="b", **overrides)
    env = env_for(redis_server, tmp_path)
    client = redis_server.client()
    entries = checks.input_entries(SERIES, checks.input_bars(SERIES, N_BARS, seed=11), seed=11)
    split = SWAP_AT * 3  # three entries per bar
    checks.add_entries(client, SERIES, entries[:split])
    holder = Holder(BEFORE)
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    conn = redis.Redis(host="127.0.0.1", port=redis_server.port)
    service = Service(
        load_settings(env), conn, store, BarLake(Path(env["S2_LAKE_DIR"])), bundles=holder
    )
    try:
        service.start()
        drain(service)
        (worker,) = service.workers.values()
        swapped_after = worker.bars_until
        holder.bundle = after  # the watcher's swap: the next batch sees it
        checks.add_entries(client, SERIES, entries[split:])
        with caplog.at_level(logging.INFO, logger="s2feature.service"):
            drain(service)
        service.release_leases()
    finally:
        store.close()
        conn.close()
    assert worker.bundle is after
    assert rebuilt_families(caplog) == families
    assert_outputs_equal(env, client, expected(env, swapped_after, after), after)


def test_a_restart_under_another_atr_period_rebuilds_atr_from_the_lake(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The checkpoint was written under atr_period 14; the restarted service runs under 10: the
    ATR state is rebuilt from the lake instead of failing, and outputs equal a recompute."""
    after = BEFORE.with_overrides(rev="b", windows={"atr_period": 10})
    env = env_for(redis_server, tmp_path)
    client = redis_server.client()
    entries = checks.input_entries(SERIES, checks.input_bars(SERIES, N_BARS, seed=12), seed=12)
    split = SWAP_AT * 3
    checks.add_entries(client, SERIES, entries[:split])
    swapped_after = -1
    for bundle, part in ((BEFORE, entries[:0]), (after, entries[split:])):
        checks.add_entries(client, SERIES, part)
        store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
        conn = redis.Redis(host="127.0.0.1", port=redis_server.port)
        lake = BarLake(Path(env["S2_LAKE_DIR"]))
        service = Service(load_settings(env), conn, store, lake, bundles=lambda b=bundle: b)
        try:
            service.start()
            (worker,) = service.workers.values()
            if bundle is after:
                assert worker.engine.bundle is after
            drain(service)
            if bundle is BEFORE:
                swapped_after = worker.bars_until
            service.release_leases()
        finally:
            store.close()
            conn.close()
    assert_outputs_equal(env, client, expected(env, swapped_after, after), after)
