"""Performance figures for the feature engine, measured in one run and printed with ratios.

Run with `make bench` (or `uv run python benches/run.py`). Figures, never assertions: the machine
is shared and noisy, so each timing is the best of a few repeats.

Input: the real Coinbase BTC/USD hourly bars, split into 1-minute bars by the seeded derivation
(`s2feature.data.synth`), with derived book and funding fields.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import talib

from s2feature.compute.atr import atr_batch
from s2feature.compute.batch import compute_batch, compute_columns
from s2feature.compute.engine import SymbolEngine
from s2feature.config.bundle import ConfigBundle
from s2feature.data.importers import load_klines
from s2feature.data.synth import derive_finer_bars, derive_ticks
from s2feature.domain import SeriesId

ROOT = Path(__file__).resolve().parents[1]
SERIES = SeriesId("bench", "fut", "BTCUSDT")
WINDOWS = ("1m", "5m", "1h")


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--online-bars", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    hourly = load_klines(ROOT / "datasets" / "Coinbase_BTCUSD_1h_2017-2018.csv", "1h")
    minute = derive_ticks(derive_finer_bars(hourly, 60_000, seed=1), seed=2, market="fut")
    bundle = ConfigBundle()
    print("command: make bench  (uv run python benches/run.py)")
    print(f"input: {len(minute):,} one-minute bars derived from {len(hourly):,} real hourly bars\n")

    bars = minute.slice(0, args.online_bars).to_bars()

    def online() -> None:
        engine = SymbolEngine(SERIES, WINDOWS, bundle)
        for bar in bars:
            engine.on_base_bar(bar)

    t_online = best_of(args.repeats, online)
    us_per_bar = t_online / len(bars) * 1e6
    print(
        f"online engine, windows {','.join(WINDOWS)}, all features: "
        f"{us_per_bar:.2f} µs per base bar over {len(bars):,} bars "
        f"(target <= 20 µs: {'met' if us_per_bar <= 20 else 'NOT met'})"
    )

    t_batch = best_of(args.repeats, lambda: compute_columns(minute, SERIES, WINDOWS, bundle))
    rate = len(minute) / t_batch
    print(
        f"batch engine (feature columns), same windows and features: {rate:,.0f} base bars/s "
        f"({len(minute):,} bars in {t_batch:.2f} s; target >= 1,000,000/s: "
        f"{'met' if rate >= 1e6 else 'NOT met'})"
    )
    t_full = best_of(1, lambda: compute_batch(minute, SERIES, WINDOWS, bundle))
    print(
        f"batch engine including Snapshot objects with DQC verdicts: "
        f"{len(minute) / t_full:,.0f} base bars/s ({t_full:.2f} s)"
    )

    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, 1_000_000)))
    high = close * (1 + np.abs(rng.normal(0, 5e-4, close.size)))
    low = close * (1 - np.abs(rng.normal(0, 5e-4, close.size)))
    t_ours = best_of(args.repeats * 3, lambda: atr_batch(high, low, close, 14))
    t_talib = best_of(args.repeats * 3, lambda: talib.ATR(high, low, close, timeperiod=14))
    ratio = t_ours / t_talib
    print(
        f"ATR batch kernel on 1,000,000 bars: {t_ours * 1e3:.2f} ms vs TA-Lib "
        f"{t_talib * 1e3:.2f} ms = {ratio:.2f}x "
        f"(target <= 3x: {'met' if ratio <= 3 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
