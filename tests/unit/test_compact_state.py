"""Compact checkpoints: a family whose bulk state is a function of the base bars saves only what
the lake does not hold, and a restore from that and the lake's bars continues exactly like an
uninterrupted run; bars that do not give back what was saved are detected, never used."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from s2feature import strict_json
from s2feature.compute.engine import SymbolEngine
from s2feature.compute.engine_state import BASE_SCOPE
from s2feature.compute.family import (
    CloseHistory,
    FamilyContext,
    HistoryBacked,
    HistoryMismatchError,
)
from s2feature.compute.rolling import RollingSums
from s2feature.compute.volatility import OnlineVolatilityFamily
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import HOUR_MS, INTERVAL_MS, BarArrays, FeatureValue, SeriesId, Snapshot
from tests.support.market_gen import SeriesSpec, make_series

BUNDLE = ConfigBundle(base_interval="1h")
MINUTE_MS = INTERVAL_MS["1m"]
BARS = make_series(SeriesSpec(seed=5, n=1500, base_ms=HOUR_MS, gap_prob=0.01, max_gap=4))
SERIES = SeriesId("test", "fut", "BTCUSDT")


def round_trip(state: Any) -> Any:
    return json.loads(strict_json.encode(state))


def closes(bars: BarArrays) -> CloseHistory:
    return CloseHistory(bars.close_time, bars.close)


def volatility() -> OnlineVolatilityFamily:
    return OnlineVolatilityFamily(FamilyContext(BUNDLE, HOUR_MS, HOUR_MS))


def run(instance: OnlineVolatilityFamily, bars: BarArrays) -> list[dict[str, FeatureValue]]:
    out = []
    for bar in bars.to_bars():
        instance.update(bar)
        out.append(instance.values_at(bar.close_time))
    return out


@pytest.mark.parametrize("cut", [1, 30, 700, 1100, 1499])
def test_volatility_restored_from_its_checkpoint_and_the_bars_continues_exactly(cut: int) -> None:
    live = volatility()
    run(live, BARS.slice(0, cut))
    saved = round_trip(live.checkpoint())
    restored = volatility()
    assert isinstance(restored, HistoryBacked)
    # The lake may hold more history than needed: only the bars of the windows are used.
    restored.restore_from_history(saved, closes(BARS.slice(0, cut)))
    assert restored.snapshot() == live.snapshot()
    rest = BARS.slice(cut, len(BARS))
    assert run(restored, rest) == run(live, rest)


def test_the_checkpoint_after_every_bar_equals_one_made_afresh() -> None:
    """`checkpoint` reuses its packed samples while they are unchanged: after every one-minute
    bar, across hourly samples, gaps, a reset and a restore, it equals the checkpoint of a
    family that never made one before."""
    context = FamilyContext(ConfigBundle(), MINUTE_MS, MINUTE_MS)
    live = OnlineVolatilityFamily(context)
    bars = make_series(SeriesSpec(seed=9, n=3000, base_ms=MINUTE_MS, gap_prob=0.002, max_gap=30))

    def afresh() -> Any:
        twin = OnlineVolatilityFamily(context)
        twin.restore(round_trip(live.snapshot()))
        return round_trip(twin.checkpoint())

    packed, every = 0, bars.to_bars()
    for index, bar in enumerate(every):
        if index == 1700:
            saved = round_trip(live.snapshot())
            live.reset()
            live.restore(saved)
        live.update(bar)
        before = live._packed
        assert round_trip(live.checkpoint()) == afresh()
        packed += live._packed is not before
    # Packed again when the hourly samples changed (about once an hour from the first day on),
    # reused in between.
    assert 0 < packed < len(every) // 30


def test_the_checkpoint_does_not_grow_with_the_window() -> None:
    live = volatility()
    run(live, BARS.slice(0, 1400))
    compact, whole = strict_json.encode(live.checkpoint()), strict_json.encode(live.snapshot())
    assert len(compact) < len(whole) / 4
    assert "values" not in live.checkpoint()["sums"][0]


def test_just_the_history_it_declares_is_enough() -> None:
    live = volatility()
    run(live, BARS.slice(0, 1200))
    newest = int(BARS.close_time[1199])
    keep = BARS.open_time >= newest - live.history_ms()
    recent = BARS.slice(int(np.argmax(keep)), 1200)
    restored = volatility()
    restored.restore_from_history(round_trip(live.checkpoint()), closes(recent))
    assert restored.snapshot() == live.snapshot()


def test_bars_that_do_not_give_back_the_windows_are_refused() -> None:
    live = volatility()
    run(live, BARS.slice(0, 1200))
    saved = round_trip(live.checkpoint())
    # A bar lost inside the 30-day window.
    holes = BarArrays(**{k: np.delete(v, 1000) for k, v in BARS.slice(0, 1200).__dict__.items()})
    with pytest.raises(HistoryMismatchError):
        volatility().restore_from_history(saved, closes(holes))
    # A changed close: the count still fits, the sum does not.
    changed = BARS.slice(0, 1200)
    close = changed.close.copy()
    close[1100] *= 1.5
    changed = BarArrays(**{**changed.__dict__, "close": close})
    with pytest.raises(HistoryMismatchError):
        volatility().restore_from_history(saved, closes(changed))


def test_rolling_sums_restore_running_from_the_series_equals_the_original() -> None:
    sums = RollingSums([5, 20])
    pairs = [(t, float(t % 7) * 1e-3) for t in range(1, 60) if t % 11]
    for time, value in pairs:
        sums.advance(time - 1)
        sums.add(time, value)
    again = RollingSums([5, 20])
    again.restore_running(sums.running(), [t for t, _ in pairs], [v for _, v in pairs])
    assert again.snapshot() == sums.snapshot()


def engine_run(engine: SymbolEngine, bars: BarArrays) -> list[Snapshot]:
    return [snap for bar in bars.to_bars() for snap in engine.on_base_bar(bar)]


def test_engine_compact_state_restores_with_the_lake_bars_and_is_stale_without() -> None:
    windows = ("1h", "4h")
    live = SymbolEngine(SERIES, windows, BUNDLE)
    engine_run(live, BARS.slice(0, 1000))
    state = round_trip(live.snapshot(compact=True))
    assert state["families"][BASE_SCOPE]["volatility"]["history"] is True

    restored = SymbolEngine(SERIES, windows, BUNDLE)
    assert restored.restore(state, closes(BARS.slice(0, 1000))) == set()
    rest = BARS.slice(1000, len(BARS))
    assert engine_run(restored, rest) == engine_run(live, rest)

    without = SymbolEngine(SERIES, windows, BUNDLE)
    assert without.restore(state) == {(BASE_SCOPE, "volatility")}


def assert_close(got: list[Snapshot], want: list[Snapshot]) -> None:
    """Same snapshots, every number within the project's 1e-9 agreement."""
    assert [(s.window, s.t0, s.dqc) for s in got] == [(s.window, s.t0, s.dqc) for s in want]
    for mine, theirs in zip(got, want, strict=True):
        assert mine.features.keys() == theirs.features.keys()
        for name, value in mine.features.items():
            other = theirs.features[name]
            if isinstance(value, float) and isinstance(other, float):
                assert value == pytest.approx(other, rel=1e-9, abs=1e-12), (mine.signal_id, name)
            else:
                assert value == other, (mine.signal_id, name)


