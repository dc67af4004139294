"""Service settings from the environment. A bad setting stops the service at start with a message
naming the variable."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from s2feature.config.bundle import BundleError, ConfigBundle, load_bundle
from s2feature.domain import WINDOWS, SeriesId, interval_ms
from s2feature.streams.client import RedisSettings


class SettingsError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclass(frozen=True)
class Settings:
    redis: RedisSettings
    series: tuple[SeriesId, ...]
    windows: tuple[str, ...]
    group: str
    consumer: str
    bundle: ConfigBundle
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


def _windows(text: str, bundle: ConfigBundle) -> tuple[str, ...]:
    items = [w.strip() for w in text.split(",") if w.strip()]
    bad = [w for w in items if w not in WINDOWS or interval_ms(w) % bundle.base_ms]
    if not items or bad:
        raise SettingsError(
            f"S2_WINDOWS: expected a subset of {','.join(WINDOWS)} that are multiples of the base "
            f"interval {bundle.base_interval}, got {text!r}"
        )
    return tuple(sorted(set(items), key=WINDOWS.index))


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise SettingsError(f"{name}: expected a positive integer, got {raw!r}")
    return int(raw)


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise SettingsError(f"{name}: expected a non-negative integer, got {raw!r}")
    return int(raw)


def load_settings(env: Mapping[str, str]) -> Settings:
    config_file = env.get("S2_CONFIG_FILE")
    try:
        bundle = load_bundle(config_file) if config_file else ConfigBundle()
    except BundleError as exc:
        raise SettingsError(f"S2_CONFIG_FILE: {exc}") from None
    symbols = env.get("S2_SYMBOLS", "")
    block_ms = _positive_int(env, "S2_BLOCK_MS", 200)
    claim_idle_ms = _positive_int(env, "S2_CLAIM_IDLE_MS", 30_000)
    wait_ms = _positive_int(env, "S2_REDIS_WAIT_MS", 1000)
    if block_ms * 3 >= claim_idle_ms:
        # Stream leases are renewed between reads, three times per TTL.
        raise SettingsError(
            f"S2_BLOCK_MS: {block_ms} must be below a third of S2_CLAIM_IDLE_MS ({claim_idle_ms}),"
            " or a blocked read would outlast the stream lease"
        )
    return Settings(
        redis=RedisSettings(
            addresses=_addresses(env.get("S2_REDIS_ADDRESSES", "127.0.0.1:6379")),
            username=env.get("S2_REDIS_USERNAME") or None,
            password=env.get("S2_REDIS_PASSWORD") or None,
            # Longer than the blocking read and than WAIT, or idle reads and waits time out.
            socket_timeout_s=5.0 + max(block_ms, wait_ms) / 1000,
            min_replicas=_count(env, "S2_REDIS_MIN_REPLICAS", 0),
            wait_ms=wait_ms,
        ),
        series=_series(symbols),
        windows=_windows(env.get("S2_WINDOWS", "1m,5m,1h"), bundle),
        group=env.get("S2_CONSUMER_GROUP", "s2") or "s2",
        consumer=env.get("S2_CONSUMER_NAME") or socket.gethostname(),
        bundle=bundle,
        lake_dir=Path(env.get("S2_LAKE_DIR", "./data/lake")),
        batch_size=min(_positive_int(env, "S2_BATCH_SIZE", 200), 200),
        block_ms=block_ms,
        max_deliveries=_positive_int(env, "S2_MAX_DELIVERIES", 5),
        claim_idle_ms=claim_idle_ms,
        checkpoint_ms=_positive_int(env, "S2_CHECKPOINT_MS", Settings.checkpoint_ms),
    )
