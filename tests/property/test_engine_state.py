"""Engine state keyed by family name: restore what fits, rebuild the rest from the history, and
move a running engine to another bundle. Every check compares with an uninterrupted run under the
active bundle: engine state exactly equal, and the snapshots that follow exactly equal."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2feature.compute.engine import SymbolEngine, fx_tables
from s2feature.compute.engine_state import (
    BASE_SCOPE,
    WBARS,
    BaseIntervalChangeError,
    EngineStateError,
    StateKey,
)
from s2feature.compute.family import FamilyContext
from s2feature.compute.registry import FAMILIES
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import HOUR_MS, Bar, BarArrays, SeriesId, Snapshot, interval_ms
from tests.support.bundles import bundle_of, knob_values
from tests.support.market_gen import SeriesSpec, make_series, series_specs

FUT = SeriesId("binance", "fut", "BTCUSDT")
WINDOWS = ("1h", "4h", "1d")
BUNDLE = ConfigBundle(base_interval="1h", rev="r1")
SCOPES = (BASE_SCOPE, *WINDOWS)
FAMILY_SCOPES = {f.name: (BASE_SCOPE,) if f.level == "base" else WINDOWS for f in FAMILIES}


def engine(bundle: ConfigBundle, fx: BarArrays | None) -> SymbolEngine:
    return SymbolEngine(FUT, WINDOWS, bundle, fx_tables(fx, WINDOWS) if fx is not None else None)


def feed(target: SymbolEngine, bars: Sequence[Bar]) -> list[Snapshot]:
    return [snap for bar in bars for snap in target.on_base_bar(bar)]


def through_json(state: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(state, allow_nan=False))
    return loaded


def keys_of(name: str) -> set[StateKey]:
    return {(scope, name) for scope in FAMILY_SCOPES[name]}


def assert_continues_like_uninterrupted(
    restored: SymbolEngine, bundle: ConfigBundle, bars: list[Bar], k: int, fx: BarArrays | None
) -> list[Snapshot]:
    """`restored` has seen bars[:k]: its state and every later snapshot equal a fresh run's.
    Returns those later snapshots."""
    whole = engine(bundle, fx)
    head = feed(whole, bars[:k])
    assert restored.snapshot() == whole.snapshot()
    tail = feed(restored, bars[k:])
    assert tail == feed(whole, bars[k:])
    assert all(snap.config_rev == bundle.rev for snap in head + tail)
    return tail


hourly = series_specs(HOUR_MS, 50, 900)
fx_hourly = st.builds(
    SeriesSpec, seed=st.integers(0, 2**32 - 1), n=st.just(1000), base_ms=st.just(HOUR_MS)
)
tamper = st.sampled_from(["version", "params", "drop"])


@settings(max_examples=12, deadline=None)
@given(
    spec=hourly,
    fx_spec=st.none() | fx_hourly,
    cut=st.floats(0.0, 1.0),
    family=st.sampled_from([f.name for f in FAMILIES]),
    how=tamper,
    one_scope=st.booleans(),
)
def test_a_family_whose_saved_state_does_not_fit_is_rebuilt_alone(
    spec: SeriesSpec, fx_spec: Any, cut: float, family: str, how: str, one_scope: bool
) -> None:
    bars = make_series(spec).to_bars()
    fx = make_series(fx_spec) if fx_spec is not None else None
    k = int(cut * len(bars))
    first = engine(BUNDLE, fx)
    feed(first, bars[:k])
    state = through_json(first.snapshot())
    scopes = FAMILY_SCOPES[family][-1:] if one_scope else FAMILY_SCOPES[family]
    for scope in scopes:
        saved = state["families"][scope]
        if how == "drop":  # as written by an engine that did not have this family yet
            del saved[family]
        elif how == "version":
            saved[family]["version"] += 1
        else:
            saved[family]["params"] = {**saved[family]["params"], "written_under": "another"}
    second = engine(BUNDLE, fx)
    stale = second.restore(state)
    assert stale == {(scope, family) for scope in scopes}
    second.rebuild(stale, bars)  # bars after those seen (a lake ahead of the state) are ignored
    assert_continues_like_uninterrupted(second, BUNDLE, bars, k, fx)


# (overrides, families whose state they change); each changes the features of a fresh run.
STATE_CHANGES: dict[str, tuple[dict[str, Any], set[str]]] = {
    "atr_period": ({"windows": {"atr_period": 5}}, {"atr"}),
    "rho_period": ({"windows": {"rho_period": 6}}, {"correlation"}),
    "rho_z_period": ({"windows": {"rho_z_period": 8}}, {"correlation"}),
    "coverage_min": ({"windows": {"coverage_min": 1.0}}, {"volatility"}),
    "two_at_once": ({"windows": {"atr_period": 20, "coverage_min": 0.5}}, {"atr", "volatility"}),
}
# Overrides that change no family state: (overrides, whether a fresh run's snapshots change
# beyond their config_rev). DQC jump settings and the mode act outside the engine.
THRESHOLD_CHANGES: dict[str, tuple[dict[str, Any], bool]] = {
    "liq_threshold_usdt": ({"liq_threshold_usdt": 2e6}, True),
    "regime_quantiles": ({"regime": {"frozen_below": 0.4, "extreme_above": 0.6}}, True),
    "bounds": ({"bounds": {"spread_bps_max": 3.0, "depth_top1_usdt_max": 2e6}}, True),
    "required": ({"features": {"required": ["rv_30d", "rv_pctile_30d", "regime_label"]}}, True),
    "enabled": (
        {"features": {"enabled": ["atr_14", "rv_1d", "spread_bps"], "required": ["atr_14"]}},
        True,
    ),
    "dqc": ({"dqc": {"jump_lookback": 30, "jump_mad_multiplier": 3.0}}, False),
    "mode": ({"mode": {"persist_all": True}}, False),
}

# Long enough for the 30-day percentile and the regime label, with FX for the correlation.
LONG_BARS = make_series(
    SeriesSpec(seed=11, n=1000, base_ms=HOUR_MS, gap_prob=0.01, max_gap=3)
).to_bars()
LONG_FX = make_series(SeriesSpec(seed=12, n=1010, base_ms=HOUR_MS))


def features_and_dqc(snaps: list[Snapshot]) -> list[tuple[Any, ...]]:
    return [(s.signal_id, s.features, s.dqc) for s in snaps]


@pytest.mark.parametrize("change", STATE_CHANGES, ids=list(STATE_CHANGES))
@pytest.mark.parametrize("cut", [0.3, 0.85])
def test_with_bundle_rebuilds_the_families_whose_state_params_change(
    change: str, cut: float
) -> None:
    overrides, families = STATE_CHANGES[change]
    new_bundle = BUNDLE.with_overrides(rev="r2", **overrides)
    k = int(cut * len(LONG_BARS))
    running = engine(BUNDLE, LONG_FX)
    before = engine(BUNDLE, LONG_FX)  # the same run, left under the old bundle
    feed(running, LONG_BARS[:k])
    feed(before, LONG_BARS[:k])
    moved, stale = running.with_bundle(new_bundle)
    assert stale == set().union(*(keys_of(name) for name in families))
    moved.rebuild(stale, LONG_BARS[:k])
    tail = assert_continues_like_uninterrupted(moved, new_bundle, LONG_BARS, k, LONG_FX)
    # The change matters: the run left under the old bundle goes on differently.
    assert features_and_dqc(feed(before, LONG_BARS[k:])) != features_and_dqc(tail)


@pytest.mark.parametrize("change", THRESHOLD_CHANGES, ids=list(THRESHOLD_CHANGES))
def test_with_bundle_keeps_every_state_for_threshold_changes(change: str) -> None:
    overrides, changes_outputs = THRESHOLD_CHANGES[change]
    new_bundle = BUNDLE.with_overrides(rev="r2", **overrides)
    k = int(0.8 * len(LONG_BARS))
    running = engine(BUNDLE, LONG_FX)
    feed(running, LONG_BARS[:k])
    moved, stale = running.with_bundle(new_bundle)
    assert stale == set()
    tail = feed(moved, LONG_BARS[k:])
    old_tail = feed(running, LONG_BARS[k:])
    whole = engine(new_bundle, LONG_FX)
    feed(whole, LONG_BARS[:k])
    assert tail == feed(whole, LONG_BARS[k:])
    assert moved.snapshot() == whole.snapshot()
    assert (features_and_dqc(tail) != features_and_dqc(old_tail)) is changes_outputs


SHORT_BARS = LONG_BARS[:300]
ALL_KEYS = {(scope, f.name) for f in FAMILIES for scope in FAMILY_SCOPES[f.name]} | {
    (w, WBARS) for w in WINDOWS
}


def saved_after(bars: list[Bar], bundle: ConfigBundle = BUNDLE) -> dict[str, Any]:
    first = engine(bundle, LONG_FX)
    feed(first, bars)
    return through_json(first.snapshot())


def restored_and_rebuilt(state: Any, expected_stale: set[StateKey]) -> None:
    second = engine(BUNDLE, LONG_FX)
    stale = second.restore(state)
    assert stale == expected_stale
    second.rebuild(stale, SHORT_BARS)
    assert_continues_like_uninterrupted(second, BUNDLE, LONG_BARS, len(SHORT_BARS), LONG_FX)


def test_a_state_of_another_format_leaves_everything_to_rebuild() -> None:
    state = saved_after(SHORT_BARS)
    positional = {
        "base": list(state["families"]["base"].values()),
        "builders": state["builders"],
        "wbar": {w: list(state["families"][w].values()) for w in WINDOWS},
    }
    restored_and_rebuilt(positional, ALL_KEYS)


def test_a_state_written_under_another_base_interval_leaves_everything_to_rebuild() -> None:
    state = saved_after(SHORT_BARS)
    state["base_ms"] = 5 * 60_000
    restored_and_rebuilt(state, ALL_KEYS)


def test_a_missing_builder_rebuilds_it_with_the_families_of_its_window() -> None:
    state = saved_after(SHORT_BARS)
    del state["builders"]["4h"]
    expected = {("4h", WBARS)} | {("4h", f.name) for f in FAMILIES if f.level == "wbar"}
    restored_and_rebuilt(state, expected)


def test_families_the_engine_does_not_have_are_ignored() -> None:
    state = saved_after(SHORT_BARS)
    for scope in SCOPES:
        state["families"][scope]["retired"] = {"version": 3, "params": {}, "state": [1, 2]}
    state["families"]["2w"] = {"atr": {"version": 1, "params": {}, "state": {}}}
    restored_and_rebuilt(state, set())


def test_an_empty_history_rebuilds_to_a_fresh_engine() -> None:
    second = engine(BUNDLE, LONG_FX)
    stale = second.restore({"format": 1})
    assert (stale, second.seen_until) == (ALL_KEYS, None)
    second.rebuild(stale, [])
    assert second.snapshot() == engine(BUNDLE, LONG_FX).snapshot()


def test_the_engine_knows_the_last_bar_it_has_seen() -> None:
    first = engine(BUNDLE, None)
    assert first.seen_until == -1
    feed(first, SHORT_BARS)
    assert first.seen_until == SHORT_BARS[-1].close_time
    second = engine(BUNDLE, None)
    second.restore(through_json(first.snapshot()))
    assert second.seen_until == SHORT_BARS[-1].close_time


def test_a_history_that_ends_before_the_last_bar_seen_is_refused() -> None:
    second = engine(BUNDLE, LONG_FX)
    stale = second.restore(saved_after(SHORT_BARS) | {"families": {}})
    before = second.snapshot()
    with pytest.raises(ValueError, match="the history ends at"):
        second.rebuild(stale, SHORT_BARS[:-1])
    assert second.snapshot() == before


def _garbage() -> dict[str, Any]:
    good = saved_after(SHORT_BARS)
    cases: dict[str, Any] = {"not_an_object": [good]}
    changes: dict[str, Callable[[dict[str, Any]], object]] = {
        "families_not_an_object": lambda s: s.update(families=[1]),
        "builders_not_an_object": lambda s: s.update(builders="x"),
        "scope_not_an_object": lambda s: s["families"].update({"1h": 7}),
        "entry_without_state": lambda s: s["families"]["1h"]["atr"].pop("state"),
        "entry_not_an_object": lambda s: s["families"]["base"].update(volatility=[]),
        "fitting_entry_unreadable": lambda s: s["families"]["4h"]["atr"].update(state={"x": 1}),
        "fitting_entry_wrong_type": lambda s: s["families"]["1d"]["book"].update(state=[None]),
        "builder_unreadable": lambda s: s["builders"]["1h"].update(ohlv=[1.0]),
        "seen_until_not_an_integer": lambda s: s.update(seen_until="1h"),
        "seen_until_absent": lambda s: s.pop("seen_until"),
    }
    for name, change in changes.items():
        state = through_json(good)
        change(state)
        cases[name] = state
    return cases


GARBAGE = _garbage()


@pytest.mark.parametrize("name", GARBAGE, ids=list(GARBAGE))
def test_garbage_raises_a_clear_error_and_changes_nothing(name: str) -> None:
    target = engine(BUNDLE, LONG_FX)
    feed(target, SHORT_BARS[:50])
    before = target.snapshot()
    with pytest.raises(EngineStateError, match="engine state"):
        target.restore(GARBAGE[name])
    assert target.snapshot() == before


def test_a_base_interval_change_cannot_be_applied_to_a_running_engine() -> None:
    with pytest.raises(BaseIntervalChangeError, match="base interval"):
        engine(BUNDLE, None).with_bundle(BUNDLE.with_overrides(base_interval="1m"))


def test_rebuild_refuses_keys_the_engine_does_not_have() -> None:
    with pytest.raises(ValueError, match="not parts of this engine"):
        engine(BUNDLE, None).rebuild({("2w", "atr")}, SHORT_BARS)


def test_with_bundle_leaves_the_running_engine_as_it_was() -> None:
    running = engine(BUNDLE, LONG_FX)
    feed(running, SHORT_BARS)
    before = running.snapshot()
    moved, stale = running.with_bundle(BUNDLE.with_overrides(rev="r2", windows={"atr_period": 3}))
    moved.rebuild(stale, SHORT_BARS)
    feed(moved, LONG_BARS[300:400])
    assert running.snapshot() == before


MINUTE = 60_000
MINUTE_WINDOWS = ("1m", "5m", "1h")
MINUTE_BUNDLE = ConfigBundle(rev="m1")


@settings(max_examples=10, deadline=None)
@given(
    spec=series_specs(MINUTE, 1, 2500),
    cut=st.floats(0.0, 1.0),
    old=knob_values,
    new=knob_values,
)
def test_with_bundle_then_rebuild_equals_a_fresh_run_under_any_new_bundle(
    spec: SeriesSpec, cut: float, old: dict[str, Any], new: dict[str, Any]
) -> None:
    """Minute bars with gaps; every drawn parameter may change. Exactly the families whose
    declared params changed are stale, and after the rebuild the engine is a fresh run's."""
    old_bundle = bundle_of(old, MINUTE_BUNDLE)
    new_bundle = bundle_of(new, MINUTE_BUNDLE, rev="m2")
    bars = make_series(spec).to_bars()
    k = int(cut * len(bars))
    running = SymbolEngine(FUT, MINUTE_WINDOWS, old_bundle)
    feed(running, bars[:k])
    moved, stale = running.with_bundle(new_bundle)
    expected = set()
    for family in FAMILIES:
        scopes = (BASE_SCOPE,) if family.level == "base" else MINUTE_WINDOWS
        for scope in scopes:
            w_ms = MINUTE if scope == BASE_SCOPE else interval_ms(scope)
            before, after = (
                dict(family.state_params(FamilyContext(b, w_ms, MINUTE, "fut")))
                for b in (old_bundle, new_bundle)
            )
            if before != after:
                expected.add((scope, family.name))
    assert stale == expected
    moved.rebuild(stale, bars)
    whole = SymbolEngine(FUT, MINUTE_WINDOWS, new_bundle)
    feed(whole, bars[:k])
    assert moved.snapshot() == whole.snapshot()
    assert feed(moved, bars[k:]) == feed(whole, bars[k:])
