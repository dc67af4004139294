"""How much history before `from_ts` a recompute (or a warm-up) must read so its values equal
the live ones.

Most features look back a bounded span: their value at t0 is the same whatever came before that
span. Wilder's ATR does not: each value carries `(1 - 1/period)^n` of the state n w-bars back, so
a recompute that starts later than the live service differs from it by about that fraction. The
warm-up is the largest of

- the ATR horizon: enough w-bars for `(1 - 1/period)^n` to fall below `ATR_TOLERANCE`
  (280 w-bars for the default period 14);
- the correlation span: `rho_period + rho_z_period` w-bars;
- the volatility span: `rv_pctile_30d` ranks 720 hourly `rv_1d` samples, each over a day of
  returns: 31 days of base bars (this covers `rv_30d`, 30 days, too);
- the jump check: `jump_lookback` base mids;

plus one w-period, so the first w-bar needed is whole. The start is rounded down to a UTC day,
which is a w-bar boundary of every window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

from s2feature.config.bundle import ConfigBundle
from s2feature.domain import DAY_MS, HOUR_MS, interval_ms

__all__ = ["ATR_TOLERANCE", "atr_warmup_wbars", "warmup_ms", "warmup_start", "warmup_start_of"]

ATR_TOLERANCE: Final = 1e-9
"""Relative weight of the state before the warm-up that a recomputed ATR may still carry."""

_PCTILE_SAMPLES: Final = 720  # hourly rv_1d samples ranked by rv_pctile_30d
_VOLATILITY_SPAN_MS: Final = _PCTILE_SAMPLES * HOUR_MS + DAY_MS


def atr_warmup_wbars(atr_period: int) -> int:
    """Smallest n with `(1 - 1/atr_period)^n < ATR_TOLERANCE` (1 for a period of 1, which keeps
    no memory)."""
    if atr_period <= 1:
        return 1
    return math.floor(math.log(ATR_TOLERANCE) / math.log(1.0 - 1.0 / atr_period)) + 1


def warmup_ms(window: str, bundle: ConfigBundle) -> int:
    """History (ms) before a snapshot's w-bar that the features of `window` depend on."""
    w_ms = interval_ms(window)
    lengths = bundle.windows
    wbars = max(atr_warmup_wbars(lengths.atr_period), lengths.rho_period + lengths.rho_z_period)
    base_span = max(_VOLATILITY_SPAN_MS, bundle.dqc.jump_lookback * bundle.base_ms)
    return max(wbars * w_ms, base_span) + w_ms + bundle.base_ms


def warmup_start(from_ts: int, window: str, bundle: ConfigBundle) -> int:
    """`open_time` of the first base bar to read for snapshots of `window` from `from_ts` on: a
    UTC day boundary (a w-bar boundary of every window), never negative."""
    start = from_ts - warmup_ms(window, bundle)
    return max(0, start // DAY_MS * DAY_MS)


def warmup_start_of(from_ts: int, windows: Iterable[str], bundle: ConfigBundle) -> int:
    """The earliest `warmup_start` over `windows`: where a warm-up for all of them reads from."""
    return min(warmup_start(from_ts, window, bundle) for window in windows)
