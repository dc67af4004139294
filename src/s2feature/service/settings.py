"""Service settings: every `S2_*` variable in one pydantic-settings model (`EnvSettings`), turned
into the values the service uses (`Settings`). A bad setting stops the service at start with a
message naming the variable (`SettingsError`, exit code 2 in the CLI).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from s2feature.config.bundle import BundleError, ConfigBundle
from s2feature.config.overrides import OVERRIDABLE, BundleOverrides, OverrideError
from s2feature.config_source.files import load_bundle
from s2feature.domain import WINDOWS, SeriesId, interval_ms
from s2feature.errors import ConfigurationError
from s2feature.service.config_watch import ConfigSourceSettings
from s2feature.store.factory import StoreSettings
from s2feature.streams.client import RedisSettings

ENV_PREFIX = "S2_"
# The OpenTelemetry variable of the exporter's endpoint, read under its standard name.
OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
MAX_BATCH_SIZE = 200  # entries per XREADGROUP: bounds the latency one batch adds to the others


class SettingsError(ConfigurationError):
    """A setting that cannot be used; the message names it."""


class EnvSettings(BaseSettings):
    """The `S2_*` environment variables, with their defaults (`docs/service.md` lists them)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, case_sensitive=False, extra="ignore", frozen=True
    )

    symbols: str = ""
    windows: str = "1m,5m,1h"
    redis_addresses: str = "127.0.0.1:6379"
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_min_replicas: int = Field(0, ge=0)
    redis_wait_ms: int = Field(1_000, gt=0)
    consumer_group: str = "s2"
    consumer_name: str | None = None
    config_file: Path | None = None
    config_url: str | None = None
    config_poll_s: float = Field(30.0, gt=0)
    config_cache: Path = Path("./data/config-cache.json")
    config_timeout_s: float = Field(5.0, gt=0)
    db_backend: Literal["sqlite", "arango"] = "sqlite"
    db_sqlite_path: Path = Path("./data/s2.db")
    db_arango_uri: str | None = None
    db_arango_database: str = "s2"
    db_arango_user: str = "root"
    db_arango_password: SecretStr = SecretStr("")
    lake_dir: Path = Path("./data/lake")
    batch_size: int = Field(200, gt=0, le=MAX_BATCH_SIZE)
    block_ms: int = Field(200, gt=0)
    max_deliveries: int = Field(5, gt=0)
    checkpoint_ms: int = Field(5_000, gt=0)
    claim_idle_ms: int = Field(30_000, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, ge=0, lt=65536)  # 0: any free port (tests)
    lag_degraded_ms: int = Field(60_000, gt=0)
    fx_max_wait_ms: int = Field(2_000, ge=0)
    # Overrides of the bundle's `dqc` and `regime` fields (`config/overrides.py`): unset keeps
    # the bundle's value. Types and bounds are the bundle's, checked in `bundle_overrides_of`.
    dqc_jump_lookback: str | None = None
    dqc_jump_mad_multiplier: str | None = None
    dqc_mad_floor_ratio: str | None = None
    regime_frozen_below: str | None = None
    regime_extreme_above: str | None = None
    regime_reference_symbol: str | None = None
    trace_sample: float = Field(0.01, ge=0.0, le=1.0)
    otlp_endpoint: str | None = Field(None, validation_alias=OTLP_ENDPOINT_ENV)
    # The bearer token of the /features/* routes; unset or empty: those routes answer 503.
    api_token: SecretStr | None = None
    recompute_lookback: str = "2h"
    # Finished recompute tasks are deleted from the store this long after they ended (0: kept).
    task_retention: str = "30d"

    @field_validator("recompute_lookback", "task_retention")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration_ms(value)  # ValueError names the format
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "redis_username",
        "redis_password",
        "consumer_name",
        "config_file",
        "config_url",
        "db_arango_uri",
        "dqc_jump_lookback",
        "dqc_jump_mad_multiplier",
        "dqc_mad_floor_ratio",
        "regime_frozen_below",
        "regime_extreme_above",
        "regime_reference_symbol",
        "otlp_endpoint",
        "api_token",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> EnvSettings:
        """The settings of an explicit environment (the process's is `EnvSettings()`)."""
        values = {
            key[len(ENV_PREFIX) :].lower(): value
            for key, value in env.items()
            if key.upper().startswith(ENV_PREFIX)
        }
        if OTLP_ENDPOINT_ENV in env:
            values[OTLP_ENDPOINT_ENV] = env[OTLP_ENDPOINT_ENV]
        return cls.model_validate(values)


