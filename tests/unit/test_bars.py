"""W-bar aggregation: hand-built cases and online builder == batch aggregation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings

from s2feature.compute.bars import WBarBuilder, aggregate_wbars, bars_of
from s2feature.domain import Bar, BarArrays
from tests.support.market_gen import SeriesSpec, make_series, series_specs

M = 60_000
FIVE = 5 * M


def base_bar(slot: int, o: float, h: float, lo: float, c: float, jumps: int = 0) -> Bar:
    return Bar(slot * M, slot * M + M - 1, o, h, lo, c, 1.0, mid=c, jump_count=jumps)


def feed(builder: WBarBuilder, bars: list[Bar]) -> list[tuple[Bar, int]]:
    out = []
    for bar in bars:
        for done in (builder.close_before(bar), builder.add(bar)):
            if done is not None:
                out.append((done.bar, done.inputs_until))
    return out


def test_full_five_minute_bar_aggregates_ohlc_and_ticks_of_last_base_bar() -> None:
    bars = [base_bar(s, 10 + s, 20 + s, 5 + s, 11 + s, jumps=s % 2) for s in range(5)]
    [(wbar, until)] = feed(WBarBuilder(FIVE, M), bars)
    assert (wbar.open_time, wbar.close_time) == (0, FIVE - 1)
    assert (wbar.open, wbar.high, wbar.low, wbar.close) == (10, 24, 5, 15)
    assert wbar.mid == 15
    assert wbar.n_base == 5
    assert wbar.jump_count == 2
    assert until == FIVE - 1


def test_gap_finalises_the_partial_bar_with_nominal_close_and_coverage() -> None:
    # base bars of minutes 0 and 1, then minute 7: the first w-bar is finalised by the gap
    bars = [base_bar(0, 1, 2, 1, 2), base_bar(1, 2, 3, 2, 3), base_bar(7, 3, 3, 3, 3)]
    [(wbar, until)] = feed(WBarBuilder(FIVE, M), bars)
    assert wbar.close_time == FIVE - 1  # nominal close, not the last base bar's
    assert wbar.n_base == 2
    assert until == 2 * M - 1


def test_last_incomplete_period_is_not_final_in_batch() -> None:
    arrays = BarArrays.from_bars([base_bar(s, 1, 1, 1, 1) for s in range(7)])
    wbars, _ = aggregate_wbars(arrays, FIVE)
    assert wbars.close_time.tolist() == [FIVE - 1]


def test_window_not_a_multiple_of_base_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a multiple"):
        WBarBuilder(90_000, M)


@settings(max_examples=50, deadline=None)
@given(spec=series_specs(M, 1, 400))
def test_online_builder_equals_batch_aggregation(spec: SeriesSpec) -> None:
    base = make_series(spec)
    for window_ms in (M, FIVE, 3_600_000):
        online = feed(WBarBuilder(window_ms, M), base.to_bars())
        wbars, until = aggregate_wbars(base, window_ms)
        batch = list(zip(wbars.to_bars(), until.tolist(), strict=True))
        assert len(online) == len(batch)
        for (a, ua), (b, ub) in zip(online, batch, strict=True):
            assert ua == ub
            assert replace(a, volume=0.0) == replace(b, volume=0.0)
            assert np.isclose(a.volume, b.volume, rtol=1e-12)


@settings(max_examples=30, deadline=None)
@given(spec=series_specs(M, 1, 200))
def test_bars_of_equals_to_bars_value_and_type(spec: SeriesSpec) -> None:
    base = make_series(spec)
    for arrays in (base, aggregate_wbars(base, FIVE)[0]):
        fast, slow = bars_of(arrays), arrays.to_bars()
        assert fast == slow
        for a, b in zip(fast, slow, strict=True):
            assert [type(getattr(a, f)) for f in a.__slots__] == [
                type(getattr(b, f)) for f in b.__slots__
            ]


def test_bars_of_makes_missing_tick_values_none_and_keeps_a_nan_price() -> None:
    bars = [base_bar(0, 1.0, 2.0, 0.5, 1.5), Bar(M, 2 * M - 1, 1.5, 1.5, 1.5, float("nan"), 0.0)]
    arrays = BarArrays.from_bars(bars)
    fast = bars_of(arrays)
    assert fast[0] == bars[0]
    assert fast[1].mid is None
    assert fast[1].funding_next is None
    assert np.isnan(fast[1].close)
    assert str(fast) == str(arrays.to_bars())
