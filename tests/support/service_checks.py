"""Input for the streaming service, and what a run must leave behind, checked against independent
references.

Shared by the standalone and the Redis Cluster service tests. Input entries carry explicit IDs
(`add_entries`), so a re-sent XADD cannot duplicate one and a test knows every ID to expect. An
instance is described by the `S2_*` environment it runs with (lake directory, SQLite file,
windows, consumer group), and its outputs are read back from where they landed — streams, store,
lake, pending lists — never taken from return values:

- every emitted event and stored signal equals a recompute from the lake (SPEC §4, 1e-9 relative);
- the lake holds exactly the input bars (all but the last, which no later event finalised), so a
  run that skipped input cannot pass by agreeing with a recompute of its own incomplete lake;
- nothing is left pending in the consumer group.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import redis

from s2feature.compute.batch import compute_batch
from s2feature.config.bundle import ConfigBundle
from s2feature.data.synth import derive_ticks, events_from_bars
from s2feature.domain import BarArrays, SeriesId, Snapshot, window_index
from s2feature.lake.parquet import BarLake
from s2feature.service.worker import routing
from s2feature.store.sqlite import SqliteStore
from s2feature.streams.client import AnyRedis, is_retryable
from s2feature.streams.keys import events_key
from tests.support.market_gen import SeriesSpec, make_series

DEFAULT_WINDOWS = "1m,5m,1h"
# Columns the lake must carry over from the input unchanged: every float travels through the
# stream as its repr, and the as-of tick values of a bar are those of its last event.
LAKE_COLUMNS = ("open_time", "close_time", "open", "high", "low", "close", "volume", "mid")


def input_bars(series: SeriesId, n_bars: int, seed: int) -> BarArrays:
    """One-minute bars with derived tick fields, `n_bars` long (>= 1,441 for a passing rv_1d)."""
    bars = make_series(SeriesSpec(seed=seed, n=n_bars, base_ms=60_000, sigma=0.002))
    return derive_ticks(bars, seed=seed, market=series.market)


def input_entries(series: SeriesId, bars: BarArrays, seed: int) -> list[dict[str, str]]:
    """S1 stream entries (three per bar) whose assembly gives back `bars`."""
    return events_from_bars(bars, series, events_per_bar=3, seed=seed)


def input_entry_id(fields: Mapping[str, str]) -> str:
    """An explicit input entry ID from the event time: a re-sent XADD is then rejected by Redis
    instead of duplicating the entry, and a test can list the IDs it expects."""
    return f"{fields['ts']}-0"


def without_computed_at(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "computed_at"}


def assert_payload_matches(got: dict[str, Any], snap: Snapshot) -> None:
    """Equal to the recomputed snapshot, features within 1e-9 relative (SPEC §4)."""
    want = snap.to_payload("realtime", 0)
    rest = {k for k in want if k not in ("computed_at", "features")}
    assert {k: got[k] for k in rest} == {k: want[k] for k in rest}
    assert list(got["features"]) == list(want["features"])
    for name, value in want["features"].items():
        if isinstance(value, float):
            assert math.isclose(got["features"][name], value, rel_tol=1e-9, abs_tol=1e-12), name
        else:
            assert got["features"][name] == value, name


def windows_of(env: Mapping[str, str]) -> list[str]:
    return env.get("S2_WINDOWS", DEFAULT_WINDOWS).split(",")


def expected_snapshots(
    env: Mapping[str, str], series: SeriesId, bundle: ConfigBundle
) -> list[Snapshot]:
    """What a recompute from the lake gives: the reference for every live output."""
    bars = BarLake(Path(env["S2_LAKE_DIR"])).read(series.symbol)
    return compute_batch(bars, series, windows_of(env), bundle)


def emitted(client: AnyRedis, symbol: str) -> list[tuple[str, dict[str, Any]]]:
    """`feat:events:<symbol>` as (entry ID, decoded payload), oldest first."""
    rows = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(events_key(symbol)))
    return [(entry_id.decode(), json.loads(fields[b"data"])) for entry_id, fields in rows]


def pending_count(client: AnyRedis, series: SeriesId, group: str = "s2") -> int:
    return int(client.xpending(series.stream_key, group)["pending"])


def assert_outputs_match_recompute(
    client: AnyRedis, series: SeriesId, env: Mapping[str, str], bundle: ConfigBundle
) -> None:
    """Emits, stored signals and DQC failure events of `series` equal a recompute from the lake;
    each expected emit is in the stream exactly once and nothing else is; nothing is pending."""
    expected = expected_snapshots(env, series, bundle)
    assert expected, f"{series.symbol}: the run produced no snapshots"
    realtime, persist_all = bundle.mode.realtime, bundle.mode.persist_all
    want_emit = [s for s in expected if routing(s, realtime, persist_all)[1]]
    want_store = [s for s in expected if routing(s, realtime, persist_all)[0]]
    got = emitted(client, series.symbol)
    assert [eid for eid, _ in got] == [f"{s.t0}-{window_index(s.window)}" for s in want_emit]
    for (_, payload), snap in zip(got, want_emit, strict=True):
        assert_payload_matches(payload, snap)
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    try:
        stored = store.query_signals(series.symbol)
        fails = store.strategy_events("FEATURE_DQC_FAIL", series.symbol)
    finally:
        store.close()
    assert [d["signal_id"] for d in stored] == [s.signal_id for s in want_store]
    for doc, snap in zip(stored, want_store, strict=True):
        assert_payload_matches(doc, snap)
    failed_signals = {e["signal_id"] for e in fails if "signal_id" in e}
    assert failed_signals == {s.signal_id for s in expected if not s.dqc.passed}
    assert pending_count(client, series, env.get("S2_CONSUMER_GROUP", "s2")) == 0


def assert_lake_holds_input_bars(env: Mapping[str, str], series: SeriesId, bars: BarArrays) -> None:
    """The lake holds every input bar but the last (still open: no later event finalised it)."""
    lake = BarLake(Path(env["S2_LAKE_DIR"])).read(series.symbol)
    assert len(lake) == len(bars) - 1
    for name in LAKE_COLUMNS:
        np.testing.assert_array_equal(
            getattr(lake, name), getattr(bars, name)[:-1], err_msg=f"{series.symbol}: {name}"
        )


def add_entries(client: AnyRedis, series: SeriesId, entries: Sequence[dict[str, str]]) -> None:
    """XADD with explicit IDs, retried on transient errors; an ID Redis already holds means an
    earlier attempt landed, so nothing is ever added twice."""
    for fields in entries:
        while True:
            try:
                client.xadd(series.stream_key, fields, id=input_entry_id(fields))  # type: ignore[arg-type]
                break
            except redis.ResponseError as exc:
                if "equal or smaller" in str(exc):
                    break
                if not is_retryable(exc):
                    raise
            except redis.RedisError as exc:
                if not is_retryable(exc):
                    raise
            time.sleep(0.01)  # a transient error: give the cluster a moment


def stream_ids(client: AnyRedis, key: str) -> list[str]:
    rows: Any = client.xrange(key)
    return [entry_id.decode() for entry_id, _ in rows]


class StreamProgress:
    """How far the service got on one stream of generated entries, read from its consumer group
    (the group the stream has: the tests create one)."""

    def __init__(self, client: AnyRedis, series: SeriesId, entries: Sequence[dict[str, str]]):
        self.client = client
        self.key = series.stream_key
        self.position = {input_entry_id(fields): i + 1 for i, fields in enumerate(entries)}

    def delivered_and_pending(self) -> tuple[int, int]:
        if not self.client.exists(self.key):
            return 0, 0
        groups: Any = self.client.xinfo_groups(self.key)
        if not groups:
            return 0, 0
        last = groups[0]["last-delivered-id"].decode()
        return self.position.get(last, 0), int(groups[0]["pending"])

    def delivered_at_least(self, count: int) -> bool:
        return self.delivered_and_pending()[0] >= count

    def acked(self) -> int:
        delivered, pending = self.delivered_and_pending()
        return delivered - pending


def assert_run_complete(
    client: AnyRedis,
    series: SeriesId,
    env: Mapping[str, str],
    bars: BarArrays,
    entries: Sequence[dict[str, str]],
) -> None:
    """The input stream holds what was produced, once each (no XADD lost or doubled), the
    outputs equal a recompute from the lake, the lake equals the input, nothing is pending."""
    assert stream_ids(client, series.stream_key) == [input_entry_id(f) for f in entries]
    assert_outputs_match_recompute(client, series, env, ConfigBundle())
    assert_lake_holds_input_bars(env, series, bars)
