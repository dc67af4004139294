"""The whole engine: online `SymbolEngine` == `compute_batch` on every feature of every window,
snapshot/restore of the engine == an uninterrupted run, and no leakage across windows."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from s2feature.compute.bars import aggregate_wbars
from s2feature.compute.batch import compute_batch
from s2feature.compute.engine import SymbolEngine, fx_tables, run_online
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import BarArrays, SeriesId, Snapshot
from tests.support.market_gen import SeriesSpec, make_series, series_specs

M = 60_000
H = 3_600_000
FUT = SeriesId("binance", "fut", "BTCUSDT")
SPOT = SeriesId("binance", "spot", "ETHUSDT")


def assert_same_snapshots(online: list[Snapshot], batch: list[Snapshot]) -> None:
    assert [s.signal_id for s in online] == [s.signal_id for s in batch]
    for a, b in zip(online, batch, strict=True):
        assert a.dqc == b.dqc, a.signal_id
        assert (a.bar_coverage, a.inputs_until, a.calc) == (b.bar_coverage, b.inputs_until, b.calc)
        assert list(a.features) == list(b.features)
        for name, x in a.features.items():
            y = b.features[name]
            if isinstance(x, float) and isinstance(y, float):
                assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12), (a.signal_id, name, x, y)
            else:
                assert x == y, (a.signal_id, name, x, y)


@settings(max_examples=20, deadline=None)
@given(spec=series_specs(M, 1, 3000), series=st.sampled_from([FUT, SPOT]))
def test_online_engine_equals_batch_on_minute_bars(spec: SeriesSpec, series: SeriesId) -> None:
    bars = make_series(spec)
    windows = ("1m", "5m", "1h")
    online = run_online(bars.to_bars(), series, windows, ConfigBundle())
    assert_same_snapshots(online, compute_batch(bars, series, windows, ConfigBundle()))


@settings(max_examples=10, deadline=None)
@given(spec=series_specs(H, 1, 1200), fx_spec=series_specs(H, 1200, 1300))
def test_online_engine_equals_batch_on_hourly_bars_with_fx(
    spec: SeriesSpec, fx_spec: SeriesSpec
) -> None:
    bundle = ConfigBundle(base_interval="1h")
    bars, fx = make_series(spec), make_series(fx_spec)
    windows = ("1h", "4h", "1d")
    online = run_online(bars.to_bars(), FUT, windows, bundle, fx)
    assert_same_snapshots(online, compute_batch(bars, FUT, windows, bundle, fx))


@settings(max_examples=10, deadline=None)
@given(spec=series_specs(M, 2, 2000), cut=st.floats(0.0, 1.0))
def test_engine_restored_from_json_continues_like_an_uninterrupted_run(
    spec: SeriesSpec, cut: float
) -> None:
    bars = make_series(spec).to_bars()
    windows = ("1m", "5m", "1h")
    whole = run_online(bars, FUT, windows, ConfigBundle())
    k = int(cut * len(bars))
    first = SymbolEngine(FUT, windows, ConfigBundle())
    head = [s for bar in bars[:k] for s in first.on_base_bar(bar)]
    state = json.loads(json.dumps(first.snapshot(), allow_nan=False))
    second = SymbolEngine(FUT, windows, ConfigBundle())
    second.restore(state)
    tail = [s for bar in bars[k:] for s in second.on_base_bar(bar)]
    assert head + tail == whole


@settings(max_examples=10, deadline=None)
@given(spec=series_specs(M, 10, 2000), cut=st.floats(0.05, 0.95))
def test_truncating_the_input_after_t0_changes_no_snapshot_at_or_before_t0(
    spec: SeriesSpec, cut: float
) -> None:
    bars = make_series(spec)
    k = max(1, int(cut * len(bars)))
    head = bars.slice(0, k)
    windows = ("1m", "5m", "1h")
    full = {s.signal_id: s for s in compute_batch(bars, FUT, windows, ConfigBundle())}
    for snap in compute_batch(head, FUT, windows, ConfigBundle()):
        assert snap == full[snap.signal_id]


def test_fx_tables_hold_each_window_close() -> None:
    fx = make_series(SeriesSpec(seed=1, n=48, base_ms=H))
    tables = fx_tables(fx, ["1h", "4h"])
    assert tables["1h"].close_at(int(fx.close_time[5])) == float(fx.close[5])
    four_hourly, _ = aggregate_wbars(fx, 4 * H)
    assert len(four_hourly) >= 10
    for close_time, close in zip(four_hourly.close_time, four_hourly.close, strict=True):
        assert tables["4h"].close_at(int(close_time)) == float(close)
    assert tables["4h"].close_at(int(fx.close_time[0]) + 1) is None


def test_spot_snapshots_omit_funding_and_do_not_require_it() -> None:
    bars = make_series(SeriesSpec(seed=3, n=30, base_ms=M))
    snaps = compute_batch(bars, SPOT, ("1m",), ConfigBundle())
    assert all("funding_next" not in s.features for s in snaps)
    assert all("missing:funding_next" not in s.dqc.reasons for s in snaps)


def test_warming_up_features_are_null_and_fail_dqc_as_missing() -> None:
    bars = make_series(SeriesSpec(seed=4, n=20, base_ms=M))
    first = compute_batch(bars, FUT, ("1m",), ConfigBundle())[0]
    assert first.features["atr_14"] is None  # needs 15 bars
    assert first.dqc.missing
    assert "missing:atr_14" in first.dqc.reasons
    assert not first.dqc.passed


def test_batch_on_empty_input_is_empty() -> None:
    empty = make_series(SeriesSpec(seed=0, n=0, base_ms=M))
    assert compute_batch(empty, FUT, ("1m",), ConfigBundle()) == []
    assert isinstance(empty, BarArrays)
    assert len(np.asarray(empty.close)) == 0
