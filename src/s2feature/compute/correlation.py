"""Correlation family: rolling correlation of FX and symbol w-bar log returns, and its z-score.

With `w` the window length, `p = windows.rho_period` and `z = windows.rho_z_period`:

* A series has a log return `ln(C(T) / C(T - w))` at close time T only when it has w-bars closing
  at both T and T - w with valid (finite, positive) closes. Gaps are never bridged and closes are
  never forward-filled. For the symbol the bar at T - w is its previous bar; FX closes are looked
  up at exactly the symbol's close times.
* `rho_usdttwd_14(t0)` is the Pearson correlation of the (FX, symbol) return pairs at the p close
  times `t0 - (p-1)w, ..., t0`; null unless all p pairs exist, or when either side's p returns are
  all equal. It is computed with two passes (means, then centred sums) and clipped to [-1, 1] so
  that rounding cannot report a correlation outside its range.
* `rho_fx_btc_roll_z(t0)` is `(rho(t0) - mean) / std` (ddof 1) over the z rho values at
  `t0 - (z-1)w, ..., t0`; null unless all z exist, or when they are all equal.

Both features are null when the context carries no FX series. The online class looks FX closes
up when it is asked for values, not when bars arrive, so its result depends only on the data and
not on which stream was read first. The FX w-bars are fed the same way on every path: their
closes by close time, from `aggregate_wbars` over the FX base bars (batch, recompute, offline
online runs: `engine.fx_tables`) or from the same base bars as they arrive (the live service:
`compute.fx_closes.LiveFxCloses`, which answers only for w-bars that are final).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from s2feature.compute.family import (
    BatchValues,
    FamilyContext,
    FeatureFamily,
    FloatArray,
    FxCloses,
    IntArray,
)
from s2feature.domain import Bar, BarArrays, FeatureValue

__all__ = [
    "CORRELATION_FAMILY",
    "CORRELATION_FEATURES",
    "OnlineCorrelationFamily",
    "correlation_family_batch",
]

RHO = "rho_usdttwd_14"
RHO_Z = "rho_fx_btc_roll_z"
CORRELATION_FEATURES: tuple[str, ...] = (RHO, RHO_Z)

_INF = math.inf


# --------------------------------------------------------------------------------------- batch


def _valid_closes(closes: FloatArray) -> FloatArray:
    """Closes with the unusable ones (non-finite or non-positive) turned into NaN."""
    return np.where(np.isfinite(closes) & (closes > 0.0), closes, np.nan)


def _closes_at(times: IntArray, series_times: IntArray, series_closes: FloatArray) -> FloatArray:
    """The close of the series' bar closing exactly at each time, NaN where there is none."""
    if len(series_times) == 0:
        return np.full(len(times), np.nan)
    index = np.searchsorted(series_times, times)
    safe = np.minimum(index, len(series_times) - 1)
    found = (index < len(series_times)) & (series_times[safe] == times)
    return np.where(found, series_closes[safe], np.nan)


def _log_returns(now: FloatArray, before: FloatArray) -> FloatArray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log(now / before)


