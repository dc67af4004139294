"""The FX leg's pure parts: live FX w-bar closes equal the batch aggregation and are readable only
once final; the barrier holds a symbol's bars until the FX feed reaches them or their deadline,
and marks the snapshots made without FX `fx_late`; the correlation family recomputes the rhos its
z-score needs once a late FX close arrives."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from s2feature.compute.bars import aggregate_wbars
from s2feature.compute.batch import compute_batch
from s2feature.compute.correlation import RHO, RHO_Z
from s2feature.compute.engine import SymbolEngine, run_online
from s2feature.compute.fx_closes import LiveFxCloses
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import BarArrays, SeriesId, Snapshot
from s2feature.service.fx_barrier import FxGate
from tests.support.market_gen import SeriesSpec, make_series

MINUTE_MS = 60_000
WINDOWS = ("1m", "5m")
WINDOWS_MS = (MINUTE_MS, 5 * MINUTE_MS)
SERIES = SeriesId("binance", "fut", "BTCUSDT")
BUNDLE = ConfigBundle()


def fx_series(seed: int, n: int, gap_prob: float = 0.0) -> BarArrays:
    return make_series(SeriesSpec(seed=seed, n=n, base_ms=MINUTE_MS, gap_prob=gap_prob, max_gap=7))


def feed_all(bars: BarArrays) -> LiveFxCloses:
    live = LiveFxCloses(WINDOWS_MS)
    for bar in bars.to_bars():
        assert live.add(bar.open_time, bar.close_time, bar.close)
    return live


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), cut=st.floats(0.0, 1.0), gap_prob=st.sampled_from([0.0, 0.2]))
def test_live_fx_closes_equal_the_batch_w_bars_and_only_final_ones_are_readable(
    seed: int, cut: float, gap_prob: float
) -> None:
    fx = fx_series(seed, 200, gap_prob)
    k = max(1, int(cut * len(fx)))
    prefix = fx.slice(0, k)
    live = feed_all(prefix)
    assert live.known_until == int(prefix.close_time[-1])
    for w in WINDOWS_MS:
        full, _ = aggregate_wbars(fx, w)  # every w-bar, final or not yet at the cut
        view = live.view(w)
        for t, close in zip(full.close_time.tolist(), full.close.tolist(), strict=True):
            got = view.close_at(t)
            if t <= live.known_until:
                assert got == close  # final: equal to the batch path's w-bar close
            else:
                assert got is None  # still open at the cut: never read early
        # close times with no FX bar in the period stay absent
        present = set(full.close_time.tolist())
        for t in range(int(fx.open_time[0]) - 1 + w, live.known_until + 1, w):
            if t not in present:
                assert view.close_at(t) is None


def test_a_bar_seen_already_is_skipped() -> None:
    live = feed_all(fx_series(1, 10))
    bar = fx_series(1, 10).to_bars()[3]
    assert not live.add(bar.open_time, bar.close_time, bar.close * 2)
    assert live.view(MINUTE_MS).close_at(bar.close_time) == bar.close


def test_pruned_closes_are_gone_and_backfilled_ones_equal_the_batch_w_bars() -> None:
    fx = fx_series(2, 300, gap_prob=0.1)
    live = feed_all(fx.slice(150, 300))
    first = int(fx.open_time[150])
    assert live.covered_from == first
    live.backfill(
        zip(fx.open_time.tolist(), fx.close_time.tolist(), fx.close.tolist(), strict=True)
    )
    assert live.covered_from == int(fx.open_time[0])
    for w in WINDOWS_MS:
        full, _ = aggregate_wbars(fx, w)
        for t, close in zip(full.close_time.tolist(), full.close.tolist(), strict=True):
            assert live.view(w).close_at(t) == close  # the period across the seam too
    cut = int(fx.close_time[200])
    live.prune(cut)
    assert live.view(MINUTE_MS).close_at(int(fx.close_time[199])) is None
    assert live.view(MINUTE_MS).close_at(cut) == float(fx.close[200])


def snapshots_through_gate(
    sym: BarArrays, fx: BarArrays, fx_lag: int, wait_s: float, stalls: set[int]
) -> tuple[list[Snapshot], int]:
    """Run the symbol's bars through a gate while the FX feed lags `fx_lag` bars behind; at the
    bar indexes in `stalls` the FX feed does not advance and the clock jumps past the wait."""
    live = LiveFxCloses(WINDOWS_MS)
    views = {w: live.view(ms) for w, ms in zip(WINDOWS, WINDOWS_MS, strict=True)}
    engine = SymbolEngine(SERIES, WINDOWS, BUNDLE, views)
    gate = FxGate(live, max_wait_s=2.0)
    fx_bars = fx.to_bars()
    fed = 0
    now = 0.0
    out: list[Snapshot] = []
    for i, bar in enumerate(sym.to_bars()):
        now += 0.01
        if i in stalls:
            out.extend(gate.feed(engine.on_base_bar, [bar], now))
            now += 5.0  # past the deadline, the FX feed still behind
            out.extend(gate.feed(engine.on_base_bar, [], now))
            continue
        target = max(0, i + 1 - fx_lag)
        out.extend(gate.feed(engine.on_base_bar, [bar], now))
        while fed < min(target, len(fx_bars)):
            b = fx_bars[fed]
            live.add(b.open_time, b.close_time, b.close)
            fed += 1
            out.extend(gate.feed(engine.on_base_bar, [], now))
    while fed < len(fx_bars):  # the FX catches up at the end
        b = fx_bars[fed]
        live.add(b.open_time, b.close_time, b.close)
        fed += 1
    out.extend(gate.feed(engine.on_base_bar, [], now))
    assert not gate.waiting
    return out, gate.late


def test_bars_held_for_fx_give_exactly_the_recompute() -> None:
    sym = fx_series(11, 400)
    fx = fx_series(12, 400)
    want = compute_batch(sym, SERIES, WINDOWS, BUNDLE, fx)
    assert sum(s.features[RHO_Z] is not None for s in want) > 100
    for lag in (-50, 0, 1, 3):  # FX ahead, together, behind the symbol
        got, late = snapshots_through_gate(sym, fx, lag, 2.0, set())
        assert late == 0
        assert [(s.t0, s.window) for s in got] == [(s.t0, s.window) for s in want]
        for a, b in zip(got, want, strict=True):
            for name in (RHO, RHO_Z):
                va, vb = a.features[name], b.features[name]
                assert (va is None) == (vb is None), (lag, a.t0, name)
                if va is not None and vb is not None:
                    assert abs(va - vb) <= 1e-9 * max(1.0, abs(vb))


def test_fx_late_snapshots_are_the_only_difference_and_say_so() -> None:
    sym = fx_series(21, 400)
    fx = fx_series(22, 400)
    want = {(s.t0, s.window): s for s in compute_batch(sym, SERIES, WINDOWS, BUNDLE, fx)}
    stalls = {150, 151, 230}
    got, late = snapshots_through_gate(sym, fx, 1, 2.0, stalls)
    late_snaps = [s for s in got if "fx_late" in s.dqc.reasons]
    assert late == len(late_snaps) > 0
    for snap in got:
        ref = want[(snap.t0, snap.window)]
        if "fx_late" in snap.dqc.reasons:
            assert snap.features[RHO] is None
            assert snap.features[RHO_Z] is None
            assert "fx_late" in snap.dqc.note
            assert snap.dqc.passed == ref.dqc.passed  # rho is not required: no verdict change
        else:
            for name in (RHO, RHO_Z):  # after the late ones too: the z-score recomputes rhos
                va, vb = snap.features[name], ref.features[name]
                assert (va is None) == (vb is None), (snap.t0, name)
                if va is not None and vb is not None:
                    assert abs(va - vb) <= 1e-9 * max(1.0, abs(vb))
    assert any(
        ref.features[RHO] is not None for s in late_snaps for ref in [want[(s.t0, s.window)]]
    )


def test_a_held_bar_is_checkpointed_and_waits_again_after_a_restore() -> None:
    live = LiveFxCloses(WINDOWS_MS)
    engine = SymbolEngine(SERIES, WINDOWS, BUNDLE)
    gate = FxGate(live, max_wait_s=2.0)
    bar = fx_series(3, 3).to_bars()[0]
    assert gate.feed(engine.on_base_bar, [bar], now=0.0) == []
    saved = gate.snapshot()
    again = FxGate(live, max_wait_s=2.0)
    again.restore(saved, now=100.0)
    assert again.waiting
    assert again.next_deadline() == 102.0
    assert not again.ready(101.0)
    assert again.ready(102.0)
    live.add(bar.open_time, bar.close_time, 1.0)
    assert again.ready(100.5)
    assert [s.window for s in again.feed(engine.on_base_bar, [], now=100.5)] == [
        "1m"
    ]  # its 5m is open
    assert not again.waiting


def test_the_online_engine_with_a_full_fx_table_still_equals_batch() -> None:
    sym, fx = fx_series(31, 300, 0.1), fx_series(32, 300, 0.1)
    online = run_online(sym.to_bars(), SERIES, WINDOWS, BUNDLE, fx)
    batch = compute_batch(sym, SERIES, WINDOWS, BUNDLE, fx)
    for a, b in zip(online, batch, strict=True):
        for name in (RHO, RHO_Z):
            va, vb = a.features[name], b.features[name]
            assert (va is None) == (vb is None)
            if va is not None and vb is not None:
                assert np.isclose(va, vb, rtol=1e-9, atol=1e-12)
