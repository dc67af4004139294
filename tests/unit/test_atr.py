"""ATR: a hand-derived case, TA-Lib as an independent reference, the online class and the family.

TA-Lib (`talib.ATR`, the C library's Wilder ATR with its default unstable period 0) is the
golden reference: NaN positions must match exactly, values to 1e-9 relative.
"""

from __future__ import annotations

import json
import math
from unittest.mock import patch

import numpy as np
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from s2feature.compute import atr as atr_module
from s2feature.compute.atr import (
    ATR_FAMILY,
    OnlineAtr,
    OnlineAtrFamily,
    atr_batch,
    atr_family_batch,
    true_range_batch,
)
from s2feature.compute.family import FamilyContext
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import HOUR_MS, Bar, BarArrays

# 16 bars (high, low, close). True ranges, TR_i = max(H_i, C_{i-1}) - min(L_i, C_{i-1}):
#   bar 1: prev close 9.5 below the low 10   -> 11 - 9.5     = 1.5  (gap up)
#   bar 2: prev close 10.5 inside [10.25, 10.75] -> 10.75 - 10.25 = 0.5
#   bar 3: prev close 10.5 below the low 11.5 -> 12 - 10.5   = 1.5  (gap up)
#   bar 4: prev close 12 above the high 11    -> 12 - 10     = 2.0  (gap down)
#   bars 5..14: prev close 10 inside [9.5, 10.5] -> 1.0 each
#   bar 15: prev close 10 below the low 12    -> 13 - 10     = 3.0
# ATR_14 (index 14) = (1.5 + 0.5 + 1.5 + 2 + 10 * 1) / 14 = 15.5 / 14
# ATR_15 = (15.5 / 14 * 13 + 3) / 14 = (201.5 + 42) / 196 = 243.5 / 196
HAND_BARS = (
    [(10.0, 9.0, 9.5), (11.0, 10.0, 10.5), (10.75, 10.25, 10.5), (12.0, 11.5, 12.0)]
    + [(11.0, 10.0, 10.0)]
    + [(10.5, 9.5, 10.0)] * 10
    + [(13.0, 12.0, 12.5)]
)
HAND_TR = [1.5, 0.5, 1.5, 2.0] + [1.0] * 10 + [3.0]
HAND_ATR_14 = 15.5 / 14
HAND_ATR_15 = 243.5 / 196


