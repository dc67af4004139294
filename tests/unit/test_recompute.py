"""The recompute job on a real lake and a real SQLite store: values equal to an uninterrupted
computation over the whole lake (ATR included), no use of bars after the range, force semantics,
progress, stop, and the FEATURE_RECOMPUTE event."""

from __future__ import annotations

import gc
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from s2feature.compute.batch import compute_batch
from s2feature.config.bundle import ConfigBundle
from s2feature.data.synth import derive_ticks
from s2feature.domain import DAY_MS, BarArrays, SeriesId, Snapshot
from s2feature.jobs import Progress, RecomputeError, RecomputeRequest, plan, run_recompute
from s2feature.jobs.recompute import _cyclic_gc_paused
from s2feature.jobs.warmup import atr_warmup_wbars, warmup_start
from s2feature.lake.parquet import BarLake
from s2feature.store.base import recompute_event_id
from s2feature.store.sqlite import SqliteStore
from tests.support.market_gen import SeriesSpec, make_series

SERIES = SeriesId("binance", "fut", "BTCUSDT")
HOURLY = ConfigBundle().with_overrides(base_interval="1h", rev="hourly-rev")


def market(n: int, base_ms: int, seed: int = 3) -> BarArrays:
    bars = make_series(SeriesSpec(seed=seed, n=n, base_ms=base_ms, sigma=0.004))
    return derive_ticks(bars, seed=seed, market=SERIES.market)


def filled_lake(root: Path, bars: BarArrays) -> BarLake:
    lake = BarLake(root, auto_compact_parts=None)
    lake.append(SERIES.symbol, bars.to_bars())
    return lake


def stored_by_live(snap: Snapshot, bundle: ConfigBundle) -> bool:
    dqc = snap.dqc
    mode = bundle.mode
    return (
        mode.persist_all
        or (dqc.passed and mode.realtime)
        or (not dqc.missing and (dqc.jump or dqc.bounds))
    )


def assert_doc_equals(doc: dict[str, Any], snap: Snapshot) -> None:
    want = snap.to_payload("recompute", 0)
    rest = [k for k in want if k not in ("computed_at", "features")]
    assert {k: doc[k] for k in rest} == {k: want[k] for k in rest}, snap.signal_id
    assert list(doc["features"]) == list(want["features"])
    for name, value in want["features"].items():
        got = doc["features"][name]
        if isinstance(value, float):
            assert math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-12), (snap.signal_id, name)
        else:
            assert got == value, (snap.signal_id, name)


def run(
    lake: BarLake,
    store: SqliteStore,
    bundle: ConfigBundle,
    windows: tuple[str, ...],
    from_ts: int,
    to_ts: int,
    *,
    force: bool = False,
    task_id: str = "recomp-test-0001",
) -> tuple[Any, list[Progress]]:
    request = RecomputeRequest((SERIES.symbol,), windows, from_ts, to_ts, force)
    task = plan(request, lake, bundle, {SERIES.symbol: SERIES})
    seen: list[Progress] = []
    result = run_recompute(task, store, lake, bundle, task_id, seen.append)
    return result, seen


def test_atr_warmup_is_the_horizon_below_the_tolerance() -> None:
    n = atr_warmup_wbars(14)
    assert n == 280
    assert (13 / 14) ** n < 1e-9 <= (13 / 14) ** (n - 1)
    assert atr_warmup_wbars(1) == 1


