"""Wilder's Average True Range (SPEC §5): `atr_14` and `atr_14_pct`, TA-Lib compatible.

* `TR_i = max(H_i, C_{i-1}) - min(L_i, C_{i-1})` from the second bar on (the first bar has no
  previous close, so no TR);
* the first ATR is the mean of the first `period` TRs, at index `period`;
* then `ATR_i = (ATR_{i-1} * (period - 1) + TR_i) / period`.

The batch kernel (`atr_batch`) and the online class (`OnlineAtr`) are written independently: the
batch kernel runs the Wilder recursion as a blocked linear scan (matrix products per block, see
`_decay_scan_in_place`), the online class as the plain recurrence on Python floats.

The family evaluates them on w-bars in the order they are delivered: a w-period without any base
bar yields no w-bar, so `C_{i-1}` is the close of the previous *delivered* w-bar, as TA-Lib would
see the series.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from s2feature.compute.family import BatchValues, FamilyContext, FeatureFamily, FloatArray, IntArray
from s2feature.domain import Bar, BarArrays, FeatureValue

__all__ = [
    "ATR_FAMILY",
    "OnlineAtr",
    "OnlineAtrFamily",
    "atr_batch",
    "atr_family_batch",
    "true_range_batch",
]

ATR_FEATURES: tuple[str, str] = ("atr_14", "atr_14_pct")


def _check_period(period: int) -> int:
    if isinstance(period, bool) or not isinstance(period, int) or period < 1:
        raise ValueError(f"ATR period must be a positive integer, got {period!r}")
    return period


# Blocked scan geometry: 8-element blocks keep the per-block matrix product cheap; short series
# go straight to the IIR filter. Products run in chunks of 8192 blocks (512 KiB), which stay in
# cache and are small enough for OpenBLAS to run them on the calling thread: on a busy machine its
# spinning worker threads cost far more than they save on products this thin.
_BLOCK = 8
_END_ROWS = 8192
_CHUNK_ROWS = 8192
_DIRECT_MAX = 4096
_TR_CHUNK = 1 << 16


def true_range_batch(high: FloatArray, low: FloatArray, close: FloatArray) -> FloatArray:
    """True range per bar; NaN at index 0, which has no previous close."""
    out = np.empty(len(close), dtype=np.float64)
    _true_range_into(high, low, close, out)
    return out


def _true_range_into(high: FloatArray, low: FloatArray, close: FloatArray, out: FloatArray) -> None:
    # Chunked with one small scratch buffer: a second full-length temporary costs more in page
    # faults than the arithmetic itself.
    n = len(close)
    if n == 0:
        return
    out[0] = np.nan
    scratch = np.empty(min(_TR_CHUNK, n), dtype=np.float64)
    for start in range(1, n, _TR_CHUNK):
        stop = min(start + _TR_CHUNK, n)
        part = out[start:stop]
        lower = scratch[: stop - start]
        np.maximum(high[start:stop], close[start - 1 : stop - 1], out=part)
        np.minimum(low[start:stop], close[start - 1 : stop - 1], out=lower)
        np.subtract(part, lower, out=part)


def _filter_in_place(values: FloatArray, decay: float, gain: float, before: float) -> None:
    # Imported here: scipy.signal costs the service's process about 60 MB and 2 s at start-up,
    # and only the batch path (recompute, short series) needs it.
    from scipy.signal import lfilter

    filtered, _ = lfilter([gain], [1.0, -decay], values, zi=[decay * before])
    values[:] = filtered


def _decay_scan_in_place(values: FloatArray, decay: float, gain: float, before: float) -> None:
    """Replace `x` by `y` with `y_i = decay * y_{i-1} + gain * x_i` and `y_{-1} = before`.

    A sequential IIR filter costs several ns per element; this splits the series into blocks of
    `_BLOCK`: inside a block the response to the block's own inputs is one matrix product with a
    triangular decay matrix, and the state carried into each block is the same recurrence one
    level down (on block ends, with `decay ** _BLOCK`). With non-negative inputs every step adds
    non-negative terms, so relative accuracy stays at a few ulps. Exactly causal for finite
    inputs: the weights of later elements are exact zeros.
    """
    blocks = len(values) // _BLOCK
    if len(values) <= _DIRECT_MAX or blocks < 2 or decay == 0.0:
        _filter_in_place(values, decay, gain, before)
        return
    body = values[: blocks * _BLOCK].reshape(blocks, _BLOCK)
    lag = np.arange(_BLOCK)[None, :] - np.arange(_BLOCK)[:, None]
    response = np.where(lag >= 0, decay ** np.maximum(lag, 0).astype(np.float64), 0.0) * gain
    end_weights = np.ascontiguousarray(response[:, -1])
    block_ends = np.empty(blocks, dtype=np.float64)
    for first in range(0, blocks, _END_ROWS):
        last = min(first + _END_ROWS, blocks)
        np.matmul(body[first:last], end_weights, out=block_ends[first:last])
    if not np.all(np.isfinite(block_ends)):
        # A NaN or inf input would leak into earlier outputs through the zero weights (0 * inf);
        # the plain filter propagates it forward only, as TA-Lib does.
        _filter_in_place(values, decay, gain, before)
        return
    carried = np.empty(blocks, dtype=np.float64)
    carried[0] = before
    carried[1:] = block_ends[:-1]
    _decay_scan_in_place(carried[1:], decay**_BLOCK, 1.0, before)
    # The state carried into a block acts like an extra input on its first element.
    carried *= decay / gain
    scratch = np.empty((min(_CHUNK_ROWS, blocks), _BLOCK), dtype=np.float64)
    for first in range(0, blocks, _CHUNK_ROWS):
        last = min(first + _CHUNK_ROWS, blocks)
        inputs = scratch[: last - first]
        np.copyto(inputs, body[first:last])
        inputs[:, 0] += carried[first:last]
        np.matmul(inputs, response, out=body[first:last])
    rest = values[blocks * _BLOCK :]
    if len(rest):
        _filter_in_place(rest, decay, gain, float(values[blocks * _BLOCK - 1]))


def atr_batch(high: FloatArray, low: FloatArray, close: FloatArray, period: int = 14) -> FloatArray:
    """Wilder ATR over whole arrays: NaN for indices `< period`, like `talib.ATR`."""
    _check_period(period)
    high = np.asarray(high, dtype=np.float64)
    low = np.asarray(low, dtype=np.float64)
    close = np.asarray(close, dtype=np.float64)
    if not len(high) == len(low) == len(close):
        raise ValueError("high, low and close must have the same length")
    n = len(close)
    out = np.empty(n, dtype=np.float64)
    if n <= period:
        out.fill(np.nan)
        return out
    _true_range_into(high, low, close, out)
    seed = float(np.sum(out[1 : period + 1])) / period
    out[:period] = np.nan
    out[period] = seed
    if period > 1:
        # ATR_i = ATR_{i-1} * (p - 1) / p + TR_i / p, seeded with the first mean.
        _decay_scan_in_place(out[period + 1 :], (period - 1) / period, 1.0 / period, seed)
    return out


class OnlineAtr:
    """Wilder ATR one bar at a time; `value` is None until `period` true ranges are in."""

    __slots__ = ("_count", "_period", "_previous_close", "_tr_sum", "_value")

    def __init__(self, period: int = 14) -> None:
        self._period = _check_period(period)
        self._previous_close: float | None = None
        self._count = 0  # true ranges seen, capped once the ATR is seeded
        self._tr_sum = 0.0
        self._value: float | None = None

    @property
    def period(self) -> int:
        return self._period

    @property
    def value(self) -> float | None:
        """The current ATR, or None while warming up."""
        return self._value

    def update(self, high: float, low: float, close: float) -> float | None:
        """Feed the next bar; returns the ATR after it (None while warming up)."""
        previous = self._previous_close
        self._previous_close = close
        if previous is None:
            return None
        true_range = (high if high > previous else previous) - (low if low < previous else previous)
        value = self._value
        if value is not None:
            # TA-Lib's operation order, so a long run stays bit-close to it.
            value = (value * (self._period - 1) + true_range) / self._period
            self._value = value
            return value
        self._tr_sum += true_range
        self._count += 1
        if self._count == self._period:
            self._value = self._tr_sum / self._period
        return self._value

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {
            "period": self._period,
            "previous_close": self._previous_close,
            "count": self._count,
            "tr_sum": self._tr_sum,
            "value": self._value,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue exactly from a `snapshot()`; the period must match this instance's."""
        if int(state["period"]) != self._period:
            raise ValueError(f"ATR state has period {state['period']}, expected {self._period}")
        previous, value = state["previous_close"], state["value"]
        self._previous_close = None if previous is None else float(previous)
        self._count = int(state["count"])
        self._tr_sum = float(state["tr_sum"])
        self._value = None if value is None else float(value)

    def reset(self) -> None:
        """Back to a fresh instance's state."""
        self._previous_close = None
        self._count = 0
        self._tr_sum = 0.0
        self._value = None


