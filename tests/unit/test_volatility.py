"""Realised volatility: hand-derived values, coverage and gap rules, the percentile and regime
label, the raw window kernels against brute force, and online == batch under adversarial data."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2feature.compute.family import FamilyContext
from s2feature.compute.rolling import RollingSum
from s2feature.compute.volatility import (
    VOLATILITY_FAMILY,
    OnlineVolatilityFamily,
    log_return_squares,
    min_count,
    regime_label,
    volatility_family_batch,
    window_sums,
)
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import DAY_MS, HOUR_MS, Bar, BarArrays, FeatureValue

BASE_MS = {"1m": 60_000, "5m": 300_000, "1h": HOUR_MS}
YEAR_MS = 365 * DAY_MS
ORIGIN = 19_000 * DAY_MS  # a UTC midnight, so hour boundaries fall on base closes
A = 0.01

Row = dict[str, FeatureValue]


def context(
    base: str = "1h", coverage: float = 0.9, frozen: float = 0.1, extreme: float = 0.9
) -> FamilyContext:
    bundle = ConfigBundle.model_validate(
        {
            "base_interval": base,
            "windows": {"coverage_min": coverage},
            "regime": {"frozen_below": frozen, "extreme_above": extreme},
        }
    )
    return FamilyContext(bundle, bundle.base_ms, bundle.base_ms)


def make_bars(slots: Sequence[int], closes: Sequence[float], base_ms: int) -> list[Bar]:
    return [
        Bar(ORIGIN + s * base_ms, ORIGIN + (s + 1) * base_ms - 1, c, c, c, c, 1.0, mid=c)
        for s, c in zip(slots, closes, strict=True)
    ]


def alternating(slots: Sequence[int], a: float = A) -> list[float]:
    """Closes whose adjacent log returns are +a / -a: |r| = a, r^2 = a^2."""
    return [100.0 * math.exp(a * (s % 2)) for s in slots]


def close_of(slot: int, base_ms: int) -> int:
    return ORIGIN + (slot + 1) * base_ms - 1


def run_online(bars: Sequence[Bar], t0s: Sequence[int], ctx: FamilyContext) -> list[Row]:
    family = OnlineVolatilityFamily(ctx)
    rows, fed = [], 0
    for t0 in t0s:
        while fed < len(bars) and bars[fed].close_time <= t0:
            family.update(bars[fed])
            fed += 1
        rows.append(family.values_at(t0))
    return rows


def run_batch(bars: Sequence[Bar], t0s: Sequence[int], ctx: FamilyContext) -> list[Row]:
    arrays = volatility_family_batch(
        BarArrays.from_bars(list(bars)), np.array(t0s, dtype=np.int64), ctx
    )
    rows: list[Row] = []
    for i in range(len(t0s)):
        row: Row = {}
        for name, values in arrays.items():
            value = values[i]
            if values.dtype == object:
                row[name] = value
            else:
                row[name] = None if np.isnan(value) else float(value)
        rows.append(row)
    return rows


def both(bars: Sequence[Bar], t0s: Sequence[int], ctx: FamilyContext) -> list[list[Row]]:
    return [run_online(bars, t0s, ctx), run_batch(bars, t0s, ctx)]


def same(a: FeatureValue, b: FeatureValue) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


# ------------------------------------------------------------------------- hand-derived values


@pytest.mark.parametrize("base", ["1m", "5m", "1h"])
def test_rv_of_alternating_returns_is_a_times_root_of_bars_per_year(base: str) -> None:
    # n = H / base adjacent returns of size a in every window H:
    # rv_H = sqrt(n * a^2 * (n / n) * 365d / H) = a * sqrt(365d / base) for 4h and 1d alike.
    base_ms = BASE_MS[base]
    slots = list(range(DAY_MS // base_ms + 1))
    bars = make_bars(slots, alternating(slots), base_ms)
    expected = A * math.sqrt(YEAR_MS / base_ms)
    for row in both(bars, [bars[-1].close_time], context(base)):
        assert row[0]["rv_4h"] == pytest.approx(expected, rel=1e-12)
        assert row[0]["rv_1d"] == pytest.approx(expected, rel=1e-12)
        assert row[0]["rv_30d"] is None  # one day of a 30-day window
        assert row[0]["rv_pctile_30d"] is None
        assert row[0]["regime_label"] is None


@pytest.mark.parametrize(
    ("base", "horizon", "expected_n", "removed", "has_value"),
    [
        # removing a run of k bars inside the window drops k + 1 returns
        ("1m", "rv_4h", 240, 23, True),  # 216 = 0.9 * 240 returns: enough
        ("1m", "rv_4h", 240, 24, False),  # 215 returns: one short
        ("1h", "rv_30d", 720, 71, True),  # 648 = 0.9 * 720
        ("1h", "rv_30d", 720, 72, False),  # 647
    ],
    ids=["4h_at_216_of_240", "4h_at_215_of_240", "30d_at_648_of_720", "30d_at_647_of_720"],
)
def test_rv_coverage_threshold_is_inclusive(
    base: str, horizon: str, expected_n: int, removed: int, has_value: bool
) -> None:
    base_ms = BASE_MS[base]
    slots = [s for s in range(expected_n + 1) if not 100 <= s < 100 + removed]
    bars = make_bars(slots, alternating(slots), base_ms)
    # n_obs returns of size a: sqrt(n_obs * a^2 * (n / n_obs) * 365d / H) = a * sqrt(365d / base)
    want = A * math.sqrt(YEAR_MS / base_ms) if has_value else None
    for rows in both(bars, [bars[-1].close_time], context(base)):
        assert rows[0][horizon] == (pytest.approx(want, rel=1e-12) if has_value else None)


def test_rv_of_non_adjacent_bars_does_not_bridge_the_gap() -> None:
    # Slots 0,1,2 then 5,6. In (t0 - 4h, t0] at t0 = close of slot 6 lie the closes of slots
    # 5 and 6; slot 5 follows slot 2, so it has no return (the 100 -> 1000 jump is not one).
    # Only r_6 = ln(1010 / 1000) counts: rv_4h = sqrt(r_6^2 * (4 / 1) * 365d / 4h).
    bars = make_bars([0, 1, 2, 5, 6], [100.0, 101.0, 100.0, 1000.0, 1010.0], HOUR_MS)
    expected = abs(math.log(1.01)) * math.sqrt(4 * 365 * 6)
    for rows in both(bars, [bars[-1].close_time], context(coverage=0.25)):
        assert rows[0]["rv_4h"] == pytest.approx(expected, rel=1e-12)


def test_rv_at_t0_inside_gap_slides_past_missing_bars() -> None:
    # 48 hourly bars, then nothing until slot 60. At 2h past the last close the 1d window holds
    # the returns of slots 26..47: 22 >= ceil(0.9 * 24) = 22, so rv_1d = a * sqrt(8760); one hour
    # later only 21 remain: null. The 4h window holds 2 returns at +2h: null.
    slots = [*range(48), 60]
    bars = make_bars(slots, alternating(slots), HOUR_MS)
    last = close_of(47, HOUR_MS)
    t0s = [last + 2 * HOUR_MS, last + 3 * HOUR_MS, close_of(60, HOUR_MS)]
    for rows in both(bars, t0s, context()):
        assert rows[0]["rv_1d"] == pytest.approx(A * math.sqrt(8760), rel=1e-12)
        assert rows[0]["rv_4h"] is None
        assert rows[1]["rv_1d"] is None
        assert rows[2]["rv_1d"] is None  # slot 60 has no adjacent predecessor either


def test_flat_hours_give_zero_volatility_not_null() -> None:
    slots = list(range(30))
    bars = make_bars(slots, [100.0] * 30, HOUR_MS)
    for rows in both(bars, [bars[-1].close_time], context()):
        assert rows[0]["rv_4h"] == 0.0
        assert rows[0]["rv_1d"] == 0.0


def test_crash_return_leaving_the_window_leaves_only_the_small_returns() -> None:
    # One -50% log return among returns of 1e-6 on 1m bars. 240 bars after the crash it has
    # left the 4h window: a running sum that only added and subtracted would keep an error of
    # ~0.25 * 1e-16 against a true sum of 240 * 1e-12, i.e. 1e-7 relative.
    steps = np.where(np.arange(800) % 2 == 0, 1e-6, -1e-6)
    steps[300] = -0.5
    closes = (100.0 * np.exp(np.cumsum(steps))).tolist()
    bars = make_bars(range(800), closes, 60_000)
    t0s = [close_of(s, 60_000) for s in range(530, 560)]
    ctx = context("1m")
    online, batch = both(bars, t0s, ctx)
    for t0, on, off in zip(t0s, online, batch, strict=True):
        start = (t0 - ORIGIN) // 60_000 - 239  # slots of the returns in the window
        squares = [math.log(closes[s] / closes[s - 1]) ** 2 for s in range(start, start + 240)]
        expected = math.sqrt(math.fsum(squares) * 2190)  # n_obs == n_expected == 240
        assert on["rv_4h"] == pytest.approx(expected, rel=1e-9)
        assert off["rv_4h"] == pytest.approx(expected, rel=1e-9)
    assert max(math.log(closes[s] / closes[s - 1]) ** 2 for s in range(241, 301)) > 0.2


# ------------------------------------------------------------------ percentile and regime label


def graded(n: int, rising: bool) -> list[Bar]:
    """Hourly bars whose |r| grows (or shrinks) every hour, so rv_1d strictly rises (falls)."""
    sizes = [A * (1 + i / 1000) if rising else A * (2 - i / 1000) for i in range(n)]
    log_price = np.cumsum([s if i % 2 else -s for i, s in enumerate(sizes)])
    return make_bars(range(n), (100.0 * np.exp(log_price)).tolist(), HOUR_MS)


@pytest.mark.parametrize(
    ("rising", "frozen", "extreme", "pctile", "label"),
    [
        # 720 boundaries in (t0 - 30d, t0], all non-null; rv_1d(t0) is the largest -> 720/720
        (True, 0.1, 0.9, 1.0, "EXTREME"),
        (True, 0.1, 1.0, 1.0, "NORMAL"),  # 1.0 is not above 1.0
        (True, 0.1, 1.0 - 1e-12, 1.0, "EXTREME"),
        # rv_1d(t0) is the smallest: only the sample at t0 itself is <= it -> 1/720
        (False, 0.1, 0.9, 1 / 720, "FROZEN"),
        (False, 1 / 720, 0.9, 1 / 720, "NORMAL"),  # 1/720 is not below 1/720
        (False, 1 / 720 + 1e-12, 0.9, 1 / 720, "FROZEN"),
    ],
    ids=["max", "max_at_extreme", "max_above_extreme", "min", "min_at_frozen", "min_below"],
)
def test_pctile_and_regime_on_monotone_rv(
    rising: bool, frozen: float, extreme: float, pctile: float, label: str
) -> None:
    bars = graded(800, rising)
    for rows in both(bars, [bars[-1].close_time], context(frozen=frozen, extreme=extreme)):
        assert rows[0]["rv_pctile_30d"] == pctile
        assert rows[0]["regime_label"] == label


@pytest.mark.parametrize(
    ("last", "pctile"),
    # rv_1d is non-null from bar 22 on (22 returns >= ceil(0.9 * 24)); at bar k < 720 the
    # samples of bars 22..k count: k - 21 of them, and 648 = 0.9 * 720 are needed.
    [(669, 1.0), (668, None)],
    ids=["648_samples", "647_samples"],
)
def test_pctile_sample_coverage_threshold_is_inclusive(last: int, pctile: float | None) -> None:
    bars = graded(last + 1, rising=True)
    for rows in both(bars, [bars[-1].close_time], context()):
        assert rows[0]["rv_pctile_30d"] == pctile


def test_pctile_of_flat_market_counts_ties() -> None:
    # Every rv_1d sample is 0.0, and 0.0 <= 0.0: the percentile is 1.
    bars = make_bars(range(800), [100.0] * 800, HOUR_MS)
    for rows in both(bars, [bars[-1].close_time], context()):
        assert rows[0]["rv_pctile_30d"] == 1.0


def test_pctile_ties_are_judged_at_the_float_tolerance() -> None:
    # Constant |r|: every rv_1d is a * sqrt(8760) in exact arithmetic, but running sums and
    # batch sums round differently in the last bits. Within TIE_RTOL they are ties: 720/720.
    slots = list(range(800))
    bars = make_bars(slots, alternating(slots), HOUR_MS)
    for rows in both(bars, [close_of(s, HOUR_MS) for s in (700, 799)], context()):
        assert [row["rv_pctile_30d"] for row in rows] == [1.0, 1.0]


@pytest.mark.parametrize(
    ("pctile", "label"),
    [
        (None, None),
        (0.0, "FROZEN"),
        (0.1 - 1e-12, "FROZEN"),
        (0.1, "NORMAL"),
        (0.9, "NORMAL"),
        (0.9 + 1e-12, "EXTREME"),
        (1.0, "EXTREME"),
    ],
    ids=["null", "zero", "below_frozen", "at_frozen", "at_extreme", "above_extreme", "one"],
)
def test_regime_label_thresholds(pctile: float | None, label: str | None) -> None:
    assert regime_label(pctile, 0.1, 0.9) == label


@pytest.mark.parametrize(
    ("coverage", "expected", "needed"),
    [(0.9, 720, 648), (0.9, 24, 22), (0.9, 4, 4), (0.7, 10, 7), (1.0, 4, 4), (0.01, 4, 1)],
    ids=["720", "24", "4", "float_noise_0.7x10", "full", "at_least_one"],
)
def test_min_count_is_smallest_count_not_below_coverage(
    coverage: float, expected: int, needed: int
) -> None:
    assert min_count(coverage, expected) == needed


def test_log_returns_skip_gaps_and_invalid_closes() -> None:
    times = np.array([59_999, 119_999, 179_999, 299_999, 359_999, 419_999, 479_999])
    closes = np.array([1.0, math.e, 1.0, 2.0, -1.0, 4.0, np.nan])
    got_times, squares = log_return_squares(times, closes, 60_000)
    # bar 3 follows a gap; bars 4..6 have or follow a non-positive / NaN close
    assert got_times.tolist() == [119_999, 179_999]
    assert squares.tolist() == pytest.approx([1.0, 1.0], rel=1e-15)


# --------------------------------------------------------------------------------- raw kernels

magnitudes = st.one_of(
    st.just(0.0),
    st.builds(lambda m, e: m * 10.0**e, st.floats(1.0, 9.99), st.integers(-30, 10)),
)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(1, 50), magnitudes, st.booleans()), max_size=200),
    span=st.integers(1, 120),
)
def test_rolling_sum_equals_exact_sum_of_window(
    steps: list[tuple[int, float, bool]], span: int
) -> None:
    rolling, time, kept = RollingSum(span), 0, []
    for gap, value, read in steps:
        time += gap
        rolling.add(time, value)
        kept.append((time, value))
        rolling.advance(time)
        if read:
            window = [v for t, v in kept if t > time - span]
            assert len(rolling) == len(window)
            assert rolling.total() == pytest.approx(math.fsum(window), rel=1e-12, abs=0.0)


@settings(max_examples=200, deadline=None)
@given(
    points=st.lists(st.tuples(st.integers(0, 400), magnitudes), max_size=120),
    t0s=st.lists(st.integers(-10, 500), max_size=40),
    span=st.integers(1, 90),
)
def test_window_sums_equal_exact_sums(
    points: list[tuple[int, float]], t0s: list[int], span: int
) -> None:
    unique = dict(points)  # one value per time
    times = np.array(sorted(unique), dtype=np.int64)
    values = np.array([unique[t] for t in sorted(unique)], dtype=np.float64)
    sums, counts = window_sums(times, values, np.array(t0s, dtype=np.int64), span)
    for t0, got_sum, got_count in zip(t0s, sums.tolist(), counts.tolist(), strict=True):
        window = [unique[t] for t in unique if t0 - span < t <= t0]
        assert got_count == len(window)
        assert got_sum == pytest.approx(math.fsum(window), rel=1e-12, abs=0.0)


# ------------------------------------------------------------------------ online == batch


@st.composite
def adversarial_bars(draw: st.DrawFn, base_ms: int, max_n: int) -> list[Bar]:
    """Bars on the grid with gaps (short and longer than a day), flat stretches, returns from
    1e-9 to crashes of 60%, and price levels from 1e-6 to 1e9."""
    n = draw(st.integers(1, max_n) | st.integers(max_n * 4 // 5, max_n))  # often long enough
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    gap_prob = draw(st.sampled_from([0.0, 0.005, 0.05]))
    long_gap = 2000 * HOUR_MS // base_ms
    gaps = 1 + (rng.random(n) < gap_prob) * rng.choice(
        [1, 2, 30, long_gap], n, p=[0.4] * 2 + [0.1] * 2
    )
    kind = rng.choice(4, n, p=draw(st.sampled_from([(0.7, 0.1, 0.2, 0.0), (0.3, 0.3, 0.3, 0.1)])))
    sizes = np.select([kind == 0, kind == 1, kind == 2], [1e-2, 0.0, 1e-9], 0.6)
    log_price = np.cumsum(sizes * rng.choice([-1.0, 1.0], n)) + draw(st.integers(-14, 20))
    slots = np.cumsum(gaps)
    return make_bars(slots.tolist(), np.exp(log_price).tolist(), base_ms)


def schedule(bars: Sequence[Bar], base_ms: int) -> list[int]:
    """Every bar's close, plus t0s inside each gap: right after, mid-way, just before."""
    t0s = []
    for before, after in itertools.pairwise(bars):
        t0s.append(before.close_time)
        gap_slots = (after.close_time - before.close_time) // base_ms - 1
        for k in sorted({1, (gap_slots + 1) // 2, gap_slots} - {0}):
            t0s.append(before.close_time + k * base_ms)
    t0s.append(bars[-1].close_time)
    return t0s


@pytest.mark.parametrize("base", ["1m", "1h"])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_online_equals_batch_on_adversarial_series(base: str, data: st.DataObject) -> None:
    base_ms = BASE_MS[base]
    bars = data.draw(adversarial_bars(base_ms, 900 if base == "1h" else 600))
    ctx = context(base, coverage=data.draw(st.sampled_from([0.9, 0.5, 1.0])))
    t0s = schedule(bars, base_ms)
    online, batch = both(bars, t0s, ctx)
    for t0, on, off in zip(t0s, online, batch, strict=True):
        assert set(on) == set(off) == set(VOLATILITY_FAMILY.features)
        for name in on:
            assert same(on[name], off[name]), f"{name} at {t0}: {on[name]} != {off[name]}"


def test_batch_value_does_not_depend_on_other_t0s() -> None:
    slots = [s for s in range(900) if s % 97 not in (5, 6)]
    bars = graded(900, rising=False)
    bars = [bars[s] for s in slots]
    every = [*(bar.close_time for bar in bars), bars[-1].close_time + 5 * HOUR_MS]
    some = every[::37] + every[-1:]
    by_t0 = dict(zip(every, run_batch(bars, every, context()), strict=True))
    assert run_batch(bars, some, context()) == [by_t0[t0] for t0 in some]


@pytest.mark.slow
def test_long_run_of_a_million_updates_does_not_drift() -> None:
    n, base_ms = 1_000_000, 60_000
    rng = np.random.default_rng(11)
    # Days alternate at random between loud (1e-3) and quiet (1e-7) minutes; some quiet days
    # open with a crash, which then leaves the 4h and 1d windows while the market stays quiet.
    day = np.arange(n) // 1440
    quiet = rng.random(day[-1] + 1) < 0.5
    steps = rng.normal(0.0, 1.0, n) * np.where(quiet[day], 1e-7, 1e-3)
    steps[rng.random(n) < 0.3] = 0.0  # flat minutes
    crash_days = np.flatnonzero(quiet & (rng.random(len(quiet)) < 0.3))
    steps[crash_days * 1440] = -0.4
    slots = np.cumsum(1 + (rng.random(n) < 1e-3) * rng.integers(1, 20, n))
    closes = 100.0 * np.exp(np.cumsum(steps))
    arrays = BarArrays.from_bars(make_bars(slots.tolist(), closes.tolist(), base_ms))
    ctx = context("1m")
    batch = volatility_family_batch(arrays, arrays.close_time, ctx)
    family = OnlineVolatilityFamily(ctx)
    columns = {name: values.tolist() for name, values in batch.items()}
    for i, bar in enumerate(arrays.to_bars()):
        family.update(bar)
        row = family.values_at(bar.close_time)
        for name, value in row.items():
            want = columns[name][i]
            if isinstance(want, float) and math.isnan(want):
                want = None
            assert same(value, want), f"{name} at bar {i}: {value} != {want}"
    assert sum(v is not None for v in columns["regime_label"]) > n // 2


# ---------------------------------------------------------------------- state and contracts


def test_snapshot_of_fresh_and_warm_instance_survives_json_and_restores_exactly() -> None:
    slots = [s for s in range(800) if s % 50 != 7]
    bars = graded(800, rising=True)
    bars = [bars[s] for s in slots]
    ctx = context()
    fresh = OnlineVolatilityFamily(ctx)
    json.dumps(fresh.snapshot(), allow_nan=False)
    whole = run_online(bars, [b.close_time for b in bars], ctx)
    first = OnlineVolatilityFamily(ctx)
    for bar in bars[:750]:
        first.update(bar)
        first.values_at(bar.close_time)
    second = OnlineVolatilityFamily(ctx)
    second.restore(json.loads(json.dumps(first.snapshot(), allow_nan=False)))
    tail = []
    for bar in bars[750:]:
        second.update(bar)
        tail.append(second.values_at(bar.close_time))
    assert tail == whole[750:]
    assert tail[-1]["rv_pctile_30d"] is not None


def test_reset_forgets_everything() -> None:
    slots = list(range(60))
    bars = make_bars(slots, alternating(slots), HOUR_MS)
    used = OnlineVolatilityFamily(context())
    for bar in bars:
        used.update(bar)
    used.reset()
    assert used.snapshot() == OnlineVolatilityFamily(context()).snapshot()
    used.update(bars[0])  # an earlier bar is accepted again


def test_online_rejects_time_going_back() -> None:
    slots = list(range(5))
    bars = make_bars(slots, alternating(slots), HOUR_MS)
    family = OnlineVolatilityFamily(context())
    family.update(bars[0])
    family.values_at(bars[1].close_time)
    with pytest.raises(ValueError, match="not after"):
        family.update(bars[1])  # closes at the t0 already evaluated
    with pytest.raises(ValueError, match="precedes"):
        family.values_at(bars[0].close_time)


def test_batch_rejects_unsorted_bars() -> None:
    bars = make_bars([1, 0], [1.0, 2.0], HOUR_MS)
    with pytest.raises(ValueError, match="increasing"):
        volatility_family_batch(BarArrays.from_bars(bars), np.array([0]), context())


def test_family_is_registered_at_base_level() -> None:
    assert VOLATILITY_FAMILY.level == "base"
    assert VOLATILITY_FAMILY.features == (
        "rv_4h",
        "rv_1d",
        "rv_30d",
        "rv_pctile_30d",
        "regime_label",
    )
    assert isinstance(VOLATILITY_FAMILY.online(context()), OnlineVolatilityFamily)