@pytest.mark.parametrize(
    ("bundle", "windows", "n_bars", "base_ms"),
    [
        (HOURLY, ("1h", "4h", "1d"), 300 * 24, 3_600_000),  # the 1d ATR needs 280 days
        (ConfigBundle(), ("1m", "5m", "1h"), 34 * 1440, 60_000),  # rv_pctile_30d needs 31 days
    ],
    ids=["hourly-base", "minute-base"],
)
def test_late_range_equals_the_uninterrupted_values_for_every_window(
    tmp_path: Path, bundle: ConfigBundle, windows: tuple[str, ...], n_bars: int, base_ms: int
) -> None:
    bars = market(n_bars, base_ms)
    lake = filled_lake(tmp_path / "lake", bars)
    last = int(bars.close_time[-1])
    to_ts = (last // DAY_MS) * DAY_MS - 1  # end of the day before the last one
    from_ts = to_ts + 1 - 2 * DAY_MS + 7 * 3_600_000  # two days, starting mid-day
    # The warm-up starts after the lake's first bar: the recompute really reads less history.
    assert all(warmup_start(from_ts, w, bundle) > int(bars.open_time[0]) for w in windows)
    store = SqliteStore(tmp_path / "s2.db")
    result, seen = run(lake, store, bundle, windows, from_ts, to_ts)

    reference = [
        s
        for s in compute_batch(bars, SERIES, windows, bundle)
        if from_ts <= s.t0 <= to_ts and stored_by_live(s, bundle)
    ]
    assert reference
    assert {s.window for s in reference} == set(windows)
    assert {s.window for s in reference if s.features.get("atr_14") is not None} == set(windows)
    docs = store.query_signals(SERIES.symbol)
    assert [d["signal_id"] for d in docs] == [s.signal_id for s in reference]
    for doc, snap in zip(docs, reference, strict=True):
        assert_doc_equals(doc, snap)
        assert doc["mode"] == "recompute"
    assert result.signals_written == len(reference)
    assert result.batches_total == 2
    assert not result.interrupted
    assert [p.batches_done for p in seen] == [1, 2]
    assert seen[-1].signals_written == len(reference)
    store.close()


def test_bars_after_the_range_change_nothing(tmp_path: Path) -> None:
    bars = market(300 * 24, 3_600_000)
    windows = ("1h", "4h", "1d")
    cut = len(bars) - 3 * 24
    to_ts = int(bars.close_time[cut - 1])
    from_ts = to_ts - 3 * DAY_MS + 1
    lake = filled_lake(tmp_path / "lake", bars.slice(0, cut))
    first = SqliteStore(tmp_path / "first.db")
    run(lake, first, HOURLY, windows, from_ts, to_ts)
    before = first.query_signals(SERIES.symbol)
    # Later bars, with a wild price that would move every feature they reached.
    later = bars.slice(cut, len(bars))
    later = BarArrays(**{**later.__dict__, "close": later.close * 50, "high": later.high * 60})
    lake.append(SERIES.symbol, later.to_bars())
    second = SqliteStore(tmp_path / "second.db")
    run(lake, second, HOURLY, windows, from_ts, to_ts)
    after = second.query_signals(SERIES.symbol)
    assert before
    assert [without_computed_at(d) for d in after] == [without_computed_at(d) for d in before]
    # The planted bars are in the lake and do change a recompute that covers them.
    third = SqliteStore(tmp_path / "third.db")
    run(lake, third, HOURLY, windows, from_ts, int(bars.close_time[-1]))
    covering = {d["signal_id"]: d for d in third.query_signals(SERIES.symbol)}
    assert any(covering[d["signal_id"]]["t0"] > to_ts for d in covering.values())
    for store in (first, second, third):
        store.close()


def without_computed_at(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "computed_at"}


def test_force_false_skips_signals_stored_under_the_same_config_rev(tmp_path: Path) -> None:
    bars = market(40 * 24, 3_600_000)
    lake = filled_lake(tmp_path / "lake", bars)
    store = SqliteStore(tmp_path / "s2.db")
    windows = ("1h", "4h")
    to_ts = int(bars.close_time[-1])
    from_ts = to_ts - 2 * DAY_MS + 1
    first, _ = run(lake, store, HOURLY, windows, from_ts, to_ts, task_id="t1")
    assert first.signals_written > 0
    assert first.signals_skipped == 0
    stamps = {d["signal_id"]: d["computed_at"] for d in store.query_signals(SERIES.symbol)}

    again, seen = run(lake, store, HOURLY, windows, from_ts, to_ts, task_id="t2")
    assert again.signals_written == 0
    assert again.signals_skipped == first.signals_written
    assert seen[-1].signals_written == 0
    unchanged = {d["signal_id"]: d["computed_at"] for d in store.query_signals(SERIES.symbol)}
    assert unchanged == stamps

    # Under another config_rev every signal is written again, without force.
    other = HOURLY.with_overrides(rev="hourly-rev-2")
    moved, _ = run(lake, store, other, windows, from_ts, to_ts, task_id="t3")
    assert moved.signals_written == first.signals_written
    revs = {d["config_rev"] for d in store.query_signals(SERIES.symbol)}
    assert revs == {"hourly-rev-2"}

    # force rewrites everything, even under the same rev.
    forced, _ = run(lake, store, other, windows, from_ts, to_ts, force=True, task_id="t4")
    assert forced.signals_written == first.signals_written
    assert forced.signals_skipped == 0
    store.close()


def test_one_strategy_event_records_the_task_scope(tmp_path: Path) -> None:
    bars = market(10 * 24, 3_600_000)
    lake = filled_lake(tmp_path / "lake", bars)
    store = SqliteStore(tmp_path / "s2.db")
    to_ts = int(bars.close_time[-1])
    from_ts = to_ts - DAY_MS + 1
    result, _ = run(lake, store, HOURLY, ("4h", "1h"), from_ts, to_ts, task_id="recomp-x-0007")
    events = store.strategy_events("FEATURE_RECOMPUTE")
    assert len(events) == 1
    event = events[0]
    assert event["event_id"] == recompute_event_id("recomp-x-0007") == result.event_id
    assert event["task_id"] == "recomp-x-0007"
    assert event["scope"] == {
        "symbols": ["BTCUSDT"],
        "windows": ["1h", "4h"],
        "from_ts": from_ts,
        "to_ts": to_ts,
        "force": False,
    }
    assert event["config_rev"] == "hourly-rev"
    assert event["signals_written"] == result.signals_written > 0
    assert event["interrupted"] is False
    store.close()


def test_stop_ends_the_task_between_batches(tmp_path: Path) -> None:
    bars = market(10 * 24, 3_600_000)
    lake = filled_lake(tmp_path / "lake", bars)
    store = SqliteStore(tmp_path / "s2.db")
    to_ts = int(bars.close_time[-1]) // DAY_MS * DAY_MS - 1  # four whole UTC days
    from_ts = to_ts - 4 * DAY_MS + 1
    request = RecomputeRequest((SERIES.symbol,), ("1h",), from_ts, to_ts)
    task = plan(request, lake, HOURLY)
    stop = threading.Event()

    def stop_after_two(p: Progress) -> None:
        if p.batches_done == 2:
            stop.set()

    result = run_recompute(task, store, lake, HOURLY, "t-stop", stop_after_two, stop)
    assert (result.batches_done, result.batches_total, result.interrupted) == (2, 4, True)
    stored = store.query_signals(SERIES.symbol)
    assert 0 < result.signals_written == len(stored)
    assert max(d["t0"] for d in stored) < from_ts + 2 * DAY_MS  # the first two days only
    assert store.strategy_events("FEATURE_RECOMPUTE")[0]["interrupted"] is True
    store.close()


def test_plan_rejects_what_cannot_run(tmp_path: Path) -> None:
    lake = filled_lake(tmp_path / "lake", market(48, 3_600_000))
    with pytest.raises(RecomputeError, match="ETHUSDT"):
        plan(RecomputeRequest(("BTCUSDT", "ETHUSDT"), ("1h",), 0, DAY_MS), lake, HOURLY)
    with pytest.raises(RecomputeError, match="windows"):
        plan(RecomputeRequest(("BTCUSDT",), ("1m",), 0, DAY_MS), lake, HOURLY)
    with pytest.raises(RecomputeError, match="from_ts"):
        RecomputeRequest(("BTCUSDT",), ("1h",), DAY_MS, DAY_MS)
    with pytest.raises(RecomputeError, match="windows"):
        RecomputeRequest(("BTCUSDT",), ("2h",), 0, DAY_MS)
    with pytest.raises(RecomputeError, match="symbols"):
        RecomputeRequest((), ("1h",), 0, DAY_MS)


def test_plan_has_one_batch_per_symbol_and_utc_day(tmp_path: Path) -> None:
    lake = filled_lake(tmp_path / "lake", market(48, 3_600_000))
    from_ts = 10 * DAY_MS + 5
    request = RecomputeRequest(("BTCUSDT",), ("1h",), from_ts, 12 * DAY_MS)
    task = plan(request, lake, HOURLY)
    spans = [(b.from_ts, b.to_ts) for b in task.batches]
    assert spans == [
        (from_ts, 11 * DAY_MS - 1),
        (11 * DAY_MS, 12 * DAY_MS - 1),
        (12 * DAY_MS, 12 * DAY_MS),
    ]
    assert task.estimated_batches == 3
    assert task.series["BTCUSDT"] == SeriesId("offline", "spot", "BTCUSDT")
    assert np.all(np.diff([b.from_ts for b in task.batches]) > 0)


def test_collection_pause_restores_the_state_it_found() -> None:
    assert gc.isenabled()
    with _cyclic_gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with _cyclic_gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # left off: someone else turned it off
    finally:
        gc.enable()