def _ratio(atr: float | None, mid: float | None) -> float | None:
    if atr is None or mid is None or not mid > 0.0:
        return None
    return atr / mid


def atr_family_batch(bars: BarArrays, t0s: IntArray, ctx: FamilyContext) -> BatchValues:
    """`atr_14` and `atr_14_pct` at each t0, from the last w-bar closed at or before it."""
    atr = atr_batch(bars.high, bars.low, bars.close, ctx.bundle.windows.atr_period)
    mid = np.asarray(bars.mid, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = np.where(mid > 0.0, atr / mid, np.nan)
    # A leading NaN stands for "no w-bar closed yet": position -1 maps onto it.
    position = np.searchsorted(bars.close_time, np.asarray(t0s, dtype=np.int64), side="right")
    return {"atr_14": np.r_[np.nan, atr][position], "atr_14_pct": np.r_[np.nan, pct][position]}


class OnlineAtrFamily:
    """The ATR family fed w-bars one at a time (`OnlineFamily`)."""

    def __init__(self, ctx: FamilyContext) -> None:
        self._atr = OnlineAtr(ctx.bundle.windows.atr_period)
        self._mid: float | None = None
        self._last_close_time: int | None = None

    def update(self, bar: Bar) -> None:
        if self._last_close_time is not None and bar.close_time <= self._last_close_time:
            raise ValueError(
                f"bar closing at {bar.close_time} does not follow the bar closing at "
                f"{self._last_close_time}"
            )
        self._last_close_time = bar.close_time
        self._atr.update(bar.high, bar.low, bar.close)
        mid = bar.mid
        self._mid = None if mid is None or math.isnan(mid) else mid

    def values_at(self, t0: int) -> dict[str, FeatureValue]:
        atr = self._atr.value
        return {"atr_14": atr, "atr_14_pct": _ratio(atr, self._mid)}

    def snapshot(self) -> dict[str, Any]:
        return {"atr": self._atr.snapshot(), "mid": self._mid, "last": self._last_close_time}

    def restore(self, state: Mapping[str, Any]) -> None:
        self._atr.restore(state["atr"])
        mid, last = state["mid"], state["last"]
        self._mid = None if mid is None else float(mid)
        self._last_close_time = None if last is None else int(last)

    def reset(self) -> None:
        self._atr.reset()
        self._mid = None
        self._last_close_time = None


def atr_state_params(ctx: FamilyContext) -> dict[str, Any]:
    """The period: the saved TR sum, count and running average are those of one period."""
    return {"atr_period": ctx.bundle.windows.atr_period}


ATR_FAMILY = FeatureFamily(
    name="atr",
    features=ATR_FEATURES,
    level="wbar",
    batch=atr_family_batch,
    online=OnlineAtrFamily,
    state_version=1,
    state_params=atr_state_params,
)