@pytest.mark.parametrize("cut", [2, 200, 900, 1300])
def test_engine_warm_up_equals_a_run_over_the_same_bars(cut: int) -> None:
    windows = ("1h", "4h")
    live = SymbolEngine(SERIES, windows, BUNDLE)
    engine_run(live, BARS.slice(0, cut))
    warmed = SymbolEngine(SERIES, windows, BUNDLE)
    warmed.warm_up(BARS.slice(0, cut))
    assert warmed.seen_until == live.seen_until
    rest = BARS.slice(cut, len(BARS))
    assert_close(engine_run(warmed, rest), engine_run(live, rest))


def test_engine_warm_up_needs_whole_bars_of_the_tail_only() -> None:
    windows = ("1h", "4h")
    cut = 1400
    whole = SymbolEngine(SERIES, windows, BUNDLE)
    whole.warm_up(BARS.slice(0, cut))
    last = int(BARS.close_time[cut - 1])
    tail_start = whole.warm_up_tail_start(last)
    first = int(np.searchsorted(BARS.open_time, tail_start))
    assert first > 0  # the tail really is shorter than the history
    short = SymbolEngine(SERIES, windows, BUNDLE)
    short.warm_up(BARS.slice(first, cut), closes(BARS.slice(0, cut)))
    assert short.snapshot() == whole.snapshot()


def test_engine_warm_up_of_nothing_is_a_fresh_engine() -> None:
    warmed = SymbolEngine(SERIES, ("1h",), BUNDLE)
    warmed.warm_up(BARS.slice(0, 0))
    assert warmed.snapshot() == SymbolEngine(SERIES, ("1h",), BUNDLE).snapshot()


def test_rolling_sums_keep_exact_times_across_rebases_and_wide_spans() -> None:
    # Offsets are 4 bytes: a series running for months is re-based as old pairs leave, and one
    # whose windows hold more than 2^32 ms keeps 8-byte times; both give the plain arithmetic.
    day = 86_400_000
    for spans in ([day, 30 * day], [60 * day]):
        sums, kept = RollingSums(spans), []
        for step in range(400):
            time = 1_700_000_000_000 + step * day // 2
            sums.advance(time - 1)
            sums.add(time, float(step))
            kept.append((time, float(step)))
            for index, span in enumerate(spans):
                window = [(t, v) for t, v in kept if t > time - 1 - span]
                assert sums.window(index) == ([t for t, _ in window], [v for _, v in window])
                assert sums.total(index) == pytest.approx(sum(v for _, v in window), rel=1e-12)
        again = RollingSums(spans)
        again.restore(sums.snapshot())
        assert again.snapshot() == sums.snapshot()


def test_rolling_sums_drop_old_pairs_in_one_move_and_keep_every_window() -> None:
    sums, values = RollingSums([50, 3000]), []
    for time in range(1, 12_000):
        sums.advance(time - 1)
        sums.add(time, float(time % 13))
        values.append(float(time % 13))
        if time % 997 == 0:
            # advanced to time - 1, then time added: (time - 1 - span, time]
            assert sums.window(0) == (list(range(time - 50, time + 1)), values[-51:])
            assert sums.window(1) == (list(range(max(1, time - 3000), time + 1)), values[-3001:])
    # Pairs no window holds are not kept for ever: at most the compaction slack.
    assert len(sums._times) <= 3001 + 4096
