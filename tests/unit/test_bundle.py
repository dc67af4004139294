"""The config bundle: SPEC §5/§6 defaults, JSON/YAML files, validation messages, overrides."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from s2feature.config.bundle import (
    DEFAULT_REQUIRED,
    BundleError,
    ConfigBundle,
    bundle_changes,
    parse_bundle,
)
from s2feature.config_source.files import load_bundle
from s2feature.domain import FEATURES


def setting(bundle: ConfigBundle, dotted: str) -> Any:
    value: Any = bundle
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


# Every bracketed default of SPEC §5 and §6 (and the 14s in the feature names).
@pytest.mark.parametrize(
    ("dotted", "expected"),
    [
        ("windows.atr_period", 14),
        ("windows.rho_period", 14),
        ("windows.coverage_min", 0.9),
        ("windows.rho_z_period", 30),
        ("rho.fx_symbol", "USDTTWD"),
        ("regime.frozen_below", 0.10),
        ("regime.extreme_above", 0.90),
        ("dqc.jump_mad_multiplier", 8.0),
        ("dqc.jump_lookback", 120),
        ("dqc.mad_floor_ratio", 1e-5),
        ("bounds.spread_bps_max", 500.0),
        ("bounds.depth_top1_usdt_max", 1e9),
        ("base_interval", "1m"),
        ("base_ms", 60_000),
        ("mode.realtime", True),
        ("mode.persist_all", False),
    ],
    ids=lambda value: str(value),
)
def test_default_bundle_holds_the_spec_value(dotted: str, expected: object) -> None:
    assert setting(ConfigBundle(), dotted) == expected


def test_default_features_enable_everything_and_require_the_spec_list() -> None:
    features = ConfigBundle().features
    assert set(features.enabled) == set(FEATURES)
    assert set(features.required) == {
        "atr_14",
        "atr_14_pct",
        "rv_4h",
        "rv_1d",
        "spread_bps",
        "depth_top1_usdt",
        "liq_score",
        "funding_next",
    }
    assert set(DEFAULT_REQUIRED) == set(features.required)
    # The long-horizon features are enabled but not required (SPEC §5: a cold start emits).
    long_horizon = {"rv_30d", "rv_pctile_30d", "regime_label", "rho_usdttwd_14"}
    assert long_horizon <= set(features.enabled)
    assert not long_horizon & set(features.required)


BUNDLE_DATA: dict[str, Any] = {
    "rev": "r42",
    "base_interval": "1h",
    "features": {"enabled": ["atr_14", "spread_bps"], "required": ["atr_14"]},
    "dqc": {"jump_mad_multiplier": 6.0},
    "regime": {"frozen_below": 0.2, "extreme_above": 0.8},
    "liq_threshold_usdt": 250000,
    "mode": {"persist_all": True},
}


def assert_is_bundle_data(bundle: ConfigBundle) -> None:
    assert bundle.rev == "r42"
    assert bundle.base_ms == 3_600_000
    assert bundle.features.enabled == ("atr_14", "spread_bps")
    assert bundle.features.required == ("atr_14",)
    assert bundle.dqc.jump_mad_multiplier == 6.0
    assert bundle.dqc.jump_lookback == 120  # unspecified fields keep their defaults
    assert (bundle.regime.frozen_below, bundle.regime.extreme_above) == (0.2, 0.8)
    assert bundle.liq_threshold_usdt == 250_000.0
    assert bundle.mode.persist_all is True
    assert bundle.mode.realtime is True


def yaml_text() -> str:
    return (
        "rev: r42\nbase_interval: 1h\n"
        "features:\n  enabled: [atr_14, spread_bps]\n  required: [atr_14]\n"
        "dqc:\n  jump_mad_multiplier: 6.0\n"
        "regime: {frozen_below: 0.2, extreme_above: 0.8}\n"
        "liq_threshold_usdt: 250000\nmode:\n  persist_all: true\n"
    )


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("bundle.json", json.dumps(BUNDLE_DATA)),
        ("bundle.yaml", yaml_text()),
        ("bundle.yml", yaml_text()),
        ("bundle.conf", json.dumps(BUNDLE_DATA)),  # any other suffix reads YAML, a superset of JSON
    ],
    ids=["json", "yaml", "yml", "json-as-yaml"],
)
def test_bundle_loads_from_file(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert_is_bundle_data(load_bundle(path))


def test_empty_yaml_file_is_the_default_bundle(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n", encoding="utf-8")
    assert load_bundle(path) == ConfigBundle()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"liq_threshold": 1}, "liq_threshold"),
        ({"dqc": {"jump_mad": 8}}, "dqc.jump_mad"),
        ({"features": {"enabled": list(FEATURES), "optional": []}}, "features.optional"),
    ],
    ids=["top-level", "nested", "features"],
)
def test_unknown_field_is_rejected_by_name(data: dict[str, Any], field: str) -> None:
    with pytest.raises(BundleError, match=rf"{field}: Extra inputs are not permitted"):
        parse_bundle(data)


def test_required_feature_that_is_not_enabled_is_rejected() -> None:
    data = {"features": {"enabled": ["atr_14"], "required": ["atr_14", "spread_bps"]}}
    with pytest.raises(
        BundleError, match=r"required feature\(s\) \['spread_bps'\] are not enabled"
    ):
        parse_bundle(data)


@pytest.mark.parametrize("key", ["enabled", "required"], ids=["enabled", "required"])
def test_unknown_feature_name_is_rejected(key: str) -> None:
    features = {"enabled": list(FEATURES), "required": []}
    features[key] = [*features[key], "atr_15"]
    with pytest.raises(BundleError, match=rf"features.{key}: .*unknown feature\(s\) \['atr_15'\]"):
        parse_bundle({"features": features})


@pytest.mark.parametrize(
    ("frozen_below", "extreme_above"),
    [(0.5, 0.5), (0.9, 0.1)],
    ids=["equal", "reversed"],
)
def test_regime_thresholds_must_be_ordered(frozen_below: float, extreme_above: float) -> None:
    data = {"regime": {"frozen_below": frozen_below, "extreme_above": extreme_above}}
    with pytest.raises(BundleError, match=r"frozen_below must be below regime\.extreme_above"):
        parse_bundle(data)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"liq_threshold_usdt": 0}, "liq_threshold_usdt"),
        ({"windows": {"coverage_min": 1.5}}, "windows.coverage_min"),
        ({"regime": {"frozen_below": -0.1}}, "regime.frozen_below"),
        ({"base_interval": "4h"}, "base_interval"),
        ({"rev": ""}, "rev"),
    ],
    ids=["zero-liq-threshold", "coverage-above-1", "negative-quantile", "base-4h", "empty-rev"],
)
def test_out_of_range_value_is_rejected_by_name(data: dict[str, Any], field: str) -> None:
    with pytest.raises(BundleError, match=rf"invalid config bundle bundle: {field}: "):
        parse_bundle(data)


def test_validation_error_from_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text('{"liq_threshold_usdt": -1}', encoding="utf-8")
    with pytest.raises(
        BundleError, match=f"invalid config bundle {re.escape(str(path))}: liq_threshold_usdt"
    ):
        load_bundle(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.yaml", None, "cannot read config bundle"),
        ("bad.yaml", "rev: [unclosed\n", "is not valid JSON/YAML"),
        ("bad.json", '{"rev": "r1",}', "is not valid JSON/YAML"),
    ],
    ids=["missing-file", "invalid-yaml", "invalid-json"],
)
def test_unreadable_or_unparsable_file_is_a_bundle_error_with_the_path(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(BundleError, match=message) as caught:
        load_bundle(path)
    assert str(path) in str(caught.value)


def test_directory_is_an_unreadable_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=f"cannot read config bundle {re.escape(str(tmp_path))}"):
        load_bundle(tmp_path)


def test_non_utf8_file_is_a_bundle_error_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("rev: caf\xe9\n".encode("latin-1"))
    with pytest.raises(BundleError, match=re.escape(str(path))):
        load_bundle(path)


def test_with_overrides_returns_a_validated_copy() -> None:
    base = ConfigBundle()
    changed = base.with_overrides(rev="r2", liq_threshold_usdt=5e5, base_interval="5m")
    assert (changed.rev, changed.liq_threshold_usdt, changed.base_ms) == ("r2", 5e5, 300_000)
    assert changed.dqc == base.dqc
    assert base.rev == "default"  # the original is untouched
    with pytest.raises(BundleError, match="liq_threshold_usdt"):
        base.with_overrides(liq_threshold_usdt=-1.0)
    with pytest.raises(BundleError, match="frozen_below must be below"):
        base.with_overrides(regime={"frozen_below": 0.95})


@pytest.mark.parametrize(
    "changes",
    [
        {"liq_threshold_usdt": float("inf")},
        {"bounds": {"spread_bps_max": float("inf")}},
        {"dqc": {"jump_mad_multiplier": float("nan")}},
    ],
    ids=["inf-liq-threshold", "inf-bound", "nan-multiplier"],
)
def test_non_finite_thresholds_are_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(BundleError, match=r"finite|inf|nan"):
        ConfigBundle().with_overrides(**changes)


def test_a_feature_listed_twice_is_rejected() -> None:
    with pytest.raises(BundleError, match="listed twice"):
        ConfigBundle().with_overrides(features={"enabled": ["atr_14", "atr_14"], "required": []})


def test_with_overrides_replaces_a_whole_section() -> None:
    changed = ConfigBundle().with_overrides(mode={"realtime": False, "persist_all": True})
    assert (changed.mode.realtime, changed.mode.persist_all) == (False, True)


def test_with_overrides_of_part_of_a_section_keeps_its_other_fields() -> None:
    tuned = ConfigBundle().with_overrides(regime={"frozen_below": 0.2})
    retuned = tuned.with_overrides(regime={"extreme_above": 0.8})
    assert (retuned.regime.frozen_below, retuned.regime.extreme_above) == (0.2, 0.8)


def test_bundle_is_immutable() -> None:
    bundle = ConfigBundle()
    with pytest.raises(ValidationError, match="frozen"):
        bundle.rev = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        bundle.regime.frozen_below = 0.3  # type: ignore[misc]


def test_bundle_changes_lists_the_dotted_paths_that_differ_in_field_order() -> None:
    old = ConfigBundle()
    new = old.with_overrides(
        rev="r9",
        liq_threshold_usdt=5e5,
        windows={"atr_period": 21},
        features={"enabled": list(FEATURES[:-1]), "required": ["atr_14"]},
        mode={"persist_all": True},
    )
    assert bundle_changes(old, new) == [
        "features.enabled",
        "features.required",
        "windows.atr_period",
        "liq_threshold_usdt",
        "mode.persist_all",
    ]
    assert bundle_changes(new, old) == bundle_changes(old, new)


def test_bundle_changes_ignores_the_rev_and_is_empty_for_equal_settings() -> None:
    assert bundle_changes(ConfigBundle(), ConfigBundle().with_overrides(rev="other")) == []
    assert bundle_changes(ConfigBundle(), ConfigBundle()) == []
