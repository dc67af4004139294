"""Realised volatility (SPEC §5): `rv_4h`, `rv_1d`, `rv_30d`, `rv_pctile_30d`, `regime_label`.

A base-level family. A return `r_i = ln(C_i / C_{i-1})` exists at base bar i only when the
previous base bar is adjacent (`close_time_{i-1} == close_time_i - base_ms`) and both closes are
positive and finite; gaps are never bridged. For a horizon H,

    rv_H(t0) = sqrt(sum(r^2) * (n_expected / n_obs) * (365 days / H))

over the returns whose bar close lies in `(t0 - H, t0]`, with `n_expected = H / base_ms`; null
when `n_obs < coverage_min * n_expected`. `rv_pctile_30d(t0)` is the fraction of the non-null
`rv_1d(b)` samples, one at each hourly boundary `b = k * 1h - 1` in `(t0 - 30d, t0]`, that are
`<= rv_1d(t0)`; null when `rv_1d(t0)` is null or fewer than `coverage_min` of the 720 samples are
non-null. A sample counts as `<=` when it is at most `rv_1d(t0) * (1 + TIE_RTOL)`: values equal
up to the project's float tolerance are ties, so live, restored and recomputed runs, which may
differ in the last bits, count the same samples.

The batch path (`volatility_family_batch`) is written independently of the online class
(`OnlineVolatilityFamily`); each explains its own window arithmetic.
"""

from __future__ import annotations

import base64
import math
from bisect import bisect_right, insort
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from s2feature.compute.family import (
    BatchValues,
    CloseHistory,
    FamilyContext,
    FeatureFamily,
    FloatArray,
    HistoryMismatchError,
    IntArray,
)
from s2feature.compute.rolling import RollingSums
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import DAY_MS, HOUR_MS, Bar, BarArrays, FeatureValue

__all__ = [
    "TIE_RTOL",
    "VOLATILITY_FAMILY",
    "OnlineVolatilityFamily",
    "log_return_squares",
    "min_count",
    "regime_label",
    "volatility_family_batch",
    "window_sums",
]

VOLATILITY_FEATURES = ("rv_4h", "rv_1d", "rv_30d", "rv_pctile_30d", "regime_label")
HORIZON_MS: Mapping[str, int] = {"rv_4h": 4 * HOUR_MS, "rv_1d": DAY_MS, "rv_30d": 30 * DAY_MS}
YEAR_MS = 365 * DAY_MS
PCTILE_SPAN_MS = 30 * DAY_MS
PCTILE_SAMPLES = PCTILE_SPAN_MS // HOUR_MS  # 720 hourly boundaries
TIE_RTOL = 1e-9


def min_count(coverage_min: float, expected: int) -> int:
    """Smallest count that is not `< coverage_min * expected` (at least 1).

    The `1e-9` absorbs float noise in the product, so exactly 90% of 10 needs 9, not 10.
    """
    return max(1, math.ceil(coverage_min * expected - 1e-9))


def regime_label(pctile: float | None, frozen_below: float, extreme_above: float) -> str | None:
    """The shadow regime label of a percentile: FROZEN below, EXTREME above, else NORMAL."""
    if pctile is None:
        return None
    if pctile < frozen_below:
        return "FROZEN"
    if pctile > extreme_above:
        return "EXTREME"
    return "NORMAL"


@dataclass(frozen=True)
class _Horizon:
    name: str
    span_ms: int
    expected: int
    min_obs: int
    annualisation: float

    def rv(self, total: float, observed: int) -> float | None:
        if observed < self.min_obs:
            return None
        return math.sqrt(total * (self.expected / observed) * self.annualisation)


def _horizons(bundle: ConfigBundle, base_ms: int) -> tuple[_Horizon, ...]:
    out = []
    for name, span in HORIZON_MS.items():
        if span % base_ms:
            raise ValueError(f"{name}: base interval {base_ms} ms does not divide {span} ms")
        expected = span // base_ms
        minimum = min_count(bundle.windows.coverage_min, expected)
        out.append(_Horizon(name, span, expected, minimum, YEAR_MS / span))
    return tuple(out)


