"""What the `recompute` and `lake` commands need beside the job: time arguments, the job's
environment (`S2_*` settings), kline import into the lake, and progress lines."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from s2feature.config.bundle import BundleError, ConfigBundle
from s2feature.config.overrides import BundleOverrides
from s2feature.config_source.files import load_bundle
from s2feature.data.importers import load_klines
from s2feature.domain import BarArrays, SeriesId
from s2feature.errors import ConfigurationError
from s2feature.jobs.recompute import Progress
from s2feature.lake.parquet import BarLake
from s2feature.store.base import Store
from s2feature.store.factory import StoreSettings, open_store

__all__ = [
    "JobEnvironment",
    "ProgressPrinter",
    "import_klines",
    "job_environment",
    "parse_time_ms",
]


def parse_time_ms(text: str) -> int:
    """Epoch milliseconds of `2024-01-05` (00:00 UTC), `2024-01-05T10:00Z` (ISO 8601; no offset
    means UTC) or a plain integer of milliseconds."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"time {text!r}: expected YYYY-MM-DD, YYYY-MM-DDTHH:MM[Z] or epoch milliseconds"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


@dataclass(frozen=True)
class JobEnvironment:
    """The settings a job uses: the bundle (`S2_CONFIG_FILE`), the lake (`S2_LAKE_DIR`), the store
    (`S2_DB_*`) and the series of the live service (`S2_SYMBOLS`, optional here)."""

    bundle: ConfigBundle
    lake_dir: Path
    store: StoreSettings
    series: dict[str, SeriesId]

    def open_store(self) -> Store:
        return open_store(self.store)


def job_environment(
    config_file: Path | None,
    lake_dir: Path,
    symbols: str,
    store: StoreSettings,
    overrides: BundleOverrides | None = None,
) -> JobEnvironment:
    """The environment of the values of `S2_CONFIG_FILE`, `S2_LAKE_DIR`, `S2_SYMBOLS` and the
    `S2_DB_*` store settings, with the `S2_DQC_*`/`S2_REGIME_*` overrides merged over the bundle
    as the service merges them; ConfigurationError naming the variable that cannot be used."""
    try:
        bundle = load_bundle(config_file) if config_file else ConfigBundle()
    except BundleError as exc:
        raise ConfigurationError(f"S2_CONFIG_FILE: {exc}") from None
    try:
        bundle = overrides.apply(bundle) if overrides is not None else bundle
    except BundleError as exc:
        raise ConfigurationError(f"S2_DQC_*/S2_REGIME_* overrides: {exc}") from None
    try:
        series = [SeriesId.parse(item) for item in symbols.split(",") if item.strip()]
    except ValueError as exc:
        raise ConfigurationError(f"S2_SYMBOLS: {exc}") from None
    return JobEnvironment(bundle, lake_dir, store, {s.symbol: s for s in series})


def import_klines(lake: BarLake, path: Path, symbol: str, base_interval: str) -> int:
    """Append the bars of a kline file to the lake; the number of bars read. Idempotent: bars
    already stored with the same `open_time` are replaced by equal ones."""
    bars: BarArrays = load_klines(path, base_interval)
    lake.append(symbol, bars.to_bars())
    for date in lake.dates(symbol):
        lake.compact(symbol, date)
    return len(bars)


class ProgressPrinter:
    """Prints one line per report: batches, signals, rate (batches/s) and ETA."""

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.clock = clock
        self.started = clock()

    def __call__(self, p: Progress) -> None:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = p.batches_done / elapsed
        eta = (p.batches_total - p.batches_done) / rate if rate > 0 else float("inf")
        print(
            f"recompute: {p.batches_done}/{p.batches_total} batches, {p.signals_written} signals "
            f"written, {rate:.1f} batches/s, ETA {eta:.0f} s",
            file=self.out,
            flush=True,
        )