def _rolling_pearson(x: FloatArray, y: FloatArray, period: int) -> FloatArray:
    """Pearson correlation of each trailing `period` window, aligned with its last element."""
    out = np.full(len(x), np.nan)
    if len(x) < period:
        return out
    xw = sliding_window_view(x, period)
    yw = sliding_window_view(y, period)
    complete = np.isfinite(xw).all(axis=1) & np.isfinite(yw).all(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = xw - xw.mean(axis=1, keepdims=True)
        dy = yw - yw.mean(axis=1, keepdims=True)
        sxx = (dx * dx).sum(axis=1)
        syy = (dy * dy).sum(axis=1)
        sxy = (dx * dy).sum(axis=1)
        spread = sxx * syy
        rho = np.clip(sxy / np.sqrt(spread), -1.0, 1.0)
    # "All equal" is tested on the values themselves: a centred sum of equal values need not be
    # exactly zero once the mean is rounded.
    varies = (xw.max(axis=1) != xw.min(axis=1)) & (yw.max(axis=1) != yw.min(axis=1))
    ok = complete & varies & (spread > 0.0)
    out[period - 1 :] = np.where(ok, rho, np.nan)
    return out


def _rolling_zscore(values: FloatArray, period: int) -> FloatArray:
    """z-score of each value among the trailing `period` values (itself included), ddof 1."""
    out = np.full(len(values), np.nan)
    if len(values) < period:
        return out
    windows = sliding_window_view(values, period)
    complete = np.isfinite(windows).all(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = windows.mean(axis=1)
        std = np.sqrt(((windows - mean[:, None]) ** 2).sum(axis=1) / (period - 1))
        z = (windows[:, -1] - mean) / std
    varies = windows.max(axis=1) != windows.min(axis=1)
    out[period - 1 :] = np.where(complete & varies & (std > 0.0), z, np.nan)
    return out


def correlation_family_batch(bars: BarArrays, t0s: IntArray, ctx: FamilyContext) -> BatchValues:
    """rho and its z-score at each t0 (a w-bar close time), NaN for null."""
    t0s = np.asarray(t0s, dtype=np.int64)
    n_out = len(t0s)
    if ctx.fx_batch is None or len(bars) == 0:
        return {RHO: np.full(n_out, np.nan), RHO_Z: np.full(n_out, np.nan)}
    w = ctx.window_ms
    windows = ctx.bundle.windows

    times = bars.close_time
    closes = _valid_closes(bars.close)
    # Symbol return at bar i: its previous bar must close exactly one window earlier.
    sym_ret = np.full(len(bars), np.nan)
    adjacent = np.diff(times) == w
    sym_ret[1:] = np.where(adjacent, _log_returns(closes[1:], closes[:-1]), np.nan)

    fx_times, fx_closes = ctx.fx_batch
    order = np.argsort(fx_times, kind="stable")
    fx_times = np.asarray(fx_times, dtype=np.int64)[order]
    fx_closes = _valid_closes(np.asarray(fx_closes, dtype=np.float64)[order])
    fx_ret = _log_returns(
        _closes_at(times, fx_times, fx_closes), _closes_at(times - w, fx_times, fx_closes)
    )

    # Aligned with the symbol's bars. A finite rho at bar i implies returns at the p bars ending
    # at i, hence those bars are exactly one window apart: the rolling windows over bar positions
    # are windows over close times, for rho and for the z-score alike.
    rho_by_bar = _rolling_pearson(fx_ret, sym_ret, windows.rho_period)
    z_by_bar = _rolling_zscore(rho_by_bar, windows.rho_z_period)

    position = np.searchsorted(times, t0s)
    safe = np.minimum(position, len(times) - 1)
    at_bar = (position < len(times)) & (times[safe] == t0s)
    return {
        RHO: np.where(at_bar, rho_by_bar[safe], np.nan),
        RHO_Z: np.where(at_bar, z_by_bar[safe], np.nan),
    }


# -------------------------------------------------------------------------------------- online


def _pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Two-pass Pearson correlation of equally long samples; None when a side does not vary."""
    n = len(xs)
    # "All equal" is tested on the values: a centred sum of equal values need not be exactly 0
    # once the mean is rounded. `count` is the cheapest such test in CPython.
    if xs.count(xs[0]) == n or ys.count(ys[0]) == n:
        return None
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    sxx = syy = sxy = 0.0
    for x, y in zip(xs, ys):  # noqa: B905 - equal lengths by construction; hot path
        dx = x - mean_x
        dy = y - mean_y
        sxx += dx * dx
        syy += dy * dy
        sxy += dx * dy
    spread = sxx * syy
    if spread <= 0.0:  # only when tiny spreads underflow
        return None
    # sqrt(a * a) == a exactly in IEEE arithmetic, so identical sides give exactly 1.
    rho = sxy / math.sqrt(spread)
    return -1.0 if rho < -1.0 else 1.0 if rho > 1.0 else rho


def _zscore_of_last(values: Sequence[float]) -> float | None:
    """z-score (ddof 1) of the last value among all of them; None when they are all equal."""
    n = len(values)
    if values.count(values[0]) == n:
        return None
    mean = sum(values) / n
    squares = 0.0
    for v in values:
        d = v - mean
        squares += d * d
    std = math.sqrt(squares / (n - 1))
    if std == 0.0:
        return None
    return (values[-1] - mean) / std


class OnlineCorrelationFamily:
    """rho and its z-score, incrementally (`OnlineFamily`).

    State: the symbol's log returns over the current run of adjacent bars (at most p + z - 1,
    the returns the z rho values ending at the last bar need) and the last valid close.

    FX closes are read when values are asked for, at close times up to t0 only, and every rho
    the z-score needs is derived from those returns and the FX closes as they are then. So an
    FX close that was not yet known when an earlier snapshot was made (live, see the service's
    FX barrier) is used as soon as it is: each value equals the batch path's, which sees the
    whole FX history. Computed rho values are kept in a cache (not state: `snapshot` leaves it
    out) once they are final, i.e. once the FX close at their own close time was readable:
    FX closes are final once visible, and FX w-bars close in order.
    """

    def __init__(self, ctx: FamilyContext) -> None:
        self._fx = ctx.fx_online
        self._w = ctx.window_ms
        self._p = ctx.bundle.windows.rho_period
        self._z = ctx.bundle.windows.rho_z_period
        self._sym_returns: deque[float] = deque(maxlen=self._p + self._z - 1)
        self._last_close: float | None = None  # None when the last bar's close is unusable
        self._close_end: int | None = None  # close time of the last bar fed
        # Caches, not state (FX closes are final once readable, so cached values stay true):
        self._rho_cache: dict[int, float | None] = {}  # close time -> final rho (None: null)
        self._run: list[float] = []  # the z rhos ending at `_run_end`, none null
        self._run_end: int | None = None
        self._fx_kept: deque[float] = deque(maxlen=self._p)  # p FX returns ending at `_fx_end`
        self._fx_end: int | None = None
        self._fx_last = 0.0  # the FX close at `_fx_end`

    def update(self, bar: Bar) -> None:
        """Take the next final w-bar of the symbol."""
        close = bar.close
        valid = 0.0 < close < _INF
        last = self._last_close
        if valid and last is not None and bar.close_time - self._w == self._close_end:
            self._sym_returns.append(math.log(close / last))
        else:
            self._sym_returns.clear()  # a gap or an unusable close starts a new run
        self._close_end = bar.close_time
        self._last_close = close if valid else None

    def values_at(self, t0: int) -> dict[str, FeatureValue]:
        """rho and its z-score as of t0 (the close of the last w-bar fed; null otherwise)."""
        fx = self._fx
        if fx is None or t0 != self._close_end or len(self._sym_returns) < self._p:
            return {RHO: None, RHO_Z: None}
        returns = list(self._sym_returns)
        rho = self._rho(returns, 0, t0, fx)
        if rho is None:
            self._run_end = None
            return {RHO: None, RHO_Z: None}
        zscore = None
        w = self._w
        if len(returns) >= self._p + self._z - 1:
            if self._run_end == t0 - w:  # the z rhos of the last evaluation, all final
                rhos: list[float | None] = [*self._run[1:], rho]
            else:
                rhos = [self._rho(returns, k, t0 - k * w, fx) for k in range(self._z - 1, 0, -1)]
                rhos.append(rho)
            if None not in rhos:
                self._run, self._run_end = cast(list[float], rhos), t0
                zscore = _zscore_of_last(self._run)
            else:
                self._run_end = None
        self._prune(t0)
        return {RHO: rho, RHO_Z: zscore}

    def _rho(self, returns: list[float], back: int, t: int, fx: FxCloses) -> float | None:
        """rho at close time t, `back` bars before the last one (its p returns end there)."""
        cache = self._rho_cache
        if t in cache:
            return cache[t]
        close = fx.close_at(t)
        if close is None or not 0.0 < close < _INF:
            return None  # not cached: the close may not be known yet
        end = len(returns) - back
        rho = None
        fx_returns = self._fx_returns(fx, t, close)
        if fx_returns is not None:
            rho = _pearson(fx_returns, returns[end - self._p : end])
        cache[t] = rho  # final: every FX close up to t was readable when t's was
        return rho

    def _fx_returns(self, fx: FxCloses, t: int, last: float) -> list[float] | None:
        """The p FX log returns ending at t (whose close is `last`); None when one is missing.
        Those ending one window earlier are kept, so the next t reads one close more."""
        w = self._w
        close_at = fx.close_at
        kept = self._fx_kept
        if self._fx_end == t - w and close_at(t - w) == self._fx_last:
            kept.append(math.log(last / self._fx_last))
            self._fx_end, self._fx_last = t, last
            return list(kept)
        closes = []
        for close_time in range(t - self._p * w, t, w):
            close = close_at(close_time)
            if close is None or not 0.0 < close < _INF:
                return None
            closes.append(close)
        closes.append(last)
        log = math.log
        returns = [log(b / a) for a, b in itertools.pairwise(closes)]
        kept.clear()
        kept.extend(returns)
        self._fx_end, self._fx_last = t, last
        return returns

    def _drop_caches(self) -> None:
        self._rho_cache = {}
        self._run, self._run_end = [], None
        self._fx_kept.clear()
        self._fx_end, self._fx_last = None, 0.0

    def _prune(self, t0: int) -> None:
        """Forget cached rhos no later evaluation can read (older than z - 1 windows back)."""
        cache = self._rho_cache
        if len(cache) > 2 * self._z:
            oldest = t0 - (self._z - 1) * self._w
            for t in [t for t in cache if t < oldest]:
                del cache[t]

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state (no NaN: only valid closes and returns are kept)."""
        return {
            "sym_returns": list(self._sym_returns),
            "last_close": self._last_close,
            "close_end": self._close_end,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a `snapshot()`."""
        self._sym_returns = deque(
            (float(v) for v in state["sym_returns"]), maxlen=self._p + self._z - 1
        )
        last_close = state["last_close"]
        self._last_close = None if last_close is None else float(last_close)
        close_end = state["close_end"]
        self._close_end = None if close_end is None else int(close_end)
        self._drop_caches()

    def reset(self) -> None:
        """Forget everything, as a fresh instance."""
        self._sym_returns.clear()
        self._last_close = None
        self._close_end = None
        self._drop_caches()


def correlation_state_params(ctx: FamilyContext) -> dict[str, Any]:
    """The lengths of the saved runs (p returns, z rhos), the spacing that makes bars adjacent,
    and the FX series the saved rhos were computed against."""
    return {
        "rho_period": ctx.bundle.windows.rho_period,
        "rho_z_period": ctx.bundle.windows.rho_z_period,
        "window_ms": ctx.window_ms,
        "fx_symbol": ctx.bundle.rho.fx_symbol,
    }


CORRELATION_FAMILY = FeatureFamily(
    name="correlation",
    features=CORRELATION_FEATURES,
    level="wbar",
    batch=correlation_family_batch,
    online=OnlineCorrelationFamily,
    state_version=2,
    state_params=correlation_state_params,
)