# ---------------------------------------------------------------------------------------- batch


def log_return_squares(
    close_time: IntArray, close: FloatArray, base_ms: int
) -> tuple[IntArray, FloatArray]:
    """`(close_time_i, r_i^2)` for every bar whose return exists (adjacent, valid closes)."""
    close_time = np.asarray(close_time, dtype=np.int64)
    close = np.asarray(close, dtype=np.float64)
    previous, current = close[:-1], close[1:]
    valid = (np.diff(close_time) == base_ms) & (previous > 0.0) & (current > 0.0)
    valid &= np.isfinite(previous) & np.isfinite(current)
    returns = np.log(current[valid] / previous[valid])
    return close_time[1:][valid], returns * returns


def _run_scan(values: FloatArray, runs: IntArray) -> FloatArray:
    """Inclusive prefix sums inside each run of equal `runs` labels (Hillis-Steele doubling).

    Only non-negative partial sums are ever added, so nothing cancels, and each output depends
    on its own run's elements up to it only, in a fixed order: causal and exact under changes
    elsewhere.
    """
    n = len(values)
    out = np.array(values, dtype=np.float64, copy=True)
    if n == 0:
        return out
    starts = np.flatnonzero(np.r_[True, runs[1:] != runs[:-1]])
    position = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    step = 1
    longest = int(position.max())
    while step <= longest:
        out[step:] += np.where(position[step:] >= step, out[:-step], 0.0)
        step *= 2
    return out


def window_sums(
    times: IntArray, values: FloatArray, t0s: IntArray, span_ms: int
) -> tuple[FloatArray, IntArray]:
    """Sum and count of the `values` whose time lies in `(t0 - span_ms, t0]`, for each t0.

    `times` must be sorted. A cumulative-sum difference would lose all relative precision when
    a huge value has left the window and tiny ones remain. Instead time is cut into blocks
    `[k * span, (k + 1) * span)`: the window `(t0 - span, t0]` is the tail of block `t0 // span
    - 1` plus the head of block `t0 // span`, read from a backward and a forward scan within
    blocks. Counts are integer index differences.
    """
    times = np.asarray(times, dtype=np.int64)
    t0s = np.asarray(t0s, dtype=np.int64)
    sums = np.zeros(len(t0s), dtype=np.float64)
    lo = np.searchsorted(times, t0s - span_ms, side="right")
    hi = np.searchsorted(times, t0s, side="right") - 1
    counts = np.maximum(hi - lo + 1, 0)
    if len(times) == 0:
        return sums, counts
    block = times // span_ms
    forward = _run_scan(values, block)
    backward = _run_scan(values[::-1], block[::-1])[::-1]
    present = counts > 0
    first = np.clip(lo, 0, len(times) - 1)
    last = np.clip(hi, 0, len(times) - 1)
    current = t0s // span_ms
    tail = present & (block[first] == current - 1)
    head = present & (block[last] == current)
    sums[tail] += backward[first[tail]]
    sums[head] += forward[last[head]]
    return sums, counts


def _rv_batch(times: IntArray, squares: FloatArray, t0s: IntArray, horizon: _Horizon) -> FloatArray:
    sums, counts = window_sums(times, squares, t0s, horizon.span_ms)
    out = np.full(len(t0s), np.nan)
    ok = counts >= horizon.min_obs
    out[ok] = np.sqrt(sums[ok] * (horizon.expected / counts[ok]) * horizon.annualisation)
    return out


