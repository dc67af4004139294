"""Correlation family: rho of FX and symbol w-bar log returns, and its rolling z-score.

Series are written as {slot: close}, slot k being the w-bar closing at `close_time(k)`. Every
case runs through the online class and the batch function, which must agree. Most cases use a
bundle with p = z = 3 so that a window is small enough to derive by hand.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2feature.compute.correlation import (
    CORRELATION_FAMILY,
    OnlineCorrelationFamily,
    correlation_family_batch,
)
from s2feature.compute.family import FamilyContext, FxCloseTable
from s2feature.config.bundle import ConfigBundle, WindowLengths
from s2feature.domain import HOUR_MS, Bar, BarArrays, FeatureValue

DATASETS = Path(__file__).resolve().parents[2] / "datasets"
W = HOUR_MS
FIRST_SLOT = 420_000  # hours since the epoch; any integer works
RHO = "rho_usdttwd_14"
RHO_Z = "rho_fx_btc_roll_z"
Values = dict[str, FeatureValue]


def close_time(slot: int) -> int:
    return (FIRST_SLOT + slot) * W + W - 1


def small_bundle(p: int = 3, z: int = 3) -> ConfigBundle:
    return ConfigBundle(base_interval="1h", windows=WindowLengths(rho_period=p, rho_z_period=z))


def symbol_bars(closes: Mapping[int, float]) -> list[Bar]:
    return [
        Bar(close_time(s) - W + 1, close_time(s), c, c, c, c, 1.0)
        for s, c in sorted(closes.items())
    ]


def fx_table(fx: Mapping[int, float]) -> FxCloseTable:
    table = FxCloseTable()
    for slot, close in fx.items():
        table.add(close_time(slot), close)
    return table


def contexts(
    bundle: ConfigBundle, fx: Mapping[int, float] | None
) -> tuple[FamilyContext, FamilyContext]:
    """(online, batch) contexts; no FX series when `fx` is None."""
    if fx is None:
        plain = FamilyContext(bundle, W, W)
        return plain, plain
    slots = sorted(fx)
    arrays = (
        np.array([close_time(s) for s in slots], dtype=np.int64),
        np.array([fx[s] for s in slots], dtype=np.float64),
    )
    return (
        FamilyContext(bundle, W, W, fx_online=fx_table(fx)),
        FamilyContext(bundle, W, W, fx_batch=arrays),
    )


def assert_same(online: FeatureValue, batch: float, label: str) -> None:
    if online is None:
        assert np.isnan(batch), f"{label}: online null, batch {batch}"
    else:
        assert isinstance(online, float)
        assert math.isclose(online, batch, rel_tol=1e-9, abs_tol=1e-12), (label, online, batch)


def run_online(instance: OnlineCorrelationFamily, bars: list[Bar]) -> list[Values]:
    out = []
    for bar in bars:
        instance.update(bar)
        out.append(instance.values_at(bar.close_time))
    return out


def both_paths(
    symbol: Mapping[int, float], fx: Mapping[int, float] | None, bundle: ConfigBundle
) -> dict[int, Values]:
    """Values at every symbol bar close by slot, from both paths, asserted equal."""
    bars = symbol_bars(symbol)
    online_ctx, batch_ctx = contexts(bundle, fx)
    online = run_online(OnlineCorrelationFamily(online_ctx), bars)
    t0s = np.array([b.close_time for b in bars], dtype=np.int64)
    batch = correlation_family_batch(BarArrays.from_bars(bars), t0s, batch_ctx)
    for i, row in enumerate(online):
        for name in CORRELATION_FAMILY.features:
            assert_same(row[name], float(batch[name][i]), f"bar {i} {name}")
    return dict(zip(sorted(symbol), online, strict=True))


def rho_by_slot(values: dict[int, Values]) -> dict[int, FeatureValue]:
    return {slot: v[RHO] for slot, v in values.items()}


def from_returns(returns: list[float], start: float = 100.0) -> dict[int, float]:
    """Closes at slots 0..len(returns) whose log returns are `returns`."""
    closes = start * np.exp(np.concatenate([[0.0], np.cumsum(returns)]))
    return dict(enumerate(closes.tolist()))


# Symbol returns of a rough random walk, shared by several cases.
WALK = [0.01, -0.02, 0.015, 0.003, -0.007, 0.02, -0.011, 0.004, 0.009, -0.016]


def test_perfectly_correlated_returns_give_one() -> None:
    symbol = from_returns(WALK)
    fx = {s: c**2 for s, c in symbol.items()}  # FX returns are exactly twice the symbol's
    rho = rho_by_slot(both_paths(symbol, fx, small_bundle()))
    # warm-up: returns exist from slot 1, so the first window of 3 ends at slot 3
    assert [rho[s] for s in (0, 1, 2)] == [None, None, None]
    for slot in range(3, 11):
        assert rho[slot] == pytest.approx(1.0, abs=1e-12)


def test_anti_correlated_returns_give_minus_one() -> None:
    symbol = from_returns(WALK)
    fx = {s: 1.0 / c for s, c in symbol.items()}  # FX returns are the symbol's negated
    rho = rho_by_slot(both_paths(symbol, fx, small_bundle()))
    for slot in range(3, 11):
        assert rho[slot] == pytest.approx(-1.0, abs=1e-12)


def test_rho_of_a_hand_derived_window() -> None:
    # fx returns x = (0.01, 0.02, 0.06), symbol returns y = (0.01, 0.03, 0.02)
    # means 0.03 and 0.02; dx = (-0.02, -0.01, 0.03), dy = (-0.01, 0.01, 0)
    # sxy = 2e-4 - 1e-4 + 0 = 1e-4; sxx = 4e-4 + 1e-4 + 9e-4 = 14e-4; syy = 2e-4
    # rho = 1e-4 / sqrt(14e-4 * 2e-4) = 1 / sqrt(28)
    values = both_paths(
        from_returns([0.01, 0.03, 0.02]), from_returns([0.01, 0.02, 0.06]), small_bundle()
    )
    assert values[3][RHO] == pytest.approx(1.0 / math.sqrt(28.0), rel=1e-9)


def test_rho_over_fourteen_returns_matches_numpy_corrcoef() -> None:
    rng = np.random.default_rng(7)
    sym_returns = rng.normal(0.0, 0.01, 20)
    fx_returns = 0.3 * sym_returns + rng.normal(0.0, 0.002, 20)
    values = both_paths(
        from_returns(sym_returns.tolist()),
        from_returns(fx_returns.tolist(), start=31.5),
        ConfigBundle(base_interval="1h"),
    )
    assert all(values[s][RHO] is None for s in range(14))  # 14 returns exist from slot 14 on
    for t0 in range(14, 21):
        window = slice(t0 - 14, t0)  # returns at slots t0-13..t0 are items t0-14..t0-1
        expected = np.corrcoef(fx_returns[window], sym_returns[window])[0, 1]
        assert values[t0][RHO] == pytest.approx(expected, rel=1e-9)


def test_an_fx_gap_nulls_exactly_the_windows_that_touch_it() -> None:
    symbol = from_returns(WALK)
    fx = {s: c for s, c in from_returns(WALK[::-1], start=31.0).items() if s != 5}
    rho = rho_by_slot(both_paths(symbol, fx, small_bundle()))
    # No FX close at slot 5: no FX return at 5 (needs 5 and 4) nor at 6 (needs 6 and 5).
    # A window ending at t0 uses returns at t0-2..t0, so t0 in 5..8 touches the gap.
    assert [s for s in range(3, 11) if rho[s] is None] == [5, 6, 7, 8]


def test_an_fx_gap_is_never_bridged_by_forward_filling() -> None:
    symbol = from_returns(WALK)
    fx = from_returns(WALK[::-1], start=31.0)
    filled = dict(fx)
    filled[5] = filled[4]  # what a forward fill would have made of a missing slot 5
    del fx[5]
    rho_gap = rho_by_slot(both_paths(symbol, fx, small_bundle()))
    rho_filled = rho_by_slot(both_paths(symbol, filled, small_bundle()))
    assert all(rho_filled[s] is not None for s in (5, 6, 7, 8))
    assert all(rho_gap[s] is None for s in (5, 6, 7, 8))


def test_a_symbol_gap_nulls_the_windows_that_need_its_returns() -> None:
    symbol = from_returns(WALK)
    del symbol[5]  # no bar at 5: no symbol return at 6 either
    fx = from_returns(WALK[::-1], start=31.0)
    rho = rho_by_slot(both_paths(symbol, fx, small_bundle()))
    assert [s for s in sorted(rho) if s >= 3 and rho[s] is None] == [6, 7, 8]


@pytest.mark.parametrize("bad_close", [0.0, -1.0, float("nan")], ids=["zero", "negative", "nan"])
def test_an_unusable_fx_close_counts_as_absent(bad_close: float) -> None:
    symbol = from_returns(WALK)
    fx = from_returns(WALK[::-1], start=31.0)
    fx[5] = bad_close
    rho = rho_by_slot(both_paths(symbol, fx, small_bundle()))
    assert [s for s in range(3, 11) if rho[s] is None] == [5, 6, 7, 8]


@pytest.mark.parametrize(
    ("flat_side", "closes"),
    [
        ("symbol", [100.0] * 6),  # all returns 0
        ("fx", [100.0] * 6),
        ("symbol", [100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0]),  # all returns ln 2, not 0
    ],
    ids=["flat_symbol", "flat_fx", "constant_nonzero_returns"],
)
def test_zero_variance_on_either_side_gives_null(flat_side: str, closes: list[float]) -> None:
    flat = dict(enumerate(closes))
    moving = from_returns(WALK[:5])
    symbol, fx = (flat, moving) if flat_side == "symbol" else (moving, flat)
    values = both_paths(symbol, fx, small_bundle())
    assert all(v[RHO] is None and v[RHO_Z] is None for v in values.values())


def test_zscore_of_a_hand_derived_rho_sequence() -> None:
    # closes chosen so that the returns are exact multiples of L = ln 2:
    # symbol y = (L, -L, L, L, -L), fx x = (L, -L, L, L, 2L) for slots 1..5.
    # rho(3) over slots 1..3: x == y -> 1; rho(4) over 2..4: x == y -> 1;
    # rho(5) over 3..5: y = (L, L, -L), x = (L, L, 2L) -> -1.
    # z(5) of (1, 1, -1): mean 1/3, deviations (2/3, 2/3, -4/3),
    # std = sqrt((4/9 + 4/9 + 16/9) / 2) = 2 / sqrt(3), z = (-4/3) / (2 / sqrt(3)) = -2 / sqrt(3)
    symbol = dict(enumerate([100.0, 200.0, 100.0, 200.0, 400.0, 200.0]))
    fx = dict(enumerate([100.0, 200.0, 100.0, 200.0, 400.0, 1600.0]))
    values = both_paths(symbol, fx, small_bundle())
    assert [values[s][RHO] for s in (3, 4)] == [1.0, 1.0]
    assert values[5][RHO] == pytest.approx(-1.0, abs=1e-12)
    assert [values[s][RHO_Z] for s in (3, 4)] == [None, None]  # fewer than z = 3 rhos
    assert values[5][RHO_Z] == pytest.approx(-2.0 / math.sqrt(3.0), rel=1e-9)


def test_zscore_is_null_when_all_rhos_are_equal() -> None:
    symbol = from_returns(WALK)
    values = both_paths(symbol, dict(symbol), small_bundle())  # rho is exactly 1 everywhere
    assert all(values[s][RHO] == 1.0 for s in range(3, 11))
    assert all(v[RHO_Z] is None for v in values.values())


def test_zscore_needs_z_consecutive_rhos() -> None:
    symbol = from_returns(WALK)
    fx = {s: c for s, c in from_returns(WALK[::-1], start=31.0).items() if s != 5}
    values = both_paths(symbol, fx, small_bundle())
    # rho exists at 3, 4, 9, 10 only (the gap nulls 5..8): never 3 in a row
    assert all(v[RHO_Z] is None for v in values.values())


def test_without_an_fx_series_both_features_are_null() -> None:
    values = both_paths(from_returns(WALK), None, small_bundle())
    assert all(v == {RHO: None, RHO_Z: None} for v in values.values())


def test_online_reads_fx_closes_when_evaluating_not_when_fed() -> None:
    symbol = from_returns(WALK)
    fx = from_returns(WALK[::-1], start=31.0)
    late = dict(fx)
    del late[6]  # FX slot 6 arrives only after the symbol's slot 6 was evaluated
    table = fx_table(late)
    online = OnlineCorrelationFamily(FamilyContext(small_bundle(), W, W, fx_online=table))
    bars = symbol_bars(symbol)
    before = run_online(online, bars[:7])
    table.add(close_time(6), fx[6])
    after = run_online(online, bars[7:])
    complete = both_paths(symbol, fx, small_bundle())
    assert before[6][RHO] is None  # slot 6 was evaluated without its FX close
    # slot 7 uses FX returns at 5..7, read at evaluation time: the late close is there
    for slot, row in zip(range(7, 11), after, strict=True):
        assert row[RHO] == complete[slot][RHO]


def test_a_revised_latest_fx_close_is_read_again() -> None:
    symbol = from_returns(WALK)
    fx = from_returns(WALK[::-1], start=31.0)
    table = fx_table(fx)
    online = OnlineCorrelationFamily(FamilyContext(small_bundle(), W, W, fx_online=table))
    bars = symbol_bars(symbol)
    run_online(online, bars[:6])
    revised = dict(fx)
    revised[5] = fx[5] * 1.01
    table.add(close_time(5), revised[5])
    after = run_online(online, bars[6:])
    expected = both_paths(symbol, revised, small_bundle())
    for slot, row in zip(range(6, 11), after, strict=True):
        assert row[RHO] == pytest.approx(expected[slot][RHO], rel=1e-12)


def test_values_at_a_time_without_a_bar_is_null_and_keeps_the_run() -> None:
    symbol = from_returns(WALK)
    fx = from_returns(WALK[::-1], start=31.0)
    online = OnlineCorrelationFamily(FamilyContext(small_bundle(), W, W, fx_online=fx_table(fx)))
    bars = symbol_bars(symbol)
    run_online(online, bars[:5])
    assert online.values_at(close_time(4) + W // 2) == {RHO: None, RHO_Z: None}
    # slot 5 still has the z-score of rhos 3..5, as if the odd query had not happened
    expected = both_paths(symbol, fx, small_bundle())
    assert run_online(online, bars[5:6])[0] == expected[5]


@st.composite
def gapped_pair(draw: st.DrawFn) -> tuple[dict[int, float], dict[int, float], ConfigBundle]:
    """A symbol and an FX series with random gaps, random flat runs in the symbol, random p, z.

    Hypothesis draws the shape (length, gap and flat probabilities, p, z, seed); numpy draws the
    values. Only the symbol gets flat runs: the FX returns stay continuous so that no window is
    exactly degenerate on both sides. (Where both sides are degenerate, e.g. one shared spike in
    flat series, the true rho is exactly +-1 and a z-score of such rhos is rounding noise; the
    hand cases above cover those.)
    """
    n = draw(st.integers(8, 200))
    sym_gap, fx_gap = (
        draw(st.sampled_from([0.0, 0.02, 0.1, 0.5])),
        draw(st.sampled_from([0.0, 0.02, 0.1, 0.5])),
    )
    flat_prob = draw(st.sampled_from([0.0, 0.3, 0.9]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sym_returns = rng.normal(0.0, 0.01, n - 1)
    sym_returns[rng.random(n - 1) < flat_prob] = 0.0
    fx_returns = 0.5 * sym_returns + rng.normal(0.0, 0.004, n - 1)
    symbol = from_returns(sym_returns.tolist())
    fx = from_returns(fx_returns.tolist(), start=31.0)
    symbol = {s: c for s, c in symbol.items() if rng.random() >= sym_gap} or {0: 100.0}
    fx = {s: c for s, c in fx.items() if rng.random() >= fx_gap}
    p = draw(st.integers(3, 14))
    z = draw(st.integers(3, 30))
    return symbol, fx, small_bundle(p, z)


@settings(max_examples=150, deadline=None)
@given(case=gapped_pair())
def test_online_equals_batch_with_random_gaps_in_both_series(
    case: tuple[dict[int, float], dict[int, float], ConfigBundle],
) -> None:
    symbol, fx, bundle = case
    both_paths(symbol, fx, bundle)  # asserts rtol 1e-9 agreement at every bar


@settings(max_examples=60, deadline=None)
@given(case=gapped_pair(), cut=st.floats(0.0, 1.0))
def test_snapshot_restore_in_the_middle_equals_an_uninterrupted_run(
    case: tuple[dict[int, float], dict[int, float], ConfigBundle], cut: float
) -> None:
    symbol, fx, bundle = case
    bars = symbol_bars(symbol)
    k = int(cut * len(bars))
    ctx = FamilyContext(bundle, W, W, fx_online=fx_table(fx))
    whole = run_online(OnlineCorrelationFamily(ctx), bars)
    first = OnlineCorrelationFamily(ctx)
    head = run_online(first, bars[:k])
    second = OnlineCorrelationFamily(ctx)
    second.restore(json.loads(json.dumps(first.snapshot(), allow_nan=False)))
    assert head + run_online(second, bars[k:]) == whole


def test_reset_equals_a_fresh_instance() -> None:
    symbol = from_returns(WALK)
    fx = from_returns(WALK[::-1], start=31.0)
    ctx = FamilyContext(small_bundle(), W, W, fx_online=fx_table(fx))
    bars = symbol_bars(symbol)
    used = OnlineCorrelationFamily(ctx)
    run_online(used, bars[:8])
    used.reset()
    assert used.snapshot() == OnlineCorrelationFamily(ctx).snapshot()
    assert run_online(used, bars) == run_online(OnlineCorrelationFamily(ctx), bars)


# ----------------------------------------------------------------------------- real data
# Real hourly closes: Coinbase BTC/USD as the symbol, Dukascopy EUR/USD standing in for the FX
# series (datasets/PROVENANCE.md). EUR/USD has no bars over weekends; BTC trades every hour.


def read_hourly_closes(
    name: str, header_lines: int, time_format: str, close_column: int
) -> dict[int, float]:
    """{slot: close} of a dataset file, the slot taken from each row's bar opening hour (UTC)."""
    with (DATASETS / name).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[header_lines:]
    closes = {}
    for row in rows:
        opened = datetime.strptime(row[0], time_format).replace(tzinfo=UTC)
        slot = int(opened.timestamp() * 1000) // W - FIRST_SLOT
        closes[slot] = float(row[close_column])
    return closes