_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int:
    """`2h`, `90m`, `45s`, `1d`, `500ms`, or a plain number of milliseconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"expected a duration like 2h, 90m, 45s, 1d or milliseconds, got {text!r}")
    return int(match.group(1)) * _UNIT_MS[match.group(2) or "ms"]


@dataclass(frozen=True)
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    lag_degraded_ms: int = 60_000
    token: SecretStr | None = None  # SecretStr: printing the settings never shows it


@dataclass(frozen=True)
class Settings:
    redis: RedisSettings
    series: tuple[SeriesId, ...]
    windows: tuple[str, ...]
    group: str
    consumer: str
    bundle: ConfigBundle  # the bundle at start; a running service follows its config source
    lake_dir: Path
    batch_size: int = 200
    block_ms: int = 200
    max_deliveries: int = 5
    claim_idle_ms: int = 30_000  # stream lease TTL: a dead owner is replaced this much later
    # A checkpoint holds the whole engine state (about 1.5 MB of JSON per symbol with 30 days of
    # one-minute returns): once a second per symbol would write megabytes per second to Redis
    # (and its AOF and replicas). Five seconds bounds the replay after a crash to five seconds
    # of input.
    checkpoint_ms: int = 5_000
    emit_maxlen: int = 100_000
    last_ttl_s: int = 900
    store: StoreSettings = field(default_factory=StoreSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    config: ConfigSourceSettings = field(default_factory=ConfigSourceSettings)
    log_level: str = "INFO"
    # Longest wall time a symbol's bar waits for the FX w-bar closing with it (the FX barrier).
    fx_max_wait_ms: int = 2_000
    trace_sample: float = 0.01  # share of signals traced, when traces are exported
    otlp_endpoint: str | None = None  # OTLP/HTTP collector base URL; None: no traces
    # The hourly gap fill recomputes this much before each full hour (0: no hourly gap fill).
    recompute_lookback_ms: int = 7_200_000
    # Finished recompute tasks stay in the store this long after they ended (0: for ever).
    task_retention_ms: int = 30 * 86_400_000


def bundle_overrides_of(raw: EnvSettings) -> BundleOverrides:
    """The `S2_DQC_*` and `S2_REGIME_*` overrides; `SettingsError` naming a bad variable."""
    # From the bundle's fields, not from every `S2_DQC_*`/`S2_REGIME_*` name: other settings
    # (of the regime job, say) may share the prefix without being bundle fields.
    values = {
        section: {name: getattr(raw, f"{section}_{name}", None) for name in model.model_fields}
        for section, model in OVERRIDABLE.items()
    }
    try:
        return BundleOverrides.of(values)
    except OverrideError as exc:
        variable = ENV_PREFIX + exc.field.replace(".", "_").upper()
        raise SettingsError(f"{variable}: {str(exc).split(': ', 1)[1]}") from None


def config_source_of(raw: EnvSettings) -> ConfigSourceSettings:
    overrides = bundle_overrides_of(raw)
    try:
        return ConfigSourceSettings(
            url=raw.config_url,
            file=raw.config_file,
            poll_s=raw.config_poll_s,
            cache_path=raw.config_cache,
            timeout_s=raw.config_timeout_s,
            overrides=overrides,
        )
    except ValueError as exc:  # an unusable URL
        raise SettingsError(f"S2_CONFIG_URL: {exc}") from None


def _addresses(text: str) -> tuple[tuple[str, int], ...]:
    out = []
    for item in (part.strip() for part in text.split(",")):
        host, sep, port = item.rpartition(":")
        if not item or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(
                f"S2_REDIS_ADDRESSES: expected host:port[,host:port...], got {text!r}"
            )
        out.append((host, int(port)))
    return tuple(out)


def _series(text: str) -> tuple[SeriesId, ...]:
    try:
        series = tuple(SeriesId.parse(item) for item in text.split(",") if item.strip())
    except ValueError as exc:
        raise SettingsError(f"S2_SYMBOLS: {exc}") from None
    if not series:
        raise SettingsError("S2_SYMBOLS: at least one venue:market:symbol is needed")
    symbols = [s.symbol for s in series]
    duplicated = sorted({s for s in symbols if symbols.count(s) > 1})
    if duplicated:
        raise SettingsError(f"S2_SYMBOLS: symbol(s) {duplicated} appear in more than one stream")
    return series


def parse_windows(text: str, base_ms: int, base_interval: str) -> tuple[str, ...]:
    """`S2_WINDOWS`: known windows that are multiples of the base interval, in canonical order."""
    items = [w.strip() for w in text.split(",") if w.strip()]
    bad = [w for w in items if w not in WINDOWS or interval_ms(w) % base_ms]
    if not items or bad:
        raise SettingsError(
            f"S2_WINDOWS: expected a subset of {','.join(WINDOWS)} that are multiples of the base "
            f"interval {base_interval}, got {text!r}"
        )
    return tuple(sorted(set(items), key=WINDOWS.index))


def _env_errors(exc: ValidationError) -> SettingsError:
    problems = []
    for err in exc.errors():
        name = ENV_PREFIX + "_".join(str(part) for part in err["loc"]).upper()
        problems.append(f"{name}: {err['msg']}, got {err.get('input')!r}")
    return SettingsError("; ".join(problems))


def load_env_settings(env: Mapping[str, str] | None = None) -> EnvSettings:
    """The `S2_*` variables of `env`, or of the process environment; `SettingsError` naming each
    bad one."""
    try:
        return EnvSettings() if env is None else EnvSettings.from_mapping(env)
    except ValidationError as exc:
        raise _env_errors(exc) from None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from `env` (a mapping of `S2_*` variables), or from the process environment."""
    return settings_of(load_env_settings(env))


