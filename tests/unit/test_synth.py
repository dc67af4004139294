"""Seeded derivations: finer bars that aggregate back to the real bars, tick fields, S1 events.

Real values: the OHLCV of the Coinbase BTC/USD hourly file. Everything else here is derived with
the seeds written in each test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from s2feature.data.importers import load_klines
from s2feature.data.synth import derive_finer_bars, derive_ticks, events_from_bars
from s2feature.domain import Bar, BarArrays, SeriesId

BTC = Path(__file__).resolve().parents[2] / "datasets" / "Coinbase_BTCUSD_1h_2017-2018.csv"
MINUTE = 60_000
HOUR = 3_600_000
FUT = SeriesId("coinbase", "fut", "BTCUSD")
SPOT = SeriesId("coinbase", "spot", "BTCUSD")


@pytest.fixture(scope="module")
def hourly() -> BarArrays:
    return load_klines(BTC, "1h")


@pytest.fixture(scope="module")
def minutes(hourly: BarArrays) -> BarArrays:
    return derive_finer_bars(hourly, MINUTE, seed=1)


def one_bar(o: float, h: float, lo: float, c: float, v: float, span: int = HOUR) -> BarArrays:
    return BarArrays.from_bars([Bar(0, span - 1, o, h, lo, c, v)])


def aggregate(sub: BarArrays, k: int) -> dict[str, npt.NDArray[Any]]:
    """Independent re-aggregation of k consecutive sub-bars per bar."""
    return {
        "open": sub.open.reshape(-1, k)[:, 0],
        "high": sub.high.reshape(-1, k).max(axis=1),
        "low": sub.low.reshape(-1, k).min(axis=1),
        "close": sub.close.reshape(-1, k)[:, -1],
        "volume": sub.volume.reshape(-1, k).sum(axis=1),
        "open_time": sub.open_time.reshape(-1, k)[:, 0],
    }


def assert_aggregates_back(sub: BarArrays, bars: BarArrays, k: int) -> None:
    back = aggregate(sub, k)
    for name in ("open", "high", "low", "close", "open_time"):
        np.testing.assert_array_equal(back[name], getattr(bars, name), err_msg=name)
    np.testing.assert_allclose(back["volume"], bars.volume, rtol=1e-12, atol=0)
    assert np.all(sub.high >= np.maximum(sub.open, sub.close))
    assert np.all(sub.low <= np.minimum(sub.open, sub.close))
    assert np.all(sub.volume >= 0)


# --- finer bars ----------------------------------------------------------------------------------


def test_real_btc_hours_split_into_minutes_that_aggregate_back_exactly(
    hourly: BarArrays, minutes: BarArrays
) -> None:
    assert len(minutes) == 13_165 * 60 == 789_900
    assert_aggregates_back(minutes, hourly, 60)
    assert np.all(np.diff(minutes.open_time) > 0)
    assert np.all(minutes.open_time % MINUTE == 0)
    np.testing.assert_array_equal(minutes.close_time, minutes.open_time + MINUTE - 1)


def test_minutes_inside_an_hour_are_continuous(minutes: BarArrays) -> None:
    opens = minutes.open.reshape(-1, 60)
    closes = minutes.close.reshape(-1, 60)
    np.testing.assert_array_equal(opens[:, 1:], closes[:, :-1])


def test_minutes_come_out_like_imported_klines(minutes: BarArrays) -> None:
    np.testing.assert_array_equal(minutes.mid, minutes.close)
    assert np.isnan(minutes.best_bid).all()
    assert np.isnan(minutes.funding_next).all()


def test_minute_volatility_scales_like_a_random_walk(hourly: BarArrays, minutes: BarArrays) -> None:
    # A Brownian path gives minute log returns with about 1/sqrt(60) of the hourly dispersion;
    # seed 1 gives a ratio near 1 (a path pinned at extremes is a little rougher than a free walk).
    minute_std = float(np.std(np.log(minutes.close / minutes.open)))
    hour_std = float(np.std(np.log(hourly.close / hourly.open)))
    assert 0.7 < minute_std * np.sqrt(60) / hour_std < 1.5


def test_real_zero_volume_flat_hour_splits_into_flat_zero_minutes(
    hourly: BarArrays, minutes: BarArrays
) -> None:
    # Real row "2018-08-10 03-PM,BTCUSD,6556.25,6556.25,6556.25,6556.25,0.0,0.0".
    hour = int(np.searchsorted(hourly.open_time, 1_533_859_200_000 + 15 * HOUR))
    assert hourly.volume[hour] == 0.0
    block = slice(hour * 60, hour * 60 + 60)
    for name in ("open", "high", "low", "close"):
        assert (getattr(minutes, name)[block] == 6556.25).all(), name
    assert (minutes.volume[block] == 0.0).all()


@pytest.mark.parametrize(
    ("bar", "span", "k"),
    [
        ((100.0, 110.0, 90.0, 105.0, 7.0), HOUR, 60),
        ((110.0, 110.0, 90.0, 95.0, 7.0), HOUR, 60),  # opens on the high
        ((100.0, 110.0, 90.0, 90.0, 7.0), HOUR, 60),  # closes on the low
        ((90.0, 110.0, 90.0, 110.0, 7.0), HOUR, 60),  # opens on the low, closes on the high
        ((110.0, 110.0, 90.0, 110.0, 7.0), HOUR, 60),  # opens and closes on the high
        ((100.0, 100.0, 100.0, 100.0, 3.0), HOUR, 60),  # flat with volume
        ((100.0, 110.0, 90.0, 105.0, 7.0), 2 * MINUTE, 2),  # both extremes inside, one free point
        ((100.0, 110.0, 90.0, 105.0, 7.0), 3 * MINUTE, 3),
        ((100.0, 110.0, 90.0, 105.0, 7.0), 5 * MINUTE, 5),
    ],
    ids=[
        "extremes-inside",
        "open-is-high",
        "close-is-low",
        "open-low-close-high",
        "open-and-close-high",
        "flat",
        "two-sub-bars",
        "three-sub-bars",
        "five-sub-bars",
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
def test_special_bars_aggregate_back_exactly(
    bar: tuple[float, float, float, float, float], span: int, k: int, seed: int
) -> None:
    bars = one_bar(*bar, span=span)
    sub = derive_finer_bars(bars, MINUTE, seed=seed)
    assert len(sub) == k
    assert_aggregates_back(sub, bars, k)


def test_flat_bar_stays_flat_and_splits_its_volume() -> None:
    sub = derive_finer_bars(one_bar(100.0, 100.0, 100.0, 100.0, 3.0), MINUTE, seed=5)
    for name in ("open", "high", "low", "close"):
        assert (getattr(sub, name) == 100.0).all()
    assert sub.volume.sum() == pytest.approx(3.0, rel=1e-15)


def test_same_interval_out_copies_the_bars() -> None:
    bars = one_bar(100.0, 110.0, 90.0, 105.0, 7.0)
    sub = derive_finer_bars(bars, HOUR, seed=3)
    assert sub.to_bars() == [Bar(0, HOUR - 1, 100.0, 110.0, 90.0, 105.0, 7.0, mid=105.0)]


def test_same_seed_same_bars_other_seed_other_bars(hourly: BarArrays) -> None:
    bars = hourly.slice(0, 200)
    first, again = derive_finer_bars(bars, MINUTE, 7), derive_finer_bars(bars, MINUTE, 7)
    other = derive_finer_bars(bars, MINUTE, 8)
    for name in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.close, other.close)
    assert not np.array_equal(first.volume, other.volume)


@pytest.mark.parametrize(
    ("bars", "base_ms_out", "message"),
    [
        (one_bar(5, 6, 4, 5, 1), 7 * MINUTE, "cannot be split"),
        (one_bar(5, 6, 4, 5, 1), 0, "must be positive"),
        (one_bar(5, 4.5, 4, 5, 1), MINUTE, "violate"),
        (
            BarArrays.from_bars(
                [Bar(0, HOUR - 1, 5, 6, 4, 5, 1), Bar(HOUR, HOUR + 5 * MINUTE - 1, 5, 6, 4, 5, 1)]
            ),
            MINUTE,
            "different intervals",
        ),
    ],
    ids=["not-a-divisor", "zero-interval", "inconsistent-ohlc", "mixed-intervals"],
)
def test_finer_bars_reject_bad_input(bars: BarArrays, base_ms_out: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        derive_finer_bars(bars, base_ms_out, seed=0)


@st.composite
def valid_bars(draw: st.DrawFn) -> BarArrays:
    price = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)
    n = draw(st.integers(1, 8))
    out = []
    for i in range(n):
        quotes = sorted(draw(st.lists(price, min_size=4, max_size=4)))
        low, high = quotes[0], quotes[3]
        o, c = draw(st.permutations([quotes[1], quotes[2]]))
        if draw(st.booleans()):  # extremes on the open or close, and flat bars, often
            o = draw(st.sampled_from([low, high, o]))
            c = draw(st.sampled_from([low, high, c, o]))
            low, high = min(low, o, c), max(high, o, c)
        volume = draw(st.sampled_from([0.0, 1.0, 0.1, 123456.789]))
        out.append(Bar(i * HOUR, (i + 1) * HOUR - 1, o, high, low, c, volume))
    return BarArrays.from_bars(out)


@given(
    bars=valid_bars(),
    k=st.sampled_from([1, 2, 3, 4, 5, 12, 60]),
    seed=st.integers(0, 2**32),
)
def test_any_valid_bars_aggregate_back_exactly(bars: BarArrays, k: int, seed: int) -> None:
    sub = derive_finer_bars(bars, HOUR // k, seed)
    assert_aggregates_back(sub, bars, k)


# --- ticks ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minute_ticks(minutes: BarArrays) -> BarArrays:
    return derive_ticks(minutes.slice(0, 200_000), seed=2, market="fut")


def test_ticks_bracket_mid_with_positive_depth_and_quantities(minute_ticks: BarArrays) -> None:
    t = minute_ticks
    np.testing.assert_array_equal(t.mid, t.close)
    assert np.all(t.best_bid < t.mid)
    assert np.all(t.mid < t.best_ask)
    assert np.all((t.depth_top1_usdt >= 2e5) & (t.depth_top1_usdt <= 5e6))
    assert np.all(t.bid_qty > 0)
    assert np.all(t.ask_qty > 0)
    notional = t.bid_qty * t.best_bid + t.ask_qty * t.best_ask
    np.testing.assert_allclose(notional, t.depth_top1_usdt, rtol=1e-12)


def test_spreads_are_a_few_bps_and_within_the_default_bounds(minute_ticks: BarArrays) -> None:
    spread_bps = (minute_ticks.best_ask - minute_ticks.best_bid) / minute_ticks.mid * 1e4
    assert 1.0 < float(np.median(spread_bps)) < 5.0
    assert float(spread_bps.max()) <= 100.0 + 1e-9  # the half-spread is capped at 50 bps


def test_wide_bars_get_wider_spreads(hourly: BarArrays) -> None:
    ticks = derive_ticks(hourly, seed=4, market="spot")
    range_bps = (hourly.high - hourly.low) / hourly.close * 1e4
    spread_bps = (ticks.best_ask - ticks.best_bid) / ticks.mid * 1e4
    wide, narrow = range_bps > np.quantile(range_bps, 0.9), range_bps < np.quantile(range_bps, 0.1)
    assert np.median(spread_bps[wide]) > 2 * np.median(spread_bps[narrow])


def test_fut_funding_mean_reverts_around_one_bp(minute_ticks: BarArrays) -> None:
    funding = minute_ticks.funding_next
    assert np.isfinite(funding).all()
    # 200_000 minutes are about 46 time constants of 3 days: the mean is near 1e-4.
    assert abs(float(funding.mean()) - 1e-4) < 5e-5
    assert float(np.abs(np.diff(funding)).max()) < 2e-5  # slow: no jumps minute to minute


def test_spot_has_no_funding_and_ohlcv_stays_real(hourly: BarArrays) -> None:
    ticks = derive_ticks(hourly, seed=4, market="spot", depth_split=True)
    assert np.isnan(ticks.funding_next).all()
    assert ticks.depth_split.all()
    for name in ("open_time", "close_time", "open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(ticks, name), getattr(hourly, name))


def test_ticks_are_determined_by_the_seed(hourly: BarArrays) -> None:
    bars = hourly.slice(0, 100)
    first, again = derive_ticks(bars, 9, "fut"), derive_ticks(bars, 9, "fut")
    other = derive_ticks(bars, 10, "fut")
    for name in ("best_bid", "best_ask", "depth_top1_usdt", "funding_next", "bid_qty"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
        assert not np.array_equal(getattr(first, name), getattr(other, name))


# --- events --------------------------------------------------------------------------------------


def decode(entry: dict[str, str]) -> dict[str, Any]:
    if set(entry) == {"data"}:
        return dict(json.loads(entry["data"]))
    fields: dict[str, Any] = {}
    for name, text in entry.items():
        fields[name] = text if name in ("source", "symbol") else json.loads(text)
    return fields


@pytest.fixture(scope="module")
def tick_minutes(minutes: BarArrays) -> BarArrays:
    return derive_ticks(minutes.slice(0, 240), seed=3, market="fut", depth_split=True)


@pytest.mark.parametrize("encoding", ["flat", "json"], ids=["flat", "json"])
def test_last_event_of_each_bar_decodes_to_the_exact_bar(
    tick_minutes: BarArrays, encoding: Any
) -> None:
    events = [decode(e) for e in events_from_bars(tick_minutes, FUT, 4, seed=5, encoding=encoding)]
    assert len(events) == 240 * 4
    for bar, last in zip(tick_minutes.to_bars(), events[3::4], strict=True):
        assert last["kline"] == {
            "open": bar.open,
            "high": bar.high,
            "low": bar.low,
            "close": bar.close,
            "volume": bar.volume,
            "open_time": bar.open_time,
            "close_time": bar.close_time,
        }
        assert (last["mid"], last["best_bid"], last["best_ask"]) == (
            bar.mid,
            bar.best_bid,
            bar.best_ask,
        )
        assert last["depth_top1_usdt"] == bar.depth_top1_usdt
        assert last["funding_next"] == bar.funding_next
        assert (last["best_bid_qty"], last["best_ask_qty"]) == (bar.bid_qty, bar.ask_qty)
        assert last["ts"] <= bar.close_time
        assert (last["source"], last["symbol"]) == ("coinbase", "BTCUSD")


def test_events_have_increasing_ts_inside_their_bar(tick_minutes: BarArrays) -> None:
    events = [decode(e) for e in events_from_bars(tick_minutes, FUT, 5, seed=6)]
    ts = np.array([e["ts"] for e in events])
    assert np.all(np.diff(ts) > 0)
    for e in events:
        assert e["kline"]["open_time"] <= e["ts"] <= e["kline"]["close_time"]


def test_next_bar_first_event_finalises_the_previous_bar_and_the_last_bar_stays_open(
    tick_minutes: BarArrays,
) -> None:
    events = [decode(e) for e in events_from_bars(tick_minutes, FUT, 3, seed=6)]
    firsts = events[3::3]
    np.testing.assert_array_less(tick_minutes.close_time[:-1], [e["ts"] for e in firsts])
    assert max(e["ts"] for e in events) <= tick_minutes.close_time[-1]


def test_partial_klines_grow_towards_the_final_values(tick_minutes: BarArrays) -> None:
    m = 6
    events = [decode(e) for e in events_from_bars(tick_minutes, FUT, m, seed=7)]
    for start in range(0, len(events), m):
        klines = [e["kline"] for e in events[start : start + m]]
        highs = [k["high"] for k in klines]
        lows = [k["low"] for k in klines]
        volumes = [k["volume"] for k in klines]
        assert highs == sorted(highs)
        assert lows == sorted(lows, reverse=True)
        assert volumes == sorted(volumes)
        for k in klines:
            assert k["low"] <= min(k["open"], k["close"]) <= max(k["open"], k["close"]) <= k["high"]


def test_earlier_events_carry_valid_other_ticks(tick_minutes: BarArrays) -> None:
    events = [decode(e) for e in events_from_bars(tick_minutes, FUT, 4, seed=8)]
    earlier = [e for i, e in enumerate(events) if i % 4 != 3]
    assert all(e["best_bid"] < e["mid"] < e["best_ask"] for e in earlier)
    assert all(e["mid"] == e["kline"]["close"] for e in earlier)
    assert any(e["mid"] != events[i - i % 4 + 3]["mid"] for i, e in enumerate(events) if i % 4 != 3)


def test_split_depth_sums_exactly_to_the_top_of_book_depth(tick_minutes: BarArrays) -> None:
    events = [decode(e) for e in events_from_bars(tick_minutes, FUT, 3, seed=9)]
    for e in events:
        assert e["depth_bid_usdt"] + e["depth_ask_usdt"] == e["depth_top1_usdt"]
        assert e["depth_bid_usdt"] > 0
        assert e["depth_ask_usdt"] > 0


def test_spot_events_have_no_funding_and_unsplit_depth_has_no_sides(hourly: BarArrays) -> None:
    bars = derive_ticks(hourly.slice(0, 5), seed=1, market="spot")
    entries = events_from_bars(bars, SPOT, 2, seed=1)
    assert all("funding_next" not in e and "depth_bid_usdt" not in e for e in entries)
    assert all(isinstance(v, str) for e in entries for v in e.values())


def test_events_are_determined_by_the_seed(tick_minutes: BarArrays) -> None:
    bars = tick_minutes.slice(0, 20)
    assert events_from_bars(bars, FUT, 3, seed=1) == events_from_bars(bars, FUT, 3, seed=1)
    assert events_from_bars(bars, FUT, 3, seed=1) != events_from_bars(bars, FUT, 3, seed=2)


@pytest.mark.parametrize(
    ("events_per_bar", "tick_seed", "message"),
    [(0, 1, "at least 1"), (60_001, 1, "no room"), (2, None, "derive_ticks")],
    ids=["no-events", "more-events-than-ms", "bars-without-ticks"],
)
def test_events_reject_bad_input(
    hourly: BarArrays, events_per_bar: int, tick_seed: int | None, message: str
) -> None:
    minutes = derive_finer_bars(hourly.slice(0, 1), MINUTE, seed=0).slice(0, 3)
    if tick_seed is not None:
        minutes = derive_ticks(minutes, tick_seed, "fut")
    with pytest.raises(ValueError, match=message):
        events_from_bars(minutes, FUT, events_per_bar, seed=0)