def slot_of(year: int, month: int, day: int, hour: int) -> int:
    return int(datetime(year, month, day, hour, tzinfo=UTC).timestamp() * 1000) // W - FIRST_SLOT


def test_real_btc_and_eurusd_rho_is_null_exactly_around_fx_weekends() -> None:
    btc = read_hourly_closes("Coinbase_BTCUSD_1h_2017-2018.csv", 2, "%Y-%m-%d %I-%p", 5)
    eurusd = read_hourly_closes("FOREX_EURUSD_1H_ASK.csv", 1, "%d.%m.%Y %H:%M:%S.%f", 4)
    first, last = slot_of(2017, 7, 3, 0), slot_of(2017, 8, 28, 0)
    symbol = {s: c for s, c in btc.items() if first <= s < last}
    values = both_paths(symbol, eurusd, ConfigBundle(base_interval="1h"))

    # Reference, computed independently: a return exists at slot T when both closes do.
    def returns(closes: dict[int, float], slot: int) -> float | None:
        if slot in closes and slot - 1 in closes and slot - 1 >= first:
            return math.log(closes[slot] / closes[slot - 1])
        return None

    expected_rho: dict[int, float | None] = {}
    for t0 in sorted(symbol):
        pairs = [(returns(eurusd, t), returns(symbol, t)) for t in range(t0 - 13, t0 + 1)]
        if any(x is None or y is None for x, y in pairs):
            expected_rho[t0] = None
        else:
            matrix = np.asarray(np.corrcoef(np.array(pairs, dtype=np.float64).T))
            expected_rho[t0] = float(matrix[0, 1])
    got_rho = rho_by_slot(values)
    assert [s for s in got_rho if got_rho[s] is None] == [
        s for s in expected_rho if expected_rho[s] is None
    ]
    for t0, rho in expected_rho.items():
        if rho is not None:
            assert got_rho[t0] == pytest.approx(rho, rel=1e-9, abs=1e-12)
    assert sum(r is not None for r in got_rho.values()) > 800  # 8 weeks minus weekends

    # The first weekend: EUR/USD's last bar opens Fri 7 Jul 20:00, trading resumes Sun 21:00.
    assert got_rho[slot_of(2017, 7, 7, 20)] is not None  # needs FX bars opened 06:00..20:00
    assert got_rho[slot_of(2017, 7, 7, 21)] is None
    assert got_rho[slot_of(2017, 7, 10, 10)] is None  # would need the Sun 20:00 bar
    assert got_rho[slot_of(2017, 7, 10, 11)] is not None  # bars opened Sun 21:00..Mon 11:00

    # z-score over the last 30 rhos, where 30 consecutive ones exist.
    checked = 0
    for t0 in sorted(symbol):
        window = [expected_rho.get(t) for t in range(t0 - 29, t0 + 1)]
        if any(r is None for r in window):
            assert values[t0][RHO_Z] is None
            continue
        sample = np.array(window, dtype=np.float64)
        z = (sample[-1] - sample.mean()) / sample.std(ddof=1)
        assert values[t0][RHO_Z] == pytest.approx(z, rel=1e-9, abs=1e-12)
        checked += 1
    assert checked > 500
