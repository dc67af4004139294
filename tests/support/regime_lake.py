"""A lake of hourly bars with a hand-derived `rv_1d` series, for the regime job's tests.

Log returns alternate `+A`/`-A`, except the last `low_returns`, which alternate `+B`/`-B` with
`B < A` (see tests/unit/test_regime.py for the derivation of the percentile).
"""

from __future__ import annotations

import math
from pathlib import Path

from s2feature.config.bundle import ConfigBundle
from s2feature.domain import HOUR_MS, Bar
from s2feature.lake.parquet import BarLake

SYMBOL = "BTCUSDT"
A, B = 0.01, 0.002
DAYS = 31
START = 1_704_067_200_000  # 2024-01-01T00:00Z
HOURLY = ConfigBundle(rev="regime-test", base_interval="1h")


def bars_of(first_open: int, returns: list[float]) -> list[Bar]:
    bars, price = [], 100.0
    for i in range(len(returns) + 1):
        if i:
            price *= math.exp(returns[i - 1])
        t = first_open + i * HOUR_MS
        bars.append(Bar(t, t + HOUR_MS - 1, price, price, price, price, 1.0))
    return bars


def alternating(magnitude: float, count: int) -> list[float]:
    return [magnitude if i % 2 == 0 else -magnitude for i in range(count)]


def calm_tail_lake(root: Path, low_returns: int, days: int = DAYS) -> tuple[BarLake, int]:
    """A lake of `days` days of hourly bars (see the module doc); returns it and the last close."""
    n_returns = days * 24 - 1
    returns = alternating(A, n_returns - low_returns) + alternating(B, low_returns)
    bars = bars_of(START, returns)
    lake = BarLake(root)
    lake.append(SYMBOL, bars)
    return lake, bars[-1].close_time