def store_settings_of(raw: EnvSettings) -> StoreSettings:
    return StoreSettings(
        backend=raw.db_backend,
        sqlite_path=raw.db_sqlite_path,
        arango_uri=raw.db_arango_uri,
        arango_database=raw.db_arango_database,
        arango_user=raw.db_arango_user,
        arango_password=raw.db_arango_password.get_secret_value(),
    )


def redis_settings_of(raw: EnvSettings) -> RedisSettings:
    """The Redis connection of `S2_REDIS_*` (the service's, and the jobs' that write to Redis)."""
    password = raw.redis_password.get_secret_value() if raw.redis_password else None
    return RedisSettings(
        addresses=_addresses(raw.redis_addresses),
        username=raw.redis_username,
        password=password,
        # Longer than the blocking read and than WAIT, or idle reads and waits time out.
        socket_timeout_s=5.0 + max(raw.block_ms, raw.redis_wait_ms) / 1000,
        min_replicas=raw.redis_min_replicas,
        wait_ms=raw.redis_wait_ms,
    )


def settings_of(raw: EnvSettings) -> Settings:
    try:
        bundle = load_bundle(raw.config_file) if raw.config_file else ConfigBundle()
    except BundleError as exc:
        raise SettingsError(f"S2_CONFIG_FILE: {exc}") from None
    config = config_source_of(raw)
    try:
        bundle = config.overrides.apply(bundle)
    except BundleError as exc:
        # A check across fields (regime.frozen_below < regime.extreme_above) against the bundle
        # at start; with a config service, its bundles are checked as they arrive.
        if raw.config_url is None:
            raise SettingsError(f"S2_DQC_*/S2_REGIME_* overrides: {exc}") from None
    if raw.block_ms * 3 >= raw.claim_idle_ms:
        # Stream leases are renewed between reads, three times per TTL.
        raise SettingsError(
            f"S2_BLOCK_MS: {raw.block_ms} must be below a third of S2_CLAIM_IDLE_MS "
            f"({raw.claim_idle_ms}), or a blocked read would outlast the stream lease"
        )
    if raw.db_backend == "arango" and not raw.db_arango_uri:
        raise SettingsError("S2_DB_ARANGO_URI: needed with S2_DB_BACKEND=arango")
    if raw.db_backend == "sqlite" and raw.db_arango_uri:
        raise SettingsError(
            "S2_DB_ARANGO_URI: set while S2_DB_BACKEND is sqlite (the default); set "
            "S2_DB_BACKEND=arango to use ArangoDB, or unset S2_DB_ARANGO_URI"
        )
    return Settings(
        redis=redis_settings_of(raw),
        series=_series(raw.symbols),
        windows=parse_windows(raw.windows, bundle.base_ms, bundle.base_interval),
        group=raw.consumer_group.strip() or "s2",
        consumer=raw.consumer_name or socket.gethostname(),
        bundle=bundle,
        lake_dir=raw.lake_dir,
        batch_size=raw.batch_size,
        block_ms=raw.block_ms,
        max_deliveries=raw.max_deliveries,
        claim_idle_ms=raw.claim_idle_ms,
        checkpoint_ms=raw.checkpoint_ms,
        store=store_settings_of(raw),
        api=ApiSettings(raw.api_host, raw.api_port, raw.lag_degraded_ms, raw.api_token),
        config=config,
        log_level=raw.log_level,
        fx_max_wait_ms=raw.fx_max_wait_ms,
        trace_sample=raw.trace_sample,
        otlp_endpoint=raw.otlp_endpoint,
        recompute_lookback_ms=parse_duration_ms(raw.recompute_lookback),
        task_retention_ms=parse_duration_ms(raw.task_retention),
    )
