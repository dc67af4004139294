"""`S2_DQC_*` and `S2_REGIME_*`: environment overrides of the bundle's `dqc` and `regime` fields,
merged over the bundle (environment wins) and labelled in the rev."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s2feature.config.bundle import ConfigBundle, DqcSettings, RegimeSettings
from s2feature.config.overrides import OVERRIDABLE, BundleOverrides
from s2feature.jobs.cli_support import job_environment
from s2feature.service.settings import (
    EnvSettings,
    SettingsError,
    bundle_overrides_of,
    load_env_settings,
    load_settings,
    store_settings_of,
)

BASE = {"S2_SYMBOLS": "binance:fut:BTCUSDT"}


def test_every_dqc_and_regime_field_has_its_variable() -> None:
    expected = {
        f"{section}_{name}" for section, model in OVERRIDABLE.items() for name in model.model_fields
    }
    assert expected <= set(EnvSettings.model_fields)
    assert {"dqc", "regime"} == set(OVERRIDABLE)


def test_unset_variables_leave_the_bundle_alone() -> None:
    settings = load_settings(BASE)
    assert settings.bundle == ConfigBundle()
    assert not settings.config.overrides


def test_set_variables_replace_the_bundle_fields_and_label_the_rev() -> None:
    settings = load_settings(
        {
            **BASE,
            "S2_DQC_JUMP_LOOKBACK": "60",
            "S2_DQC_JUMP_MAD_MULTIPLIER": "12.5",
            "s2_regime_reference_symbol": "ETHUSDT",  # names are case-insensitive
            "S2_REGIME_FROZEN_BELOW": "",  # empty: unset
        }
    )
    bundle = settings.bundle
    assert bundle.dqc == DqcSettings(jump_lookback=60, jump_mad_multiplier=12.5)
    assert bundle.regime == RegimeSettings(reference_symbol="ETHUSDT")
    digest = settings.config.overrides.digest
    assert bundle.rev == f"default+env.{digest}"
    # everything else is the bundle's
    assert bundle.model_dump(exclude={"rev", "dqc", "regime"}) == ConfigBundle().model_dump(
        exclude={"rev", "dqc", "regime"}
    )


def test_the_digest_names_the_values() -> None:
    a = bundle_overrides_of(load_env_settings({"S2_DQC_JUMP_LOOKBACK": "60"}))
    b = bundle_overrides_of(load_env_settings({"S2_DQC_JUMP_LOOKBACK": "61"}))
    again = bundle_overrides_of(load_env_settings({"S2_DQC_JUMP_LOOKBACK": "60"}))
    assert a.digest == again.digest != b.digest


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("S2_DQC_JUMP_LOOKBACK", "2", "greater than or equal to 3"),
        ("S2_DQC_JUMP_LOOKBACK", "many", "valid integer"),
        ("S2_DQC_JUMP_MAD_MULTIPLIER", "0", "greater than 0"),
        ("S2_DQC_MAD_FLOOR_RATIO", "inf", "finite"),
        ("S2_REGIME_EXTREME_ABOVE", "1.5", "less than or equal to 1"),
    ],
)
def test_a_bad_value_stops_the_start_naming_its_variable(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=rf"^{variable}: .*{message}"):
        load_settings({**BASE, variable: value})


def test_values_that_contradict_the_bundle_at_start_are_refused(tmp_path: Path) -> None:
    bundle_file = tmp_path / "bundle.json"
    bundle_file.write_text(json.dumps({"rev": "r1", "regime": {"extreme_above": 0.5}}))
    env = {**BASE, "S2_CONFIG_FILE": str(bundle_file), "S2_REGIME_FROZEN_BELOW": "0.6"}
    with pytest.raises(SettingsError, match=r"S2_REGIME_.*frozen_below must be below"):
        load_settings(env)


def test_the_file_bundle_is_overridden_field_by_field(tmp_path: Path) -> None:
    bundle_file = tmp_path / "bundle.json"
    bundle_file.write_text(
        json.dumps({"rev": "r1", "dqc": {"jump_lookback": 300, "jump_mad_multiplier": 6.0}})
    )
    settings = load_settings(
        {**BASE, "S2_CONFIG_FILE": str(bundle_file), "S2_DQC_JUMP_LOOKBACK": "50"}
    )
    assert settings.bundle.dqc == DqcSettings(jump_lookback=50, jump_mad_multiplier=6.0)
    assert settings.bundle.rev.startswith("r1+env.")


def test_the_recompute_job_merges_the_same_overrides(tmp_path: Path) -> None:
    raw = load_env_settings({**BASE, "S2_REGIME_EXTREME_ABOVE": "0.95"})
    job = job_environment(
        None, tmp_path, raw.symbols, store_settings_of(raw), bundle_overrides_of(raw)
    )
    assert job.bundle == load_settings({**BASE, "S2_REGIME_EXTREME_ABOVE": "0.95"}).bundle


def test_no_overrides_is_the_identity() -> None:
    bundle = ConfigBundle(rev="r9")
    assert BundleOverrides().apply(bundle) is bundle