def _covering_hours(last_hours: IntArray) -> IntArray:
    """Sorted union of the 720-hour ranges `[h - 719, h]` for every h (h sorted, unique)."""
    if len(last_hours) == 0:
        return last_hours
    first_hours = last_hours - (PCTILE_SAMPLES - 1)
    new_run = np.r_[True, first_hours[1:] > last_hours[:-1] + 1]
    run_first = first_hours[new_run]
    run_last = last_hours[np.r_[new_run[1:], True]]
    lengths = run_last - run_first + 1
    offsets = np.repeat(run_first - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
    hours: IntArray = offsets + np.arange(int(lengths.sum()), dtype=np.int64)
    return hours


def _pctile_batch(
    times: IntArray,
    squares: FloatArray,
    t0s: IntArray,
    rv_now: FloatArray,
    day: _Horizon,
    min_samples: int,
) -> FloatArray:
    # Sample boundaries b = h * 1h - 1; those in (t0 - 30d, t0] are h in [h_last - 719, h_last].
    last_hour = (t0s + 1) // HOUR_MS
    hours = _covering_hours(np.unique(last_hour))
    samples = _rv_batch(times, squares, hours * HOUR_MS - 1, day)
    window_start = np.searchsorted(hours, last_hour - (PCTILE_SAMPLES - 1))
    known = np.r_[0, np.cumsum(~np.isnan(samples))]
    n_known = known[window_start + PCTILE_SAMPLES] - known[window_start]
    out = np.full(len(t0s), np.nan)
    wanted = np.flatnonzero(~np.isnan(rv_now) & (n_known >= min_samples))
    if len(wanted) == 0:
        return out
    windows = sliding_window_view(samples, PCTILE_SAMPLES)
    limit = rv_now[wanted] * (1.0 + TIE_RTOL)
    # Many t0s share one 720-sample window (every 1m t0 of an hour): sort each distinct window
    # once (NaN sorts last, so it is never counted) and binary-search all of its t0s at once.
    starts = window_start[wanted]
    order = np.argsort(starts, kind="stable")
    distinct, first = np.unique(starts[order], return_index=True)
    bounds = np.r_[first, len(order)]
    at_most = np.empty(len(wanted))
    for g, start in enumerate(distinct.tolist()):
        members = order[bounds[g] : bounds[g + 1]]
        ranked = np.sort(windows[start])
        at_most[members] = np.searchsorted(ranked, limit[members], side="right")
    out[wanted] = at_most / n_known[wanted]
    return out


def _labels_batch(
    pctile: FloatArray, frozen_below: float, extreme_above: float
) -> npt.NDArray[np.object_]:
    labels = np.full(len(pctile), None, dtype=object)
    labels[pctile < frozen_below] = "FROZEN"
    labels[pctile > extreme_above] = "EXTREME"
    labels[(pctile >= frozen_below) & (pctile <= extreme_above)] = "NORMAL"
    return labels  # NaN compares false everywhere, so a null percentile keeps None


def volatility_family_batch(bars: BarArrays, t0s: IntArray, ctx: FamilyContext) -> BatchValues:
    """The five features at each t0 (sorted), from base bars with close <= t0."""
    t0s = np.asarray(t0s, dtype=np.int64)
    if np.any(np.diff(bars.close_time) <= 0):
        raise ValueError("base bars must have strictly increasing close times")
    horizons = _horizons(ctx.bundle, ctx.base_ms)
    times, squares = log_return_squares(bars.close_time, bars.close, ctx.base_ms)
    out: BatchValues = {h.name: _rv_batch(times, squares, t0s, h) for h in horizons}
    day = next(h for h in horizons if h.name == "rv_1d")
    min_samples = min_count(ctx.bundle.windows.coverage_min, PCTILE_SAMPLES)
    pctile = _pctile_batch(times, squares, t0s, out["rv_1d"], day, min_samples)
    regime = ctx.bundle.regime
    out["rv_pctile_30d"] = pctile
    out["regime_label"] = _labels_batch(pctile, regime.frozen_below, regime.extreme_above)
    return out


# --------------------------------------------------------------------------------------- online


class OnlineVolatilityFamily:
    """The volatility family fed base bars one at a time (`OnlineFamily`).

    Hourly `rv_1d` samples are taken as time passes each boundary, before any later bar is
    added, so a boundary inside a gap sees exactly the bars closed by then.
    """

    def __init__(self, ctx: FamilyContext) -> None:
        self._base_ms = ctx.base_ms
        self._horizons = _horizons(ctx.bundle, ctx.base_ms)
        self._day_index = next(i for i, h in enumerate(self._horizons) if h.name == "rv_1d")
        self._min_samples = min_count(ctx.bundle.windows.coverage_min, PCTILE_SAMPLES)
        self._frozen_below = ctx.bundle.regime.frozen_below
        self._extreme_above = ctx.bundle.regime.extreme_above
        # One series of squared returns, one window per horizon over it.
        self._sums = RollingSums([h.span_ms for h in self._horizons])
        self._samples: deque[tuple[int, float]] = deque()  # non-null (boundary, rv_1d)
        self._sorted: list[float] = []
        # The samples as `checkpoint` writes them, for the samples they were made of (see
        # `_packed_samples`); `_generation` counts resets.
        self._packed: tuple[tuple[int, int, int, int], list[list[int]], str] | None = None
        self._generation = 0
        self.reset()

    def reset(self) -> None:
        self._generation += 1
        self._sums.reset()
        self._samples.clear()
        self._sorted.clear()
        self._previous_close_time: int | None = None
        self._previous_close = math.nan
        self._next_hour: int | None = None  # next boundary to sample is next_hour * 1h - 1
        self._seen_until = -(2**62)  # latest bar close or t0: time never goes back past it

    def update(self, bar: Bar) -> None:
        close_time, close = bar.close_time, bar.close
        if close_time <= self._seen_until:
            raise ValueError(f"bar closing at {close_time} is not after {self._seen_until}")
        if self._next_hour is None:
            self._next_hour = -(-(close_time + 1) // HOUR_MS)
        else:
            self._advance(close_time - 1)  # every bar closed by then is in
        previous = self._previous_close
        if (
            self._previous_close_time == close_time - self._base_ms
            and previous > 0.0
            and 0.0 < close < math.inf
            and previous < math.inf
        ):
            # numpy's logarithm, not `math.log`: the restore derives these values again from
            # the lake in one vectorised call, which must give them back bit for bit.
            log_return = float(np.log(close / previous))
            self._sums.add(close_time, log_return * log_return)
        self._previous_close_time, self._previous_close = close_time, close
        self._seen_until = close_time

    def values_at(self, t0: int) -> dict[str, FeatureValue]:
        if t0 < self._seen_until:
            raise ValueError(f"t0 {t0} precedes {self._seen_until}")
        self._seen_until = t0
        self._advance(t0)
        out: dict[str, FeatureValue] = {}
        sums = self._sums
        for index, horizon in enumerate(self._horizons):
            out[horizon.name] = horizon.rv(sums.total(index), sums.count(index))
        now = out["rv_1d"]
        pctile = None
        if isinstance(now, float) and len(self._sorted) >= self._min_samples:
            at_most = bisect_right(self._sorted, now * (1.0 + TIE_RTOL))
            pctile = at_most / len(self._sorted)
        out["rv_pctile_30d"] = pctile
        out["regime_label"] = regime_label(pctile, self._frozen_below, self._extreme_above)
        return out

    def _advance(self, now: int) -> None:
        """Take the samples due at boundaries <= now, then slide every window to now."""
        next_hour = self._next_hour
        if next_hour is not None:
            last_hour = (now + 1) // HOUR_MS
            if last_hour >= next_hour:
                # Boundaries more than 720 hours back fall out of every window still to come.
                for hour in range(max(next_hour, last_hour - PCTILE_SAMPLES + 1), last_hour + 1):
                    self._take_sample(hour * HOUR_MS - 1)
                self._next_hour = last_hour + 1
        self._sums.advance(now)
        samples, horizon = self._samples, now - PCTILE_SPAN_MS
        while samples and samples[0][0] <= horizon:
            _, value = samples.popleft()
            del self._sorted[bisect_right(self._sorted, value) - 1]

    def _take_sample(self, boundary: int) -> None:
        sums, day = self._sums, self._day_index
        sums.advance_one(day, boundary)
        value = self._horizons[day].rv(sums.total(day), sums.count(day))
        if value is not None:
            self._samples.append((boundary, value))
            insort(self._sorted, value)

    def snapshot(self) -> dict[str, Any]:
        return {
            "sums": self._sums.snapshot(),
            "samples": [[boundary, value] for boundary, value in self._samples],
            "previous_close_time": self._previous_close_time,
            "previous_close": None if math.isnan(self._previous_close) else self._previous_close,
            "next_hour": self._next_hour,
            "seen_until": self._seen_until,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.reset()
        self._sums.restore(state["sums"])
        self._samples.extend((int(b), float(v)) for b, v in state["samples"])
        self._sorted.extend(sorted(v for _, v in self._samples))
        previous_time, previous = state["previous_close_time"], state["previous_close"]
        self._previous_close_time = None if previous_time is None else int(previous_time)
        self._previous_close = math.nan if previous is None else float(previous)
        next_hour = state["next_hour"]
        self._next_hour = None if next_hour is None else int(next_hour)
        self._seen_until = int(state["seen_until"])

    # -- the compact state of a checkpoint: what the lake's base bars do not hold ---------------

    def history_ms(self) -> int:
        """How far before the newest bar `restore_from_history` needs base bars: the longest
        window, plus the bar before its first return."""
        return max(h.span_ms for h in self._horizons) + 2 * self._base_ms

    def checkpoint(self) -> dict[str, Any]:
        """The state without the squared returns, which are a function of the base bars: each
        window's running total (path-dependent in its last bits, so saved), count and time
        span; the hourly `rv_1d` samples (running totals too), in binary; the previous bar."""
        sample_hours, sample_values = self._packed_samples()
        return {
            "sums": self._sums.running(),
            "sample_hours": sample_hours,
            "sample_values": sample_values,
            "previous_close_time": self._previous_close_time,
            "previous_close": None if math.isnan(self._previous_close) else self._previous_close,
            "next_hour": self._next_hour,
            "seen_until": self._seen_until,
        }

    def _packed_samples(self) -> tuple[list[list[int]], str]:
        """The samples' hours as runs and their values packed, made again only when the samples
        changed: they change once an hour, and a symbol checkpoints every few seconds (packing
        720 samples was a third of the time the service's loop spent on a checkpoint). Between
        resets samples are only appended (later boundaries) and dropped from the front (the
        oldest), so their count, first and last boundary tell whether they changed."""
        samples = self._samples
        if not samples:
            return [], _pack_floats([])
        key = (self._generation, len(samples), samples[0][0], samples[-1][0])
        if self._packed is None or self._packed[0] != key:
            hours = [(boundary + 1) // HOUR_MS for boundary, _ in samples]
            values = _pack_floats([value for _, value in samples])
            self._packed = (key, _runs(hours), values)
        return self._packed[1], self._packed[2]

    def restore_from_history(self, state: Mapping[str, Any], history: CloseHistory) -> None:
        """Continue from `checkpoint()` and the base bars up to the newest one it had seen (at
        least `history_ms` of them): the squared returns are derived again exactly as `update`
        derived them. Raises `HistoryMismatchError` when the bars do not give back the windows
        saved (a lake that lost or changed bars): the caller rebuilds the family instead."""
        times, squares = _squared_returns(history.close_time, history.close, self._base_ms)
        hours = _unruns(state["sample_hours"])
        values = _unpack_floats(state["sample_values"])
        if len(hours) != len(values):
            raise ValueError(f"{len(hours)} sample hours for {len(values)} sample values")
        self.reset()
        try:
            self._sums.restore_running(state["sums"], times, squares)
        except ValueError as exc:
            raise HistoryMismatchError(str(exc)) from exc
        self._samples.extend((h * HOUR_MS - 1, v) for h, v in zip(hours, values, strict=True))
        self._sorted.extend(sorted(values))
        previous_time, previous = state["previous_close_time"], state["previous_close"]
        self._previous_close_time = None if previous_time is None else int(previous_time)
        self._previous_close = math.nan if previous is None else float(previous)
        next_hour = state["next_hour"]
        self._next_hour = None if next_hour is None else int(next_hour)
        self._seen_until = int(state["seen_until"])

    def warm_start(self, history: CloseHistory) -> None:
        """Start over as if `history` (base bars, oldest first) had been fed and the values read
        at its last close, in one vectorised pass: the windows' totals are exact sums and the
        hourly samples are computed by the batch kernel, so they may differ from a bar-by-bar
        run in their last bits (far inside the 1e-9 agreement of online and batch)."""
        self.reset()
        if len(history.close_time) == 0:
            return
        times, squares = _squared_returns(history.close_time, history.close, self._base_ms)
        now = int(history.close_time[-1])
        self._sums.fill(times, squares, now)
        first_hour = -(-(int(history.close_time[0]) + 1) // HOUR_MS)
        last_hour = (now + 1) // HOUR_MS
        oldest = max(first_hour, last_hour - PCTILE_SAMPLES + 1)
        hours = np.arange(oldest, last_hour + 1, dtype=np.int64)
        boundaries = hours * HOUR_MS - 1
        boundaries = boundaries[boundaries > now - PCTILE_SPAN_MS]
        day = self._horizons[self._day_index]
        samples = _rv_batch(np.asarray(times, dtype=np.int64), np.asarray(squares), boundaries, day)
        known = ~np.isnan(samples)
        kept = list(zip(boundaries[known].tolist(), samples[known].tolist(), strict=True))
        self._samples.extend(kept)
        self._sorted.extend(sorted(value for _, value in kept))
        self._previous_close_time = now
        self._previous_close = float(history.close[-1])
        self._next_hour = max(first_hour, last_hour + 1)
        self._seen_until = now


def _squared_returns(
    close_time: IntArray, close: FloatArray, base_ms: int
) -> tuple[IntArray, FloatArray]:
    """`(close_time_i, r_i^2)` of every bar whose return exists, with the online arithmetic, so
    the values equal those `update` added bit for bit: the ratio and the square are single IEEE
    operations (correctly rounded, in numpy as in Python), and the logarithm is numpy's in both
    (`update` calls it on one value: the same kernel as on an array, whereas `math.log` differs
    from it in the last bit of a few percent of values)."""
    close_time = np.asarray(close_time, dtype=np.int64)
    close = np.asarray(close, dtype=np.float64)
    if len(close) < 2:
        return close_time[:0], close[:0]
    previous, current = close[:-1], close[1:]
    with np.errstate(invalid="ignore"):
        valid = (np.diff(close_time) == base_ms) & (previous > 0.0) & (current > 0.0)
        valid &= (current < math.inf) & (previous < math.inf)
    logs = np.log(current[valid] / previous[valid])
    return close_time[1:][valid], logs * logs


def _runs(hours: list[int]) -> list[list[int]]:
    """Ascending integers as `[first, length]` runs of consecutive ones."""
    runs: list[list[int]] = []
    for hour in hours:
        if runs and runs[-1][0] + runs[-1][1] == hour:
            runs[-1][1] += 1
        else:
            runs.append([hour, 1])
    return runs


def _unruns(runs: Any) -> list[int]:
    return [int(first) + k for first, length in runs for k in range(int(length))]


def _pack_floats(values: list[float]) -> str:
    """Floats as base64 of little-endian IEEE doubles: exact, and 11 characters a value."""
    return base64.b64encode(np.asarray(values, dtype="<f8").tobytes()).decode("ascii")


def _unpack_floats(text: Any) -> list[float]:
    values: list[float] = np.frombuffer(base64.b64decode(str(text)), dtype="<f8").tolist()
    return values


def volatility_state_params(ctx: FamilyContext) -> dict[str, Any]:
    """The base interval (which bars are adjacent, expected counts) and `coverage_min`, which
    decides which hourly `rv_1d` samples were non-null and so were kept. The horizons are fixed
    by the code (covered by the version); the regime thresholds apply at output."""
    return {"base_ms": ctx.base_ms, "coverage_min": ctx.bundle.windows.coverage_min}


VOLATILITY_FAMILY = FeatureFamily(
    name="volatility",
    features=VOLATILITY_FEATURES,
    level="base",
    batch=volatility_family_batch,
    online=OnlineVolatilityFamily,
    state_version=1,
    state_params=volatility_state_params,
)
