"""Bundles with drawn parameters, for property tests: every parameter a feature family reads,
each named as its bundle field (the name a family's `state_params` uses for it)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from s2feature.config.bundle import ConfigBundle

# name -> (bundle section or None for a top-level field, values drawn)
KNOBS: dict[str, tuple[str | None, st.SearchStrategy[Any]]] = {
    "atr_period": ("windows", st.integers(1, 30)),
    "rho_period": ("windows", st.integers(3, 20)),
    "rho_z_period": ("windows", st.integers(3, 40)),
    "coverage_min": ("windows", st.sampled_from([0.3, 0.5, 0.75, 0.9, 1.0])),
    "liq_threshold_usdt": (None, st.sampled_from([1e4, 1e6, 3e7])),
    "frozen_below": ("regime", st.sampled_from([0.0, 0.1, 0.3, 0.45])),
    "extreme_above": ("regime", st.sampled_from([0.5, 0.7, 0.9, 1.0])),
    "fx_symbol": ("rho", st.sampled_from(["USDTTWD", "USDTEUR"])),
}
knob_values = st.fixed_dictionaries({name: values for name, (_, values) in KNOBS.items()})


def bundle_of(values: dict[str, Any], base: ConfigBundle, **changes: Any) -> ConfigBundle:
    """`base` with the drawn values (and any other `changes`, e.g. a rev)."""
    overrides: dict[str, Any] = dict(changes)
    for name, value in values.items():
        section = KNOBS[name][0]
        if section is None:
            overrides[name] = value
        else:
            overrides.setdefault(section, {})[name] = value
    return base.with_overrides(**overrides)
