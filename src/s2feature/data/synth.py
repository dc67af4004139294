"""Seeded derivations from real klines: finer bars, book and funding fields, S1 stream events.

The real data is hourly OHLCV only, while the service consumes 1-minute bars with book fields and
funding, carried by S1 stream events. Every function here is a deterministic function of its input
bars and a seed (numpy `Generator(PCG64(seed))`); it never alters a real value, and the docs of
each function say which outputs are real and which are derived.

* `derive_finer_bars` splits each bar into `interval / base_ms_out` sub-bars along a Brownian
  bridge from the bar's open to its close, pinned so that it touches exactly the real high and low
  (at random sub-bars, or at the open/close when the extreme is the open/close). Path points are
  clipped into [low, high], and each sub-bar gets small wicks clipped the same way, so aggregating
  the sub-bars gives back the real open, high, low and close bit for bit. Volume is split by random
  weights (heavier in sub-bars with a wider range) through cumulative fractions whose last one is
  exactly 1, so the parts are non-negative and sum to the real volume up to float rounding (a zero
  volume splits into zeros). Flat bars stay flat. Sub-bars come out like imported klines:
  `mid = close`, other tick fields NaN.
* `derive_ticks` fills the as-of tick fields of each bar: `mid = close`; a half-spread drawn
  per bar, lognormal with a median of 1 bps, widened by the bar's range (`x (1 + range_bps / 50)`)
  and kept within [0.05, 50] bps; `best_bid/best_ask = mid * (1 -/+ half_spread)`; top-of-book
  depth from the bar's traded notional per minute (`1e6 * sqrt(notional_per_min / 5e4)` with
  lognormal noise, clipped to [2e5, 5e6] USDT, so an hour without trades has a thin book, not
  none); a bid share of that depth drawn from Beta(4, 4), turned into bid/ask quantities; and for
  `fut` a `funding_next` that mean-reverts around 1e-4 (an AR(1) per bar with a 3-day time
  constant and a stationary standard deviation of 1e-4); spot bars get NaN funding.
* `events_from_bars` writes SPEC §3 stream entries whose assembly gives back exactly the given
  bars. Each bar gets `events_per_bar` events at strictly increasing ts in
  [open_time, close_time], each carrying the bar's kline *so far*: the running high/low grow to
  the real ones, the close follows a bridge to the real close, the volume accumulates to the real
  volume. The last event of the bar carries the final kline and the bar's exact tick values;
  earlier ones carry a mid equal to the partial close, bid/ask at the bar's spread ratios, and a
  depth jittered around the bar's. Funding is the bar's on all of its events. `source` is the
  series' venue. A bar is final only once the next bar's first event (ts > close_time) arrives, so
  **the last bar of the list stays open**: append one more bar to have it finalised.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from numpy.random import PCG64, Generator
from scipy.signal import lfilter

from s2feature.domain import BarArrays, SeriesId

__all__ = ["derive_finer_bars", "derive_ticks", "events_from_bars"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_BRIDGE_SCALE = 0.5  # bridge step std as a fraction of range / sqrt(sub-bars): paths mostly inside
_FUNDING_MEAN = 1e-4
_FUNDING_STD = 1e-4
_FUNDING_TAU_MS = 3 * 86_400_000


def derive_finer_bars(bars: BarArrays, base_ms_out: int, seed: int) -> BarArrays:
    """Split every bar into sub-bars of `base_ms_out` ms that aggregate back to it exactly."""
    n = len(bars)
    if base_ms_out <= 0:
        raise ValueError(f"base_ms_out must be positive, got {base_ms_out}")
    if n == 0:
        none = np.empty(0)
        return _kline_bars(bars.open_time, base_ms_out, none, none, none, none, none)
    span = _single_interval(bars)
    if span % base_ms_out or np.any(bars.open_time % base_ms_out):
        raise ValueError(f"bars of {span} ms cannot be split on a {base_ms_out} ms grid")
    o, h, lo, c, v = bars.open, bars.high, bars.low, bars.close, bars.volume
    if np.any(h < np.maximum(o, c)) or np.any(lo > np.minimum(o, c)):
        raise ValueError("bars violate low <= min(open, close) <= max(open, close) <= high")
    k = span // base_ms_out
    open_time = (bars.open_time[:, None] + np.arange(k, dtype=np.int64) * base_ms_out).ravel()
    if k == 1:
        return _kline_bars(open_time, base_ms_out, o, h, lo, c, v)
    rng = Generator(PCG64(seed))
    path, high_at, low_at = _pinned_bridge(rng, o, h, lo, c, k)
    sub_open, sub_close = path[:, :-1], path[:, 1:]
    sigma = (_BRIDGE_SCALE * (h - lo) / np.sqrt(k))[:, None]
    wick_up = np.abs(rng.standard_normal((n, k))) * sigma * 0.5
    wick_down = np.abs(rng.standard_normal((n, k))) * sigma * 0.5
    sub_high = np.minimum(h[:, None], np.maximum(sub_open, sub_close) + wick_up)
    sub_low = np.maximum(lo[:, None], np.minimum(sub_open, sub_close) - wick_down)
    rows = np.arange(n)
    # The sub-bar next to a pinned path point already reaches the extreme; setting it explicitly
    # also covers the one case with no free point to pin (both extremes inside and k == 2).
    sub_high[rows, np.minimum(high_at, k - 1)] = h
    sub_low[rows, np.minimum(low_at, k - 1)] = lo
    weights = rng.gamma(2.0, 1.0, (n, k))
    bar_range = np.where(h > lo, h - lo, 1.0)[:, None]
    weights *= 0.25 + (sub_high - sub_low) / bar_range
    sub_volume = _split_exactly(v, weights)
    return _kline_bars(
        open_time,
        base_ms_out,
        sub_open.ravel(),
        sub_high.ravel(),
        sub_low.ravel(),
        sub_close.ravel(),
        sub_volume.ravel(),
    )


def derive_ticks(
    bars: BarArrays, seed: int, market: Literal["fut", "spot"], depth_split: bool = False
) -> BarArrays:
    """Bars with derived as-of tick fields (`mid = close`); OHLCV and times are kept as they are.

    `depth_split` marks the depth as coming from split bid/ask depth (events then carry
    `depth_bid_usdt`/`depth_ask_usdt` summing exactly to `depth_top1_usdt`).
    """
    if market not in ("fut", "spot"):
        raise ValueError(f"market must be fut or spot, got {market!r}")
    n = len(bars)
    rng = Generator(PCG64(seed))
    close = bars.close
    range_bps = (bars.high - bars.low) / close * 1e4
    half_spread = np.clip(np.exp(rng.normal(0.0, 0.35, n)) * (1 + range_bps / 50), 0.05, 50.0)
    best_bid = close * (1 - half_spread * 1e-4)
    best_ask = close * (1 + half_spread * 1e-4)
    minutes = (bars.close_time - bars.open_time + 1) / 60_000
    notional_per_min = bars.volume * close / minutes
    noise = np.exp(rng.normal(0.0, 0.3, n))
    depth = np.clip(1e6 * np.sqrt(notional_per_min / 5e4) * noise, 2e5, 5e6)
    bid_share = rng.beta(4.0, 4.0, n)
    funding = np.full(n, np.nan)
    if market == "fut" and n:
        funding = _funding_series(rng, n, int(np.median(bars.close_time - bars.open_time)) + 1)
    return replace(
        bars,
        mid=close.copy(),
        best_bid=best_bid,
        best_ask=best_ask,
        depth_top1_usdt=depth,
        depth_split=np.full(n, depth_split, dtype=np.bool_),
        funding_next=funding,
        bid_qty=bid_share * depth / best_bid,
        ask_qty=(1 - bid_share) * depth / best_ask,
    )


def events_from_bars(
    bars: BarArrays,
    series: SeriesId,
    events_per_bar: int,
    seed: int,
    encoding: Literal["flat", "json"] = "flat",
) -> list[dict[str, str]]:
    """S1 stream entries (SPEC §3) whose assembly gives back exactly `bars`; the last stays open.

    Flat encoding: every field a string, `kline` a JSON string. JSON encoding: one field `data`.
    Numbers are written with `repr`, so they decode to the very same floats.
    """
    if encoding not in ("flat", "json"):
        raise ValueError(f"encoding must be flat or json, got {encoding!r}")
    _check_event_inputs(bars, series, events_per_bar)
    n, m = len(bars), events_per_bar
    rng = Generator(PCG64(seed))
    span = bars.close_time - bars.open_time + 1
    # m sorted draws from [0, span - m] plus 0..m-1: strictly increasing offsets in [0, span - 1].
    draws = np.sort(rng.integers(0, (span - m + 1)[:, None], (n, m)), axis=1)
    ts = bars.open_time[:, None] + draws + np.arange(m)
    kline = _partial_klines(rng, bars, m)
    jitter = np.exp(rng.normal(0.0, 0.1, (n, m)))
    jitter[:, -1] = 1.0
    mid = kline["close"].copy()  # a copy: the kline's own close must stay the real one
    mid[:, -1] = bars.mid
    ticks = {
        "mid": mid,
        "best_bid": mid * (bars.best_bid / bars.mid)[:, None],
        "best_ask": mid * (bars.best_ask / bars.mid)[:, None],
        "depth_top1_usdt": bars.depth_top1_usdt[:, None] * jitter,
        "best_bid_qty": bars.bid_qty[:, None] * jitter,
        "best_ask_qty": bars.ask_qty[:, None] * jitter,
    }
    for name, column in (("best_bid", bars.best_bid), ("best_ask", bars.best_ask)):
        ticks[name][:, -1] = column  # the bar's exact as-of values, not a product that rounds
    events = []
    for i in range(n):
        for j in range(m):
            fields = _event_fields(bars, series, i, j, int(ts[i, j]), kline, ticks)
            events.append(_encode(fields, encoding))
    return events


# --- finer bars ----------------------------------------------------------------------------------


def _single_interval(bars: BarArrays) -> int:
    spans = bars.close_time - bars.open_time + 1
    if np.any(spans != spans[0]):
        raise ValueError("bars of different intervals cannot be split together")
    return int(spans[0])


def _pinned_bridge(
    rng: Generator, o: FloatArray, h: FloatArray, lo: FloatArray, c: FloatArray, k: int
) -> tuple[FloatArray, IntArray, IntArray]:
    """Path points 0..k per bar from open to close through the high and the low; where they are."""
    n = len(o)
    # Random draws are made for every bar whether used or not, so the random stream (hence every
    # derived value) does not depend on the data of other bars.
    first_slot = rng.integers(1, k, n)
    if k >= 3:  # two distinct inner points: draw from one fewer and step over the first
        other_slot = rng.integers(1, k - 1, n)
        other_slot += other_slot >= first_slot
    else:
        other_slot = first_slot.copy()
    high_at = np.where(o == h, 0, np.where(c == h, k, first_slot))
    low_at = np.where(o == lo, 0, np.where(c == lo, k, other_slot))
    clash = high_at == low_at  # flat bars, or k == 2 with both extremes inside
    low_pin_time = np.where(clash, high_at, low_at)
    low_pin_value = np.where(clash, h, lo)
    high_first = high_at <= low_pin_time
    pin_times = np.column_stack(
        [
            np.zeros(n, np.int64),
            np.minimum(high_at, low_pin_time),
            np.maximum(high_at, low_pin_time),
            np.full(n, k, np.int64),
        ]
    )
    pin_values = np.column_stack(
        [o, np.where(high_first, h, low_pin_value), np.where(high_first, low_pin_value, h), c]
    )
    steps = np.arange(k + 1)
    segment = (steps >= pin_times[:, 1:2]).astype(np.int64) + (steps >= pin_times[:, 2:3])
    start = np.take_along_axis(pin_times, segment, axis=1)
    end = np.take_along_axis(pin_times, segment + 1, axis=1)
    length = end - start
    frac = np.where(length > 0, (steps - start) / np.maximum(length, 1), 0.0)
    walk = np.zeros((n, k + 1))
    walk[:, 1:] = np.cumsum(rng.standard_normal((n, k)), axis=1)
    walk_start = np.take_along_axis(walk, start, axis=1)
    walk_end = np.take_along_axis(walk, end, axis=1)
    value_start = np.take_along_axis(pin_values, segment, axis=1)
    value_end = np.take_along_axis(pin_values, segment + 1, axis=1)
    sigma = (_BRIDGE_SCALE * (h - lo) / np.sqrt(k))[:, None]
    noise = walk - walk_start - frac * (walk_end - walk_start)
    path = value_start + frac * (value_end - value_start) + sigma * noise
    path = np.clip(path, lo[:, None], h[:, None])
    # Pinned points are assigned, not computed: interpolation could miss them by one ulp.
    rows = np.arange(n)
    path[:, 0], path[:, k] = o, c
    path[rows, high_at] = h
    path[rows[~clash], low_at[~clash]] = lo[~clash]
    # With no free point for the low (k == 2), a wick of a random sub-bar reaches it instead.
    low_bar = np.where(clash, rng.integers(0, k, n), low_at)
    return path, high_at, low_bar


def _split_exactly(total: FloatArray, weights: FloatArray) -> FloatArray:
    """Non-negative parts of `total` in proportion to `weights`, the last fraction exactly 1."""
    cumulative = np.cumsum(weights, axis=1)
    fractions = cumulative / cumulative[:, -1:]
    fractions[:, -1] = 1.0
    running = total[:, None] * fractions
    return np.diff(running, axis=1, prepend=0.0)


def _kline_bars(
    open_time: IntArray,
    base_ms: int,
    o: FloatArray,
    h: FloatArray,
    lo: FloatArray,
    c: FloatArray,
    v: FloatArray,
) -> BarArrays:
    return BarArrays.from_klines(open_time, base_ms, (o, h, lo, c, v))


# --- ticks ---------------------------------------------------------------------------------------


def _funding_series(rng: Generator, n: int, bar_ms: int) -> FloatArray:
    """AR(1) around the mean: x_i = phi * x_{i-1} + e_i, started from the stationary law."""
    phi = float(np.exp(-bar_ms / _FUNDING_TAU_MS))
    shocks = rng.standard_normal(n) * _FUNDING_STD * np.sqrt(1 - phi**2)
    shocks[0] = rng.standard_normal() * _FUNDING_STD
    deviation = np.asarray(lfilter([1.0], [1.0, -phi], shocks), dtype=np.float64)
    return _FUNDING_MEAN + deviation


# --- events --------------------------------------------------------------------------------------


def _check_event_inputs(bars: BarArrays, series: SeriesId, events_per_bar: int) -> None:
    if events_per_bar < 1:
        raise ValueError(f"events_per_bar must be at least 1, got {events_per_bar}")
    if np.any(bars.close_time - bars.open_time + 1 < events_per_bar):
        raise ValueError(f"a bar is shorter than {events_per_bar} ms: no room for distinct ts")
    if np.any(bars.open_time[1:] <= bars.close_time[:-1]):
        raise ValueError("bars must be ascending and must not overlap")
    required = ["mid", "best_bid", "best_ask", "depth_top1_usdt"]
    if series.market == "fut":
        required.append("funding_next")
    for name in required:
        column = getattr(bars, name)
        if not np.all(np.isfinite(column)) or (name != "funding_next" and np.any(column <= 0)):
            raise ValueError(
                f"bars need finite, positive {name} for events (derive_ticks fills tick fields)"
            )


def _partial_klines(rng: Generator, bars: BarArrays, m: int) -> dict[str, FloatArray]:
    """Kline values so far at each of the m events of every bar; the last column is the final."""
    o, h, lo, c, v = bars.open, bars.high, bars.low, bars.close, bars.volume
    n = len(o)
    frac = (np.arange(m) + 1) / m
    wiggle = rng.standard_normal((n, m)) * np.sqrt(frac * (1 - frac)) * 0.3
    close = np.clip(
        o[:, None] + (c - o)[:, None] * frac + (h - lo)[:, None] * wiggle, lo[:, None], h[:, None]
    )
    close[:, -1] = c
    event = np.arange(m)
    high_reached = event >= rng.integers(0, m, n)[:, None]
    low_reached = event >= rng.integers(0, m, n)[:, None]
    running_high = np.maximum.accumulate(np.maximum(close, o[:, None]), axis=1)
    running_low = np.minimum.accumulate(np.minimum(close, o[:, None]), axis=1)
    high = np.where(high_reached, h[:, None], running_high)
    low = np.where(low_reached, lo[:, None], running_low)
    high[:, -1], low[:, -1] = h, lo
    volume_fraction = np.sort(rng.random((n, m)), axis=1)
    volume_fraction[:, -1] = 1.0
    return {"high": high, "low": low, "close": close, "volume": v[:, None] * volume_fraction}


def _exact_split(total: float, bid_share: float) -> tuple[float, float]:
    """(bid, ask) parts with bid + ask == total exactly in floating point.

    The larger part is at least total / 2, so `total - larger` is exact (Sterbenz) and adding the
    parts back gives `total` with no rounding.
    """
    larger = max(bid_share, 1.0 - bid_share) * total
    smaller = total - larger
    return (larger, smaller) if bid_share >= 0.5 else (smaller, larger)


def _event_fields(
    bars: BarArrays,
    series: SeriesId,
    i: int,
    j: int,
    ts: int,
    kline: dict[str, FloatArray],
    ticks: dict[str, FloatArray],
) -> dict[str, Any]:
    fields: dict[str, Any] = {"ts": ts, "source": series.venue, "symbol": series.symbol}
    for name in ("mid", "best_bid", "best_ask", "depth_top1_usdt"):
        fields[name] = float(ticks[name][i, j])
    if series.market == "fut":
        fields["funding_next"] = float(bars.funding_next[i])
    fields["kline"] = {
        "open": float(bars.open[i]),
        "high": float(kline["high"][i, j]),
        "low": float(kline["low"][i, j]),
        "close": float(kline["close"][i, j]),
        "volume": float(kline["volume"][i, j]),
        "open_time": int(bars.open_time[i]),
        "close_time": int(bars.close_time[i]),
    }
    bid_qty, ask_qty = float(ticks["best_bid_qty"][i, j]), float(ticks["best_ask_qty"][i, j])
    has_quantities = np.isfinite(bid_qty) and np.isfinite(ask_qty)
    if has_quantities:
        fields["best_bid_qty"], fields["best_ask_qty"] = bid_qty, ask_qty
    if bars.depth_split[i]:
        bid_notional, ask_notional = bid_qty * fields["best_bid"], ask_qty * fields["best_ask"]
        share = bid_notional / (bid_notional + ask_notional) if has_quantities else 0.5
        fields["depth_bid_usdt"], fields["depth_ask_usdt"] = _exact_split(
            fields["depth_top1_usdt"], share
        )
    return fields


def _encode(fields: dict[str, Any], encoding: str) -> dict[str, str]:
    # json.dumps writes floats with repr, so both encodings round-trip every float exactly.
    if encoding == "json":
        return {"data": json.dumps(fields)}
    flat = {}
    for name, value in fields.items():
        if name == "kline":
            flat[name] = json.dumps(value)
        else:
            flat[name] = repr(value) if isinstance(value, float) else str(value)
    return flat
