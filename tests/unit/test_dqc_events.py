"""Event-level DQC: the time-order gate and the jump check (online and batch)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2feature.domain import Kline, MarketEvent
from s2feature.dqc.events import EventGate, JumpDetector, Rejected, jump_flags_batch

MINUTE = 60_000
T0 = 1_700_000_040_000  # a multiple of one minute


def make_event(
    ts: int, open_time: int = T0, *, symbol: str = "BTCUSDT", mid: float = 100.0
) -> MarketEvent:
    kline = Kline(100.0, 101.0, 99.0, 100.5, 3.0, open_time, open_time + MINUTE - 1)
    return MarketEvent(ts, "binance", symbol, mid, mid - 0.5, mid + 0.5, 1e5, kline)


def with_kline_times(event: MarketEvent, open_time: int, close_time: int) -> MarketEvent:
    return replace(event, kline=replace(event.kline, open_time=open_time, close_time=close_time))


# --- the gate -------------------------------------------------------------------------------


def gate_after(*events: MarketEvent) -> EventGate:
    gate = EventGate("BTCUSDT", MINUTE)
    for event in events:
        assert gate.admit(event) is None
    return gate


def test_gate_accepts_equal_ts_and_same_kline() -> None:
    gate = gate_after(make_event(T0 + 10))
    assert gate.admit(make_event(T0 + 10)) is None


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param(
            make_event(T0 + 9), Rejected("time_order", ("time_order:ts_backwards",)), id="ts-back"
        ),
        pytest.param(
            make_event(T0 + 20, T0 - MINUTE),
            Rejected("time_order", ("time_order:kline_regressed",)),
            id="kline-regressed",
        ),
        pytest.param(
            with_kline_times(make_event(T0 + 20), T0 + MINUTE, T0 + MINUTE),
            Rejected("time_order", ("time_order:kline_open_not_before_close",)),
            id="open-equals-close",
        ),
        pytest.param(
            with_kline_times(make_event(T0 + 20), T0 + MINUTE, T0),
            Rejected("time_order", ("time_order:kline_open_not_before_close",)),
            id="open-after-close",
        ),
        pytest.param(
            with_kline_times(make_event(T0 + 20), T0 + 1, T0 + MINUTE),
            Rejected("unreadable", ("unreadable:kline_not_on_base_grid",)),
            id="open-off-grid",
        ),
        pytest.param(
            with_kline_times(make_event(T0 + 20), T0, T0 + 5 * MINUTE - 1),
            Rejected("unreadable", ("unreadable:kline_not_on_base_grid",)),
            id="kline-longer-than-base",
        ),
        pytest.param(
            make_event(T0 + 20, symbol="ETHUSDT"),
            Rejected("unreadable", ("unreadable:symbol_mismatch",)),
            id="symbol-mismatch",
        ),
        pytest.param(
            make_event(T0 + 9, T0 - MINUTE, symbol="ETHUSDT"),
            Rejected(
                "unreadable",
                (
                    "unreadable:symbol_mismatch",
                    "time_order:ts_backwards",
                    "time_order:kline_regressed",
                ),
            ),
            id="all-reasons-unreadable-wins",
        ),
    ],
)
def test_gate_drops_event_without_changing_state(event: MarketEvent, expected: Rejected) -> None:
    gate = gate_after(make_event(T0 + 10))
    before = gate.snapshot()
    assert gate.admit(event) == expected
    assert gate.snapshot() == before


def test_gate_check_alone_changes_no_state() -> None:
    gate = gate_after(make_event(T0 + 10))
    before = gate.snapshot()
    assert gate.check(make_event(T0 + 5 * MINUTE, T0 + 5 * MINUTE)) is None
    assert gate.snapshot() == before


def test_gate_restored_from_json_keeps_ordering() -> None:
    gate = gate_after(make_event(T0 + 10), make_event(T0 + MINUTE + 5, T0 + MINUTE))
    restored = EventGate("BTCUSDT", MINUTE)
    restored.restore(json.loads(json.dumps(gate.snapshot())))
    late = make_event(T0 + MINUTE + 6, T0)  # ts fine, kline one bar old
    assert restored.admit(late) == Rejected("time_order", ("time_order:kline_regressed",))
    assert restored.admit(make_event(T0 + MINUTE + 4, T0 + MINUTE)) is not None


def test_rejected_category_is_time_order_only_without_unreadable_reasons() -> None:
    assert Rejected.from_reasons(["time_order:ts_backwards"]).category == "time_order"
    assert (
        Rejected.from_reasons(["time_order:ts_backwards", "unreadable:x"]).category == "unreadable"
    )


# --- the jump check: hand-derived values -----------------------------------------------------


def flags_of(
    mids: list[float], lookback: int, multiplier: float = 8.0, floor: float = 1e-5
) -> list[bool]:
    detector = JumpDetector(lookback, multiplier, floor)
    return [detector.check_and_add(m) for m in mids]


@pytest.mark.parametrize(
    ("mid", "flagged"),
    [
        # history 100, 101, 99, 100, 102: median 100, deviations 0,1,1,0,2 -> MAD 1,
        # limit = 8 * 1.4826 * max(1, 1e-5 * 100) = 11.8608
        pytest.param(111.86, False, id="just-inside-above"),
        pytest.param(111.87, True, id="just-outside-above"),
        pytest.param(88.14, False, id="just-inside-below"),
        pytest.param(88.13, True, id="just-outside-below"),
    ],
)
def test_jump_flag_against_median_and_mad(mid: float, flagged: bool) -> None:
    assert flags_of([100.0, 101.0, 99.0, 100.0, 102.0, mid], lookback=5)[-1] is flagged


@pytest.mark.parametrize(
    ("mid", "flagged"),
    [
        # flat history: MAD 0, floored at 1e-5 * 100 = 0.001
        # -> limit = 8 * 1.4826 * 0.001 = 0.0118608
        pytest.param(100.011, False, id="inside-floor"),
        pytest.param(100.012, True, id="outside-floor"),
    ],
)
def test_jump_mad_floor_on_flat_history(mid: float, flagged: bool) -> None:
    assert flags_of([100.0] * 5 + [mid], lookback=5)[-1] is flagged


@pytest.mark.parametrize(
    ("mid", "flagged"),
    [
        # even window 1, 2, 3, 10: median 2.5; deviations 1.5, 0.5, 0.5, 7.5 -> sorted
        # 0.5, 0.5, 1.5, 7.5 -> MAD (0.5 + 1.5) / 2 = 1.0; multiplier 1 -> limit 1.4826
        pytest.param(3.9, False, id="inside"),
        pytest.param(4.0, True, id="outside"),
        pytest.param(1.0, True, id="outside-below"),
    ],
)
def test_jump_even_lookback_averages_middle_values(mid: float, flagged: bool) -> None:
    assert flags_of([1.0, 2.0, 3.0, 10.0, mid], lookback=4, multiplier=1.0)[-1] is flagged


def test_no_jump_check_until_lookback_mids() -> None:
    assert flags_of([100.0, 1e6, 1.0, 5e5, 100.0], lookback=5) == [False] * 5


def test_level_shift_stops_being_flagged_once_majority() -> None:
    # lookback 5, five mids at 100, then 200s. Windows before each 200:
    # [100]*5 -> flagged; [100]*4+[200]: median 100, MAD 0 -> flagged;
    # [100]*3+[200]*2: median 100, MAD 0 -> flagged; [100]*2+[200]*3: median 200 -> not.
    flags = flags_of([100.0] * 5 + [200.0] * 4, lookback=5)
    assert flags[5:] == [True, True, True, False]


def test_single_outlier_does_not_mask_next_one() -> None:
    # the flagged 500 joins the window but moves neither its median (100) nor its MAD (0)
    flags = flags_of([100.0] * 5 + [500.0, 500.0], lookback=5)
    assert flags[5:] == [True, True]


@pytest.mark.parametrize(
    ("lookback", "multiplier", "floor"),
    [
        pytest.param(0, 8.0, 1e-5, id="lookback-zero"),
        pytest.param(5, 0.0, 1e-5, id="multiplier-zero"),
        pytest.param(5, float("nan"), 1e-5, id="multiplier-nan"),
        pytest.param(5, 8.0, -1.0, id="floor-negative"),
    ],
)
def test_jump_parameters_are_validated(lookback: int, multiplier: float, floor: float) -> None:
    with pytest.raises(ValueError, match=r"lookback|multiplier|mad_floor_ratio"):
        JumpDetector(lookback, multiplier, floor)
    with pytest.raises(ValueError, match=r"lookback|multiplier|mad_floor_ratio"):
        jump_flags_batch(np.ones(3), lookback, multiplier, floor)


def test_jump_rejects_non_finite_mid() -> None:
    with pytest.raises(ValueError, match="finite"):
        JumpDetector(3, 8.0, 1e-5).check_and_add(float("nan"))


def test_jump_restore_with_shorter_lookback_keeps_newest_mids() -> None:
    detector = JumpDetector(6, 8.0, 1e-5)
    for mid in [1.0, 1.0, 1.0, 100.0, 100.0, 100.0]:
        detector.check_and_add(mid)
    shorter = JumpDetector(3, 8.0, 1e-5)
    shorter.restore(detector.snapshot())
    assert shorter.snapshot() == {"mids": [100.0, 100.0, 100.0]}
    assert shorter.check_and_add(100.0) is False


# --- the jump check: online == batch ---------------------------------------------------------

# Mids from a small set (many ties, zero MADs) or a wide range; all positive like prices.
mid_values = st.one_of(
    st.sampled_from([99.0, 100.0, 100.5, 101.0, 250.0]),
    st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=300, deadline=None)
@given(
    mids=st.lists(mid_values, max_size=80),
    lookback=st.integers(min_value=1, max_value=15),
    multiplier=st.floats(min_value=0.01, max_value=20.0),
    floor=st.sampled_from([0.0, 1e-5, 1e-3]),
)
def test_online_jump_flags_equal_batch(
    mids: list[float], lookback: int, multiplier: float, floor: float
) -> None:
    online = flags_of(mids, lookback, multiplier, floor)
    batch = jump_flags_batch(np.array(mids, dtype=np.float64), lookback, multiplier, floor)
    assert online == batch.tolist()


@settings(max_examples=100, deadline=None)
@given(
    mids=st.lists(mid_values, min_size=1, max_size=60),
    lookback=st.integers(min_value=1, max_value=10),
    cut=st.integers(min_value=0, max_value=60),
)
def test_jump_snapshot_restore_equals_uninterrupted(
    mids: list[float], lookback: int, cut: int
) -> None:
    cut = min(cut, len(mids))
    first = JumpDetector(lookback, 8.0, 1e-5)
    head = [first.check_and_add(m) for m in mids[:cut]]
    second = JumpDetector(lookback, 8.0, 1e-5)
    second.restore(json.loads(json.dumps(first.snapshot())))
    tail = [second.check_and_add(m) for m in mids[cut:]]
    assert head + tail == flags_of(mids, lookback)


def test_online_equals_batch_over_long_series_across_batch_chunks() -> None:
    # A random walk with injected spikes, longer than one batch chunk (8192 windows).
    rng = np.random.default_rng(20240601)
    mids = 30_000.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-4, 20_000)))
    spikes = rng.choice(len(mids), 40, replace=False)
    mids[spikes] *= rng.choice([0.9, 1.1], 40)
    batch = jump_flags_batch(mids, 120, 8.0, 1e-5)
    assert flags_of(mids.tolist(), 120) == batch.tolist()
    assert batch[spikes[spikes >= 120]].sum() >= 30  # most injected spikes are caught


def test_batch_with_no_full_window_flags_nothing() -> None:
    assert jump_flags_batch(np.array([1.0, 1e9, 1.0]), 3, 8.0, 1e-5).tolist() == [False] * 3