def columns(rows: list[tuple[float, float, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    high, low, close = (np.array(col, dtype=np.float64) for col in zip(*rows, strict=True))
    return high, low, close


def assert_matches_talib(got: np.ndarray, want: np.ndarray) -> None:
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-9, atol=0)


def test_true_range_of_hand_bars_uses_previous_close_on_gaps() -> None:
    tr = true_range_batch(*columns(HAND_BARS))
    assert math.isnan(tr[0])
    assert tr[1:].tolist() == HAND_TR


def test_batch_value_of_hand_bars_is_seed_mean_then_wilder_step() -> None:
    out = atr_batch(*columns(HAND_BARS), period=14)
    assert np.isnan(out[:14]).all()
    assert out[14] == pytest.approx(HAND_ATR_14, rel=1e-15)
    assert out[15] == pytest.approx(HAND_ATR_15, rel=1e-15)


def test_online_value_of_hand_bars_is_none_until_fourteen_true_ranges() -> None:
    atr = OnlineAtr(14)
    values = [atr.update(h, lo, c) for h, lo, c in HAND_BARS]
    assert values[:14] == [None] * 14
    assert values[14] == pytest.approx(HAND_ATR_14, rel=1e-15)
    assert values[15] == pytest.approx(HAND_ATR_15, rel=1e-15)
    assert atr.value == values[15]


def test_value_with_close_on_high_of_flat_bars_is_range() -> None:
    # Every bar spans [9, 11] and closes at 11: each TR is 2, so the ATR is exactly 2.
    rows = [(11.0, 9.0, 11.0)] * 20
    assert atr_batch(*columns(rows), period=5)[5:].tolist() == pytest.approx([2.0] * 15, rel=1e-15)


def test_value_of_flat_prices_is_zero_not_null() -> None:
    rows = [(100.0, 100.0, 100.0)] * 20
    out = atr_batch(*columns(rows), period=14)
    assert out[14:].tolist() == [0.0] * 6


@pytest.mark.parametrize("period", [0, -3, True, 2.5], ids=["zero", "negative", "bool", "float"])
def test_invalid_period_is_rejected(period: object) -> None:
    with pytest.raises(ValueError, match="period"):
        atr_batch(*columns(HAND_BARS), period=period)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="period"):
        OnlineAtr(period)  # type: ignore[arg-type]


@st.composite
def ohlc_series(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random walks with flat stretches, gaps up/down and a price scale from 1e-6 to 1e9."""
    n = draw(st.integers(0, 300))
    scale = 10.0 ** draw(st.integers(-6, 9))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = rng.choice(4, n, p=[0.4, 0.3, 0.15, 0.15])  # walk, flat, gap up, gap down
    moves = np.select(
        [kind == 0, kind == 1, kind == 2, kind == 3],
        [rng.normal(0, 0.02, n), np.zeros(n), np.full(n, 0.3), np.full(n, -0.3)],
    )
    close = scale * np.exp(np.cumsum(moves))
    opened = np.r_[scale, close[:-1]] if n else close
    wick = np.where(kind == 1, 0.0, np.abs(rng.normal(0, 0.01, n)))
    high = np.maximum(opened, close) * (1 + wick)
    low = np.minimum(opened, close) * (1 - wick)
    if kind.size and draw(st.booleans()):  # prices snapped to a tick grid: many exact ties
        tick = scale / 100
        high, low, close = (np.round(x / tick) * tick for x in (high, low, close))
        low = np.minimum(low, close)
        high = np.maximum(high, close)
    return high, low, close


@pytest.mark.parametrize(
    ("direct_max", "chunk_rows"),
    [(atr_module._DIRECT_MAX, atr_module._CHUNK_ROWS), (4, 3)],
    ids=["short_series_filter", "blocked_scan_small_chunks"],
)
@settings(max_examples=150, deadline=None)
@given(series=ohlc_series(), period=st.integers(1, 30))
def test_batch_equals_talib_on_adversarial_series(
    direct_max: int,
    chunk_rows: int,
    series: tuple[np.ndarray, np.ndarray, np.ndarray],
    period: int,
) -> None:
    # The second case pushes tiny series through the blocked scan, several levels deep.
    high, low, close = series
    geometry = {"_DIRECT_MAX": direct_max, "_CHUNK_ROWS": chunk_rows, "_END_ROWS": chunk_rows}
    with patch.multiple(atr_module, **geometry):
        got = atr_batch(high, low, close, period)
    assert_matches_talib(got, talib.ATR(high, low, close, period))


@settings(max_examples=100, deadline=None)
@given(series=ohlc_series(), period=st.integers(1, 30))
def test_online_equals_talib_on_adversarial_series(
    series: tuple[np.ndarray, np.ndarray, np.ndarray], period: int
) -> None:
    high, low, close = series
    atr = OnlineAtr(period)
    got = [atr.update(h, lo, c) for h, lo, c in zip(*series, strict=True)]
    online = np.array([math.nan if v is None else v for v in got], dtype=np.float64)
    assert_matches_talib(online, talib.ATR(high, low, close, period))


def long_series(kind: str, n: int = 50_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    moves = rng.normal(0, 0.01, n)
    if kind == "regimes":  # a crash in a quiet market, then flat hours, then noise again
        moves[: n // 3] *= 1e-4
        moves[n // 3] = -0.7
        moves[n // 3 + 1 : n // 3 + 300] = 0.0  # short enough that no ATR goes subnormal
    close = np.exp(np.cumsum(moves)) * {"huge": 1e9, "tiny": 1e-6}.get(kind, 100.0)
    wick = np.abs(rng.normal(0, 0.003, n)) * (moves != 0)
    opened = np.r_[close[0], close[:-1]]
    return np.maximum(opened, close) * (1 + wick), np.minimum(opened, close) * (1 - wick), close


@pytest.mark.parametrize("kind", ["walk", "huge", "tiny", "regimes"])
@pytest.mark.parametrize("period", [2, 14, 500], ids=["p2", "p14", "p500"])
def test_batch_equals_talib_on_long_series(kind: str, period: int) -> None:
    high, low, close = long_series(kind)
    assert_matches_talib(atr_batch(high, low, close, period), talib.ATR(high, low, close, period))


def test_nan_input_propagates_forward_only() -> None:
    # (TA-Lib differs here: its TR silently ignores a NaN previous close.)
    high, low, close = long_series("walk")
    clean = atr_batch(high, low, close, 14)
    close = close.copy()
    close[30_000] = np.nan  # bar 30_000 still has a TR; from bar 30_001 on TR is NaN
    out = atr_batch(high, low, close, 14)
    np.testing.assert_allclose(out[14:30_001], clean[14:30_001], rtol=1e-12, atol=0)
    assert np.isnan(out[30_001:]).all()


def test_batch_of_series_no_longer_than_period_is_all_null() -> None:
    high, low, close = columns(HAND_BARS[:14])
    assert np.isnan(atr_batch(high, low, close, 14)).all()
    assert atr_batch(high[:0], low[:0], close[:0], 14).shape == (0,)


@pytest.mark.parametrize("cut", [0, 1, 9, 14, 15, 40], ids=lambda c: f"cut{c}")
def test_online_snapshot_restore_continues_exactly(cut: int) -> None:
    high, low, close = long_series("walk", 60)
    whole = OnlineAtr(14)
    expected = [whole.update(h, lo, c) for h, lo, c in zip(high, low, close, strict=True)]
    first = OnlineAtr(14)
    head = [
        first.update(h, lo, c) for h, lo, c in zip(high[:cut], low[:cut], close[:cut], strict=True)
    ]
    second = OnlineAtr(14)
    second.restore(json.loads(json.dumps(first.snapshot(), allow_nan=False)))
    tail = [
        second.update(h, lo, c) for h, lo, c in zip(high[cut:], low[cut:], close[cut:], strict=True)
    ]
    assert head + tail == expected


def test_online_restore_of_other_period_is_rejected() -> None:
    with pytest.raises(ValueError, match="period"):
        OnlineAtr(14).restore(OnlineAtr(7).snapshot())


def test_online_reset_equals_fresh_instance() -> None:
    used = OnlineAtr(3)
    for h, lo, c in HAND_BARS:
        used.update(h, lo, c)
    used.reset()
    assert used.snapshot() == OnlineAtr(3).snapshot()
    assert used.value is None


# ------------------------------------------------------------------------------------ family


def wbar(k: int, high: float, low: float, close: float, mid: float | None) -> Bar:
    return Bar(k * HOUR_MS, (k + 1) * HOUR_MS - 1, close, high, low, close, 1.0, mid=mid)


def context(period: int = 14) -> FamilyContext:
    bundle = ConfigBundle.model_validate({"base_interval": "1h", "windows": {"atr_period": period}})
    return FamilyContext(bundle, HOUR_MS, HOUR_MS)


HAND_WBARS = [
    wbar(k, h, lo, c, mid=None if k == 15 else c * 1.001)
    for k, (h, lo, c) in enumerate(HAND_BARS[:15])
] + [wbar(15, *HAND_BARS[15], mid=None)]


def test_family_pct_is_atr_over_mid_and_null_without_mid() -> None:
    family = OnlineAtrFamily(context())
    rows = []
    for bar in HAND_WBARS:
        family.update(bar)
        rows.append(family.values_at(bar.close_time))
    assert rows[13] == {"atr_14": None, "atr_14_pct": None}
    assert rows[14]["atr_14"] == pytest.approx(HAND_ATR_14, rel=1e-15)
    # bar 14 closes at 10.0 with mid 10.01
    assert rows[14]["atr_14_pct"] == pytest.approx(HAND_ATR_14 / 10.01, rel=1e-15)
    assert rows[15]["atr_14"] == pytest.approx(HAND_ATR_15, rel=1e-15)
    assert rows[15]["atr_14_pct"] is None


def test_family_batch_matches_hand_values_at_each_wbar_close() -> None:
    bars = BarArrays.from_bars(HAND_WBARS)
    out = atr_family_batch(bars, bars.close_time, context())
    assert set(out) == {"atr_14", "atr_14_pct"}
    assert np.isnan(out["atr_14"][:14]).all()
    assert out["atr_14"][14:].tolist() == pytest.approx([HAND_ATR_14, HAND_ATR_15], rel=1e-15)
    assert out["atr_14_pct"][14] == pytest.approx(HAND_ATR_14 / 10.01, rel=1e-15)
    assert np.isnan(out["atr_14_pct"][15])


def test_family_batch_before_first_wbar_is_null() -> None:
    bars = BarArrays.from_bars(HAND_WBARS)
    out = atr_family_batch(bars, np.array([-5], dtype=np.int64), context())
    assert np.isnan(out["atr_14"]).all()
    assert np.isnan(out["atr_14_pct"]).all()


def test_family_period_comes_from_bundle() -> None:
    family = OnlineAtrFamily(context(period=2))
    for bar in HAND_WBARS[:3]:
        family.update(bar)
    # (TR_1 + TR_2) / 2 = (1.5 + 0.5) / 2
    assert family.values_at(HAND_WBARS[2].close_time)["atr_14"] == 1.0


def test_family_rejects_bar_that_does_not_move_forward() -> None:
    family = OnlineAtrFamily(context())
    family.update(HAND_WBARS[1])
    with pytest.raises(ValueError, match="does not follow"):
        family.update(HAND_WBARS[0])


def test_family_is_registered_at_wbar_level() -> None:
    assert ATR_FAMILY.level == "wbar"
    assert ATR_FAMILY.features == ("atr_14", "atr_14_pct")
    assert isinstance(ATR_FAMILY.online(context()), OnlineAtrFamily)
