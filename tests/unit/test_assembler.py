"""Base-bar assembly: finality, OHLCV of the last event, as-of ticks, jump counts, restarts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2feature.domain import Bar, Kline, MarketEvent
from s2feature.ingest.assembler import MAX_TICK_SLOTS, BaseBarAssembler, ticks_of

MINUTE = 60_000
T0 = 1_700_000_040_000  # open of bar A, a multiple of one minute
A, B, C = T0, T0 + MINUTE, T0 + 2 * MINUTE  # open times of three consecutive bars


def event(
    ts: int,
    open_time: int,
    *,
    close: float = 100.0,
    mid: float = 100.0,
    volume: float = 1.0,
    depth_split: tuple[float, float] | None = None,
) -> MarketEvent:
    """An event whose kline has open 100, high max(101, close), low min(99, close)."""
    kline = Kline(
        100.0, max(101.0, close), min(99.0, close), close, volume, open_time, open_time + MINUTE - 1
    )
    depth_bid, depth_ask = depth_split if depth_split else (None, None)
    return MarketEvent(
        ts,
        "binance",
        "BTCUSDT",
        mid,
        mid - 0.5,
        mid + 0.5,
        1e5,
        kline,
        funding_next=1e-4,
        best_bid_qty=2.0,
        best_ask_qty=3.0,
        depth_bid_usdt=depth_bid,
        depth_ask_usdt=depth_ask,
    )


def feed(
    assembler: BaseBarAssembler, events: list[MarketEvent], jumped: list[bool] | None = None
) -> list[Bar]:
    flags = jumped or [False] * len(events)
    return [bar for e, j in zip(events, flags, strict=True) for bar in assembler.on_event(e, j)]


def test_bar_final_when_ts_passes_close_time() -> None:
    assembler = BaseBarAssembler(MINUTE)
    assert feed(assembler, [event(A + 5, A), event(A + MINUTE - 1, A, mid=101.0)]) == []
    bars = assembler.on_event(event(B, B, mid=105.0), False)
    assert [(b.open_time, b.close_time, b.mid) for b in bars] == [(A, A + MINUTE - 1, 101.0)]


def test_bar_final_when_later_kline_arrives_before_close_time() -> None:
    # The B-kline event has ts inside A: it is A's last event with ts <= A's close, so A takes
    # its ticks (mid 107) while its OHLCV stay those of the last A-kline event (close 100.5).
    assembler = BaseBarAssembler(MINUTE)
    feed(assembler, [event(A + 5, A, close=100.5)])
    (bar,) = assembler.on_event(event(A + 50_000, B, mid=107.0), False)
    assert (bar.open_time, bar.close, bar.mid) == (A, 100.5, 107.0)


def test_event_after_close_with_same_kline_updates_then_finalises() -> None:
    # Binance sends the closed kline just after the close: its OHLCV win, its ticks do not.
    assembler = BaseBarAssembler(MINUTE)
    feed(assembler, [event(A + 5, A, close=100.2, mid=100.1, volume=1.0)])
    (bar,) = assembler.on_event(event(B + 10, A, close=100.8, mid=120.0, volume=7.0), False)
    assert (bar.close, bar.volume, bar.high, bar.mid) == (100.8, 7.0, 101.0, 100.1)


def test_last_event_wins_for_ohlcv_not_extremes() -> None:
    # OHLCV are the kline's, as carried by the last event: not a max/min over events.
    assembler = BaseBarAssembler(MINUTE)
    feed(
        assembler,
        [event(A + 1, A, close=110.0, volume=5.0), event(A + 2, A, close=100.3, volume=6.0)],
    )
    (bar,) = assembler.on_event(event(B, B), False)
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == (100.0, 101.0, 99.0, 100.3, 6.0)


def test_ticks_are_as_of_close_and_do_not_leak() -> None:
    assembler = BaseBarAssembler(MINUTE)
    feed(assembler, [event(A + 10, A, mid=100.0), event(A + MINUTE - 1, A, mid=101.0)])
    (bar,) = assembler.on_event(event(B + 1, A, mid=999.0), False)
    assert (bar.mid, bar.best_bid, bar.best_ask) == (101.0, 100.5, 101.5)


def test_all_tick_fields_come_from_the_as_of_event() -> None:
    assembler = BaseBarAssembler(MINUTE)
    feed(assembler, [event(A + 10, A, mid=100.0)])
    (bar,) = assembler.on_event(event(B, B), False)
    expected = Bar(
        A, A + MINUTE - 1, 100.0, 101.0, 99.0, 100.0, 1.0,
        mid=100.0, best_bid=99.5, best_ask=100.5, depth_top1_usdt=1e5, depth_split=False,
        funding_next=1e-4, bid_qty=2.0, ask_qty=3.0, jump_count=0, n_base=1,
    )  # fmt: skip
    assert bar == expected


def test_split_depth_sums_both_sides() -> None:
    # depth_bid 4e4 + depth_ask 6e4 = 1e5, replacing the summed depth_top1_usdt
    assert ticks_of(event(A, A, depth_split=(4e4, 6e4)))[3:5] == (1e5, True)
    assert ticks_of(event(A, A))[3:5] == (1e5, False)


def test_kline_first_seen_after_its_close_takes_ticks_as_of_its_close() -> None:
    # A's events reach into B's time; then B's kline arrives only after B closed. B is final at
    # once; its ticks are those of the last event with ts <= B's close (an A-kline event, mid 103).
    assembler = BaseBarAssembler(MINUTE)
    feed(assembler, [event(A + 1, A), event(B + 1, A, mid=102.0), event(B + 30_000, A, mid=103.0)])
    bars = assembler.on_event(event(C + 5, B, mid=104.0), False)
    assert [(b.open_time, b.mid) for b in bars] == [(B, 103.0)]


def test_bar_without_any_event_before_its_close_has_no_ticks() -> None:
    assembler = BaseBarAssembler(MINUTE)
    (bar,) = assembler.on_event(event(B + 5, A), False)
    assert (bar.mid, bar.best_bid, bar.depth_top1_usdt, bar.funding_next) == (
        None,
        None,
        None,
        None,
    )
    assert bar.close == 100.0


def test_events_of_a_final_bar_change_no_bar() -> None:
    assembler = BaseBarAssembler(MINUTE)
    feed(assembler, [event(A + 1, A, close=100.1)])
    (bar_a,) = assembler.on_event(event(B + 1, A, close=100.2), False)
    assert assembler.on_event(event(B + 2, A, close=100.9), True) == []
    (bar_b,) = feed(assembler, [event(B + 3, B), event(C, C)])
    assert (bar_a.close, bar_b.jump_count) == (100.2, 0)


def test_bar_whose_successor_never_arrives_stays_open() -> None:
    assembler = BaseBarAssembler(MINUTE)
    assert feed(assembler, [event(A + i * 1000, A) for i in range(60)]) == []


@pytest.mark.parametrize(
    ("events", "flags", "expected"),
    [
        pytest.param(
            [event(A + 1, A), event(A + 2, A), event(A + 3, B)], [False] * 3, (0, 0), id="none"
        ),
        # A-kline events 1 and 2 flagged -> A counts 2; the flagged B-kline event counts for B
        pytest.param(
            [event(A + 1, A), event(A + 2, A), event(A + 3, A), event(A + 4, B)],
            [True, True, False, True],
            (2, 1),
            id="per-kline",
        ),
        # a flagged event carrying A's kline after A's close updates A and finalises it
        pytest.param([event(A + 1, A), event(B + 1, A)], [False, True], (1, 0), id="finalising"),
        # once A is final, a flagged event still carrying A's kline counts nowhere
        pytest.param(
            [event(A + 1, A), event(B + 1, A), event(B + 2, A), event(B + 3, B)],
            [False, False, True, False],
            (0, 0),
            id="after-final",
        ),
    ],
)
def test_jump_count_counts_flagged_events_carrying_the_kline(
    events: list[MarketEvent], flags: list[bool], expected: tuple[int, int]
) -> None:
    assembler = BaseBarAssembler(MINUTE)
    bars = feed(assembler, [*events, event(C + 1, C)], [*flags, False])
    counts = {b.open_time: b.jump_count for b in bars}
    assert (counts[A], counts.get(B, 0)) == expected


def test_ticks_of_very_late_kline_beyond_kept_history_are_none_not_later_ones() -> None:
    # A's kline stays stuck while events go on for MAX_TICK_SLOTS + 10 minutes; then B's kline
    # arrives. The event as of B's close was dropped from the kept history, and no later event
    # may stand in for it.
    assembler = BaseBarAssembler(MINUTE)
    stuck = [event(A + i * MINUTE, A) for i in range(MAX_TICK_SLOTS + 10)]
    feed(assembler, stuck)
    late_ts = A + (MAX_TICK_SLOTS + 10) * MINUTE
    (bar,) = assembler.on_event(event(late_ts, B), False)
    assert (bar.open_time, bar.mid) == (B, None)


def test_restore_refuses_state_of_another_base_interval() -> None:
    assembler = BaseBarAssembler(MINUTE)
    assembler.on_event(event(A + 1, A), False)
    with pytest.raises(ValueError, match="base_ms"):
        BaseBarAssembler(5 * MINUTE).restore(assembler.snapshot())


# --- properties over random gated event sequences --------------------------------------------


@st.composite
def gated_events(draw: st.DrawFn) -> tuple[list[MarketEvent], list[bool]]:
    """Sequences the gate would accept: ts never decreases, klines never regress, on the grid."""
    n = draw(st.integers(min_value=1, max_value=40))
    ts, open_index = A + draw(st.integers(0, MINUTE - 1)), 0
    events, flags = [], []
    for _ in range(n):
        ts += draw(st.sampled_from([0, 1, 7_000, 30_000, MINUTE, 3 * MINUTE]))
        open_index += draw(st.sampled_from([0, 0, 0, 1, 2]))
        open_time = A + open_index * MINUTE
        close = draw(st.sampled_from([98.0, 100.0, 102.0]))
        mid = draw(st.floats(min_value=90.0, max_value=110.0, allow_nan=False))
        split = draw(st.sampled_from([None, (1.0, 2.0)]))
        events.append(event(ts, open_time, close=close, mid=mid, depth_split=split))
        flags.append(draw(st.booleans()))
    return events, flags


TICK_FIELDS = ("mid", "best_bid", "best_ask", "depth_top1_usdt", "depth_split", "funding_next",
               "bid_qty", "ask_qty")  # fmt: skip


def reference_bars(events: list[MarketEvent], flags: list[bool]) -> list[Bar]:
    """Brute force over the whole history, straight from the rules."""
    out = []
    newest = None
    for first, e in enumerate(events):
        k = e.kline
        if newest is not None and k.open_time <= newest:
            continue  # not the first event of a new bar
        newest = k.open_time
        # the finalising event: the first from the bar's own on with ts past the close or a later
        # kline
        final = next(
            (i for i in range(first, len(events))
             if events[i].ts > k.close_time or events[i].kline.open_time > k.open_time),
            None,
        )  # fmt: skip
        if final is None:
            continue
        carrying = [i for i in range(first, final + 1) if events[i].kline.open_time == k.open_time]
        last = events[carrying[-1]].kline
        as_of = [i for i in range(final + 1) if events[i].ts <= k.close_time]
        tick: dict[str, Any] = {}
        if as_of:
            tick = dict(zip(TICK_FIELDS, ticks_of(events[as_of[-1]]), strict=True))
        out.append((final, Bar(
            k.open_time, k.close_time, last.open, last.high, last.low, last.close, last.volume,
            jump_count=sum(flags[i] for i in carrying), **tick,
        )))  # fmt: skip
    return [bar for _, bar in sorted(out, key=lambda pair: (pair[0], pair[1].open_time))]


@settings(max_examples=300, deadline=None)
@given(gated_events())
def test_assembler_equals_brute_force_reference(case: tuple[list[MarketEvent], list[bool]]) -> None:
    events, flags = case
    assert feed(BaseBarAssembler(MINUTE), events, flags) == reference_bars(events, flags)


@settings(max_examples=200, deadline=None)
@given(gated_events(), st.integers(min_value=0, max_value=40))
def test_snapshot_restore_mid_stream_equals_uninterrupted(
    case: tuple[list[MarketEvent], list[bool]], cut: int
) -> None:
    events, flags = case
    cut = min(cut, len(events))
    first = BaseBarAssembler(MINUTE)
    head = feed(first, events[:cut], flags[:cut])
    second = BaseBarAssembler(MINUTE)
    second.restore(json.loads(json.dumps(first.snapshot())))
    tail = feed(second, events[cut:], flags[cut:])
    assert head + tail == feed(BaseBarAssembler(MINUTE), events, flags)
    assert second.snapshot() == json.loads(json.dumps(second.snapshot()))
