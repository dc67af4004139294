"""The lake the recompute benchmarks read: 90 days of 1-minute base bars for three symbols, plus
the warm-up history the recompute reads before them.

Each symbol is the real Coinbase BTC/USD hourly series of the same stretch, split into 1-minute
bars by the seeded derivation of `s2feature.data.synth` with its own seed (so the three minute
paths differ) and given book and funding fields (`derive_ticks`), so snapshots pass DQC as live
ones would. Written through `BarLake.append`, one compacted part per date.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from s2feature.config.bundle import ConfigBundle
from s2feature.data.importers import load_klines
from s2feature.data.synth import derive_finer_bars, derive_ticks
from s2feature.domain import DAY_MS
from s2feature.jobs.warmup import warmup_start
from s2feature.lake.parquet import BarLake

ROOT = Path(__file__).resolve().parents[1]
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")  # stand-in names, see the module doc
WINDOWS = ("1m", "5m", "1h")
DAYS = 90
MINUTE_MS = 60_000


@dataclass(frozen=True)
class RecomputeLake:
    lake: BarLake
    symbols: tuple[str, ...]
    windows: tuple[str, ...]
    from_ts: int  # first t0 of the range (a UTC day)
    to_ts: int  # last t0, inclusive: DAYS days later
    bars_per_symbol: int  # base bars in the lake, warm-up included


def build_lake(root: Path, days: int = DAYS, symbols: tuple[str, ...] = SYMBOLS) -> RecomputeLake:
    """Write the benchmark lake under `root`; the range is the last `days` whole days of the
    hourly file, the warm-up the recompute reads before it is written too. `symbols` names the
    series (a lake shared with a live service takes names its streams do not use)."""
    hourly = load_klines(ROOT / "datasets" / "Coinbase_BTCUSD_1h_2017-2018.csv", "1h")
    bundle = ConfigBundle()
    last_day = int(hourly.close_time[-1]) // DAY_MS * DAY_MS  # 00:00 of the file's last day
    to_ts = last_day - 1
    from_ts = to_ts + 1 - days * DAY_MS
    first_open = min(warmup_start(from_ts, w, bundle) for w in WINDOWS)
    lo = int((hourly.open_time >= first_open).argmax())
    hi = int((hourly.close_time <= to_ts).sum())
    stretch = hourly.slice(lo, hi)
    lake = BarLake(root)
    bars = 0
    for index, symbol in enumerate(symbols):
        minute = derive_finer_bars(stretch, MINUTE_MS, seed=index + 1)
        minute = derive_ticks(minute, seed=index + 11, market="spot")
        lake.append(symbol, minute.to_bars())
        for date in lake.dates(symbol):
            lake.compact(symbol, date)
        bars = len(minute)
    return RecomputeLake(lake, symbols, WINDOWS, from_ts, to_ts, bars)
