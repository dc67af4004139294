"""The config bundle (SPEC §9): every tunable of the feature engine, with the SPEC defaults.

Pure models and validation only: reading a bundle from a file, an HTTP service or the disk cache
lives in `s2feature.config_source`. A bundle is immutable once validated, so a holder can swap the
whole object and readers see either the old or the new bundle, never a mix.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from s2feature.domain import FEATURES, INTERVAL_MS
from s2feature.errors import ConfigurationError

DEFAULT_REQUIRED: tuple[str, ...] = (
    "atr_14",
    "atr_14_pct",
    "rv_4h",
    "rv_1d",
    "spread_bps",
    "depth_top1_usdt",
    "liq_score",
    "funding_next",
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class FeatureSelection(_Frozen):
    """Which features are computed and which must be non-null for a snapshot to pass.

    `funding_next*` are fut-only: on spot streams they are omitted and never count as missing.
    """

    enabled: tuple[str, ...] = FEATURES
    required: tuple[str, ...] = DEFAULT_REQUIRED

    @field_validator("enabled", "required")
    @classmethod
    def _known(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(names) - set(FEATURES))
        if len(set(names)) != len(names):
            raise ValueError(f"feature(s) listed twice in {list(names)}")
        if unknown:
            raise ValueError(f"unknown feature(s) {unknown}; known: {', '.join(FEATURES)}")
        return names

    @model_validator(mode="after")
    def _required_enabled(self) -> FeatureSelection:
        not_enabled = sorted(set(self.required) - set(self.enabled))
        if not_enabled:
            raise ValueError(f"required feature(s) {not_enabled} are not enabled")
        return self


class WindowLengths(_Frozen):
    atr_period: int = Field(14, ge=1, le=10_000)
    rho_period: int = Field(14, ge=3, le=10_000)
    rho_z_period: int = Field(30, ge=3, le=10_000)
    coverage_min: float = Field(0.9, gt=0.0, le=1.0)


class DqcSettings(_Frozen):
    jump_lookback: int = Field(120, ge=3, le=100_000, description="K mids before an event")
    jump_mad_multiplier: float = Field(8.0, gt=0.0, description="N in median ± N*1.4826*MAD")
    mad_floor_ratio: float = Field(1e-5, ge=0.0, description="MAD floor as a fraction of median")


class BoundsSettings(_Frozen):
    spread_bps_max: float = Field(500.0, gt=0.0)
    depth_top1_usdt_max: float = Field(1e9, gt=0.0)


class RegimeSettings(_Frozen):
    frozen_below: float = Field(0.10, ge=0.0, le=1.0)
    extreme_above: float = Field(0.90, ge=0.0, le=1.0)
    reference_symbol: str = "BTCUSDT"

    @model_validator(mode="after")
    def _ordered(self) -> RegimeSettings:
        if self.frozen_below >= self.extreme_above:
            raise ValueError("regime.frozen_below must be below regime.extreme_above")
        return self


class RhoSettings(_Frozen):
    fx_symbol: str = "USDTTWD"


class ModeSettings(_Frozen):
    realtime: bool = True
    persist_all: bool = False


class ConfigBundle(_Frozen):
    rev: str = Field("default", min_length=1)
    base_interval: Literal["1m", "5m", "1h"] = "1m"
    features: FeatureSelection = FeatureSelection()
    windows: WindowLengths = WindowLengths()
    dqc: DqcSettings = DqcSettings()
    bounds: BoundsSettings = BoundsSettings()
    regime: RegimeSettings = RegimeSettings()
    rho: RhoSettings = RhoSettings()
    liq_threshold_usdt: float = Field(1_000_000.0, gt=0.0)
    mode: ModeSettings = ModeSettings()

    @property
    def base_ms(self) -> int:
        return INTERVAL_MS[self.base_interval]

    def with_overrides(self, **changes: Any) -> ConfigBundle:
        """A validated copy; a dict for a section changes only the fields it names."""
        merged = self.model_dump()
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return parse_bundle(merged, origin="override")


class BundleError(ConfigurationError):
    """A config bundle that cannot be read or does not validate; the message names each field."""


def parse_bundle(data: Any, origin: str = "bundle") -> ConfigBundle:
    """Validate decoded data (a mapping) into a bundle; `BundleError` names every bad field."""
    try:
        return ConfigBundle.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise BundleError(f"invalid config bundle {origin}: {problems}") from exc


def bundle_changes(old: ConfigBundle, new: ConfigBundle) -> list[str]:
    """Dotted paths of the settings that differ between two bundles, in field order; `rev` is a
    label, not a setting, and is never listed. A tuple (a feature list) is one setting."""
    return _differing(old.model_dump(exclude={"rev"}), new.model_dump(exclude={"rev"}), "")


def _differing(old: dict[str, Any], new: dict[str, Any], prefix: str) -> list[str]:
    changed: list[str] = []
    for key, old_value in old.items():
        new_value = new[key]  # same model on both sides: same keys
        path = f"{prefix}{key}"
        if isinstance(old_value, dict) and isinstance(new_value, dict):
            changed += _differing(old_value, new_value, f"{path}.")
        elif old_value != new_value:
            changed.append(path)
    return changed
