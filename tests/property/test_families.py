"""Generic checks every registered feature family gets (also listed in docs/features.md),
under bundles whose parameters vary:

1. online == batch on any valid sequence, rtol 1e-9, and both give exactly `family.features`;
2. k steps, snapshot, restore into a fresh instance (through JSON), the rest == uninterrupted;
3. the same across bundles: a state saved under one bundle, restored under another with the same
   `state_params`, continues exactly like a run under the second (the declared params suffice);
4. reset() == a fresh instance;
5. no leakage: changing any bar after t0 never changes a value at t0.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2feature.compute.family import FamilyContext, FeatureFamily, FxCloseTable, OnlineFamily
from s2feature.compute.registry import FAMILIES
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import HOUR_MS, BarArrays, FeatureValue
from tests.support.bundles import KNOBS, bundle_of, knob_values
from tests.support.market_gen import SeriesSpec, make_series, series_specs

BASE_MS = HOUR_MS  # hourly base bars: 30 days of history in ~800 bars keeps examples small
BUNDLE = ConfigBundle(base_interval="1h")
FAMILY_IDS = [f.name for f in FAMILIES]

bundles = st.just(BUNDLE) | knob_values.map(lambda values: bundle_of(values, BUNDLE))


def values_close(a: FeatureValue, b: FeatureValue) -> bool:
    if a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def as_value(array: np.ndarray, i: int) -> FeatureValue:
    value = array[i]
    if array.dtype == object:
        return None if value is None else str(value)
    return None if np.isnan(value) else float(value)


def context(
    bars: BarArrays, fx: BarArrays | None, online: bool, bundle: ConfigBundle = BUNDLE
) -> FamilyContext:
    if fx is None:
        return FamilyContext(bundle, BASE_MS, BASE_MS, "fut")
    if online:
        table = FxCloseTable()
        for t, c in zip(fx.close_time.tolist(), fx.close.tolist(), strict=True):
            table.add(t, c)
        return FamilyContext(bundle, BASE_MS, BASE_MS, "fut", fx_online=table)
    return FamilyContext(bundle, BASE_MS, BASE_MS, "fut", fx_batch=(fx.close_time, fx.close))


def eval_times(family: FeatureFamily, bars: BarArrays) -> list[tuple[int, int]]:
    """(bars fed so far, t0): every close, and for base families also a t0 inside each gap."""
    out = []
    closes = bars.close_time.tolist()
    for i, close in enumerate(closes):
        if family.level == "base" and i and bars.open_time[i] - closes[i - 1] > 1:
            out.append((i, int(bars.open_time[i]) - 1))  # the close of the slot just before bar i
        out.append((i + 1, close))
    return out


def run_online(
    family: FeatureFamily,
    instance: OnlineFamily,
    bars: list[Any],
    schedule: list[tuple[int, int]],
    fed: int = 0,
) -> list[dict[str, FeatureValue]]:
    results = []
    for count, t0 in schedule:
        while fed < count:
            instance.update(bars[fed])
            fed += 1
        results.append(instance.values_at(t0))
    return results


def batch_values(
    family: FeatureFamily,
    bars: BarArrays,
    t0s: list[int],
    fx: BarArrays | None,
    bundle: ConfigBundle = BUNDLE,
) -> list[dict[str, FeatureValue]]:
    ctx = context(bars, fx, online=False, bundle=bundle)
    arrays = family.batch(bars, np.array(t0s, dtype=np.int64), ctx)
    assert set(arrays) == set(family.features), f"{family.name}: batch keys"
    return [{k: as_value(v, i) for k, v in arrays.items()} for i in range(len(t0s))]


def assert_rows_equal(
    got: list[dict[str, FeatureValue]], want: list[dict[str, FeatureValue]], label: str
) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert set(g) == set(w), f"{label} row {i}: keys differ"
        for name in g:
            assert values_close(g[name], w[name]), f"{label} row {i} {name}: {g[name]} != {w[name]}"


fx_specs = st.builds(
    SeriesSpec,
    seed=st.integers(0, 2**32 - 1),
    n=st.just(1000),
    base_ms=st.just(BASE_MS),
    gap_prob=st.sampled_from([0.0, 0.05]),
    max_gap=st.sampled_from([1, 48]),
)
long_series = series_specs(BASE_MS, 20, 900)


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@settings(max_examples=25, deadline=None)
@given(spec=long_series, fx_spec=st.none() | fx_specs, bundle=bundles)
def test_online_equals_batch(
    family: FeatureFamily, spec: SeriesSpec, fx_spec: Any, bundle: ConfigBundle
) -> None:
    bars = make_series(spec)
    fx = make_series(fx_spec) if fx_spec is not None else None
    schedule = eval_times(family, bars)
    instance = family.online(context(bars, fx, online=True, bundle=bundle))
    online = run_online(family, instance, bars.to_bars(), schedule)
    assert all(list(row) == list(family.features) for row in online), f"{family.name}: keys"
    batch = batch_values(family, bars, [t0 for _, t0 in schedule], fx, bundle)
    assert_rows_equal(online, batch, family.name)


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@settings(max_examples=15, deadline=None)
@given(spec=long_series, fx_spec=st.none() | fx_specs, cut=st.floats(0.0, 1.0), bundle=bundles)
def test_snapshot_restore_equals_uninterrupted(
    family: FeatureFamily, spec: SeriesSpec, fx_spec: Any, cut: float, bundle: ConfigBundle
) -> None:
    bars = make_series(spec)
    fx = make_series(fx_spec) if fx_spec is not None else None
    items = bars.to_bars()
    schedule = eval_times(family, bars)
    k = int(cut * len(schedule))
    whole = run_online(family, family.online(context(bars, fx, True, bundle)), items, schedule)
    first = family.online(context(bars, fx, True, bundle))
    head = run_online(family, first, items, schedule[:k])
    state = json.loads(json.dumps(first.snapshot(), allow_nan=False))
    second = family.online(context(bars, fx, True, bundle))
    second.restore(state)
    fed = schedule[k - 1][0] if k else 0
    tail = run_online(family, second, items, schedule[k:], fed=fed)
    assert head + tail == whole


def declared_knobs(family: FeatureFamily, bundle: ConfigBundle) -> set[str]:
    params = family.state_params(FamilyContext(bundle, BASE_MS, BASE_MS, "fut"))
    return set(params) & set(KNOBS)


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@settings(max_examples=15, deadline=None)
@given(
    spec=long_series,
    fx_spec=st.none() | fx_specs,
    cut=st.floats(0.0, 1.0),
    new=knob_values,
    other=knob_values,
)
def test_restore_under_a_bundle_with_the_same_state_params_equals_a_run_under_it(
    family: FeatureFamily,
    spec: SeriesSpec,
    fx_spec: Any,
    cut: float,
    new: dict[str, Any],
    other: dict[str, Any],
) -> None:
    """Saved under `old`, which differs from `new` in every knob the family does not declare:
    the declared params must be all that the saved state depends on."""
    new_bundle = bundle_of(new, BUNDLE)
    kept = declared_knobs(family, new_bundle)
    old_values = {name: new[name] if name in kept else other[name] for name in KNOBS}
    old_bundle = bundle_of(old_values, BUNDLE)
    old_ctx = FamilyContext(old_bundle, BASE_MS, BASE_MS, "fut")
    new_ctx = FamilyContext(new_bundle, BASE_MS, BASE_MS, "fut")
    assert family.state_params(old_ctx) == family.state_params(new_ctx)
    bars = make_series(spec)
    fx = make_series(fx_spec) if fx_spec is not None else None
    items = bars.to_bars()
    schedule = eval_times(family, bars)
    k = int(cut * len(schedule))
    first = family.online(context(bars, fx, True, old_bundle))
    run_online(family, first, items, schedule[:k])
    second = family.online(context(bars, fx, True, new_bundle))
    second.restore(json.loads(json.dumps(first.snapshot(), allow_nan=False)))
    fed = schedule[k - 1][0] if k else 0
    tail = run_online(family, second, items, schedule[k:], fed=fed)
    whole = run_online(family, family.online(context(bars, fx, True, new_bundle)), items, schedule)
    assert tail == whole[k:]


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@settings(max_examples=10, deadline=None)
@given(spec=long_series, warm=st.integers(0, 300))
def test_reset_equals_fresh(family: FeatureFamily, spec: SeriesSpec, warm: int) -> None:
    bars = make_series(spec)
    items = bars.to_bars()
    schedule = eval_times(family, bars)
    used = family.online(context(bars, None, True))
    run_online(family, used, items, schedule[:warm])
    used.reset()
    fresh = family.online(context(bars, None, True))
    assert run_online(family, used, items, schedule) == run_online(family, fresh, items, schedule)


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@settings(max_examples=15, deadline=None)
@given(
    spec=long_series, fx_spec=st.none() | fx_specs, cut=st.floats(0.05, 0.95), seed=st.integers()
)
def test_changing_the_future_never_changes_the_past(
    family: FeatureFamily, spec: SeriesSpec, fx_spec: Any, cut: float, seed: int
) -> None:
    bars = make_series(spec)
    fx = make_series(fx_spec) if fx_spec is not None else None
    k = max(1, int(cut * len(bars)))
    t0 = int(bars.close_time[k - 1])
    # Everything after t0 is replaced by another random path (prices, ticks, and gaps).
    other = make_series(SeriesSpec(seed=seed % 2**32, n=len(bars), base_ms=BASE_MS, sigma=0.05))
    future = {name: np.array(col, copy=True) for name, col in bars.__dict__.items()}
    for name, col in future.items():
        if name not in ("open_time", "close_time"):
            col[k:] = getattr(other, name)[k:]
    changed = BarArrays(**future)
    fx_changed = None
    if fx is not None:
        fx_cols = {name: np.array(col, copy=True) for name, col in fx.__dict__.items()}
        after = fx.close_time > t0
        fx_cols["close"][after] = fx_cols["close"][after] * 1.5
        fx_changed = BarArrays(**fx_cols)
    past = [t for _, t in eval_times(family, bars) if t <= t0]
    assert batch_values(family, bars, past, fx) == batch_values(family, changed, past, fx_changed)
