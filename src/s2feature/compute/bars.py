"""Aggregation of base bars into w-bars aligned to UTC epoch multiples of the window (SPEC §3).

A w-bar is final when its last base bar is final, or when a base bar of a later w-period arrives
(a gap: the w-bar is finalised with the base bars it has; `n_base` says how many). Its close time
is always the nominal one, `open_time + w - 1`, and its tick values are those of its last base bar.

`WBarBuilder` is the online path, `aggregate_wbars` the independent batch path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from s2feature.domain import BAR_FLOAT_FIELDS, Bar, BarArrays

_BAR_FIELDS = tuple(Bar.__dataclass_fields__)  # the constructor's positional order
# Float fields that are None, not NaN, in a `Bar` when the input never carried them.
_OPTIONAL_FLOATS = frozenset(BAR_FLOAT_FIELDS) - {"open", "high", "low", "close", "volume"}


def bars_of(arrays: BarArrays) -> list[Bar]:
    """`arrays.to_bars()`, a column at a time: each column becomes Python values in one call
    (NaN of a tick field becomes None), rather than every value being read from numpy on its
    own. A warm-up turns some 1,600 base bars and w-bars a symbol into `Bar`s: a third of the
    time."""
    columns = []
    for name in _BAR_FIELDS:
        values = getattr(arrays, name).tolist()
        if name in _OPTIONAL_FLOATS:
            values = [None if value != value else value for value in values]  # NaN != NaN
        columns.append(values)
    return [Bar(*row) for row in zip(*columns, strict=True)]


@dataclass(slots=True)  # a value, not frozen: see domain.Bar
class FinalWBar:
    bar: Bar
    inputs_until: int  # close time of the last base bar it holds (<= bar.close_time)


class WBarBuilder:
    """Builds the w-bars of one window from base bars fed in time order.

    The open w-bar is kept as plain accumulators and a `Bar` is built only when it is final:
    this runs for every base bar and every window, so it must stay cheap.
    """

    def __init__(self, window_ms: int, base_ms: int) -> None:
        if window_ms % base_ms:
            raise ValueError(f"window {window_ms} ms is not a multiple of the base {base_ms} ms")
        self.window_ms = window_ms
        self.base_ms = base_ms
        self._reset_open()

    def _reset_open(self) -> None:
        self._start = -1  # open time of the open w-bar; -1 when none is open
        self._open = self._high = self._low = self._volume = 0.0
        self._jumps = self._n = 0
        self._last: Bar | None = None  # last base bar added: close and as-of ticks

    def close_before(self, base: Bar) -> FinalWBar | None:
        """Finalise the open w-bar when `base` belongs to a later w-period (the gap case)."""
        if self._start < 0 or base.open_time < self._start + self.window_ms:
            return None
        return self._finalise()

    def add(self, base: Bar) -> FinalWBar | None:
        """Add a base bar of the open w-period; return the w-bar if this base bar completes it."""
        if self.window_ms == self.base_ms:
            return FinalWBar(base, base.close_time)  # the base bar is the w-bar
        if self._start < 0:
            self._start = base.open_time - base.open_time % self.window_ms
            self._open, self._high, self._low = base.open, base.high, base.low
            self._volume, self._jumps, self._n = base.volume, base.jump_count, 1
        else:
            self._high = max(self._high, base.high)
            self._low = min(self._low, base.low)
            self._volume += base.volume
            self._jumps += base.jump_count
            self._n += 1
        self._last = base
        if base.close_time == self._start + self.window_ms - 1:
            return self._finalise()
        return None

    def _finalise(self) -> FinalWBar:
        last = self._last
        assert last is not None  # an open w-bar always holds at least one base bar
        bar = Bar(
            open_time=self._start,
            close_time=self._start + self.window_ms - 1,
            open=self._open,
            high=self._high,
            low=self._low,
            close=last.close,
            volume=self._volume,
            mid=last.mid,
            best_bid=last.best_bid,
            best_ask=last.best_ask,
            depth_top1_usdt=last.depth_top1_usdt,
            depth_split=last.depth_split,
            funding_next=last.funding_next,
            bid_qty=last.bid_qty,
            ask_qty=last.ask_qty,
            jump_count=self._jumps,
            n_base=self._n,
        )
        self._reset_open()
        return FinalWBar(bar, last.close_time)

    def snapshot(self) -> dict[str, Any]:
        return {
            "start": self._start,
            "ohlv": [self._open, self._high, self._low, self._volume],
            "jumps": self._jumps,
            "n": self._n,
            "last": None if self._last is None else asdict(self._last),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self._start = int(state["start"])
        self._open, self._high, self._low, self._volume = (float(v) for v in state["ohlv"])
        self._jumps, self._n = int(state["jumps"]), int(state["n"])
        self._last = None if state["last"] is None else Bar(**state["last"])


def aggregate_wbars(base: BarArrays, window_ms: int) -> tuple[BarArrays, np.ndarray]:
    """All final w-bars of a base-bar series, and the close time of each one's last base bar.

    The last w-period is left out unless its final base bar is present: online it would still be
    open, waiting for the bar (or a later one) that finalises it.
    """
    n = len(base)
    if n == 0:
        return base, np.empty(0, dtype=np.int64)
    period = base.open_time // window_ms
    starts = np.flatnonzero(np.r_[True, period[1:] != period[:-1]])
    ends = np.r_[starts[1:], n] - 1
    open_time = period[starts] * window_ms
    close_time = open_time + window_ms - 1
    if base.close_time[ends[-1]] != close_time[-1]:
        starts, ends, open_time, close_time = (
            starts[:-1],
            ends[:-1],
            open_time[:-1],
            close_time[:-1],
        )
    if len(starts) == 0:
        return base.slice(0, 0), np.empty(0, dtype=np.int64)
    last = ends
    stop = int(ends[-1]) + 1  # reduceat runs each group to the next start, the last one to here
    bars = BarArrays(
        open_time=open_time.astype(np.int64),
        close_time=close_time.astype(np.int64),
        open=base.open[starts],
        high=np.maximum.reduceat(base.high[:stop], starts),
        low=np.minimum.reduceat(base.low[:stop], starts),
        close=base.close[last],
        volume=np.add.reduceat(base.volume[:stop], starts),
        mid=base.mid[last],
        best_bid=base.best_bid[last],
        best_ask=base.best_ask[last],
        depth_top1_usdt=base.depth_top1_usdt[last],
        depth_split=base.depth_split[last],
        funding_next=base.funding_next[last],
        bid_qty=base.bid_qty[last],
        ask_qty=base.ask_qty[last],
        jump_count=np.add.reduceat(base.jump_count[:stop], starts),
        n_base=(last - starts + 1).astype(np.int64),
    )
    return bars, base.close_time[last]
