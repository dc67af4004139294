"""Each bundle parameter a family declares in `state_params` is needed: a state saved under one
value and restored (without the engine's check) under another either is refused by the family or
gives values that differ from a fresh run under the new value. Together with the generic property
test (the declared params suffice), this pins each family's declaration."""

from __future__ import annotations

import json
from typing import Any

import pytest

from s2feature.compute.family import FamilyContext, FeatureFamily, FxCloseTable
from s2feature.compute.registry import FAMILIES
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import HOUR_MS, FeatureValue
from tests.support.market_gen import SeriesSpec, make_series

BUNDLE = ConfigBundle(base_interval="1h")
BY_NAME = {family.name: family for family in FAMILIES}
BARS = make_series(SeriesSpec(seed=21, n=1200, base_ms=HOUR_MS, gap_prob=0.01, max_gap=3))
FX = make_series(SeriesSpec(seed=22, n=1210, base_ms=HOUR_MS))
CUT = 900

# family -> declared bundle parameter -> (value saved under, value restored under)
CHANGES: dict[str, dict[str, tuple[dict[str, Any], dict[str, Any]]]] = {
    "atr": {"atr_period": ({"windows": {"atr_period": 14}}, {"windows": {"atr_period": 20}})},
    "correlation": {
        "rho_period": ({"windows": {"rho_period": 5}}, {"windows": {"rho_period": 14}}),
        "rho_z_period": ({"windows": {"rho_z_period": 5}}, {"windows": {"rho_z_period": 30}}),
    },
    "volatility": {
        "coverage_min": ({"windows": {"coverage_min": 1.0}}, {"windows": {"coverage_min": 0.5}})
    },
}
CASES = [(family, knob) for family, knobs in CHANGES.items() for knob in knobs]


def online(family: FeatureFamily, bundle: ConfigBundle) -> Any:
    table = FxCloseTable()
    for close_time, close in zip(FX.close_time.tolist(), FX.close.tolist(), strict=True):
        table.add(close_time, close)
    return family.online(FamilyContext(bundle, HOUR_MS, HOUR_MS, "fut", fx_online=table))


def values_after(instance: Any, start: int) -> list[dict[str, FeatureValue]]:
    out = []
    for bar in BARS.to_bars()[start:]:
        instance.update(bar)
        out.append(instance.values_at(bar.close_time))
    return out


@pytest.mark.parametrize(("name", "knob"), CASES, ids=[f"{f}-{k}" for f, k in CASES])
def test_a_declared_parameter_changes_what_a_restored_state_gives(name: str, knob: str) -> None:
    family = BY_NAME[name]
    saved_under, restored_under = (BUNDLE.with_overrides(**o) for o in CHANGES[name][knob])
    params = family.state_params(FamilyContext(restored_under, HOUR_MS, HOUR_MS))
    assert knob in params
    assert params != family.state_params(FamilyContext(saved_under, HOUR_MS, HOUR_MS))
    first = online(family, saved_under)
    fresh = online(family, restored_under)
    for bar in BARS.to_bars()[:CUT]:
        for instance in (first, fresh):
            instance.update(bar)
            instance.values_at(bar.close_time)
    restored = online(family, restored_under)
    try:
        restored.restore(json.loads(json.dumps(first.snapshot(), allow_nan=False)))
    except ValueError:
        return  # the family refuses the state itself
    assert values_after(restored, CUT) != values_after(fresh, CUT)


def test_every_family_declares_its_params_as_json_and_a_version() -> None:
    ctx = FamilyContext(BUNDLE, HOUR_MS, HOUR_MS)
    for family in FAMILIES:
        params = dict(family.state_params(ctx))
        assert json.loads(json.dumps(params)) == params, family.name
        assert isinstance(family.state_version, int)
        assert family.state_version >= 1
    assert dict(BY_NAME["book"].state_params(ctx)) == {}
