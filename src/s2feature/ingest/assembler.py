"""Base-bar assembly (SPEC §3): from accepted events to final base bars with as-of tick values.

Events are the only clock here: a bar becomes final when an event shows that its time is over
(`ts > close_time`) or that the feed moved on (a kline with a later `open_time`). A bar whose
successor never arrives therefore stays open; closing it on a wall clock would make live output
depend on processing speed and break live == recompute == after restart.

The assembler expects events that passed the `EventGate`: `ts` never decreases, klines never
regress and sit on the base grid. It never raises on them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any, Final

from s2feature.domain import Bar, Kline, MarketEvent

# Tick values of one event, in `Bar` field order:
# (mid, best_bid, best_ask, depth_top1_usdt, depth_split, funding_next, bid_qty, ask_qty).
Ticks = tuple[float, float, float, float, bool, float | None, float | None, float | None]

# At most this many base intervals of tick history are kept for klines that arrive after their
# close. Only a feed whose klines lag far behind its event times needs any; bars older than the
# kept history get no tick values (None) rather than later ones, which would leak.
MAX_TICK_SLOTS: Final = 1440


def ticks_of(event: MarketEvent) -> Ticks:
    """The tick values an event carries; split depth, when both sides are given, wins."""
    if event.depth_bid_usdt is not None and event.depth_ask_usdt is not None:
        depth, split = event.depth_bid_usdt + event.depth_ask_usdt, True
    else:
        depth, split = event.depth_top1_usdt, False
    return (
        event.mid,
        event.best_bid,
        event.best_ask,
        depth,
        split,
        event.funding_next,
        event.best_bid_qty,
        event.best_ask_qty,
    )


class _OpenBar:
    """The bar being assembled: the latest kline carrying its open_time, and its jump count."""

    __slots__ = ("jump_count", "kline")

    def __init__(self, kline: Kline, jump_count: int) -> None:
        self.kline = kline
        self.jump_count = jump_count

    def to_state(self) -> dict[str, Any]:
        k = self.kline
        return {
            "kline": [k.open, k.high, k.low, k.close, k.volume, k.open_time, k.close_time],
            "jump_count": self.jump_count,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _OpenBar:
        o, h, lo, c, v, open_time, close_time = state["kline"]
        kline = Kline(
            float(o), float(h), float(lo), float(c), float(v), int(open_time), int(close_time)
        )
        return cls(kline, int(state["jump_count"]))


class BaseBarAssembler:
    """Turns accepted events into final base bars.

    A bar's OHLCV are those of the last event carrying its open_time (an event with
    `ts > close_time` that still carries the bar's kline updates it, then finalises it). Its tick
    values are those of the last event with `ts <= close_time` seen up to its finalisation,
    whichever kline that event carried; None when there is no such event. `jump_count` counts
    the flagged events that carried the bar's kline while it was open. An event carrying the
    kline of a bar that is already final changes no bar: that bar has been handed out.
    """

    def __init__(self, base_ms: int) -> None:
        if base_ms <= 0:
            raise ValueError(f"base_ms must be positive, got {base_ms}")
        self._base_ms = base_ms
        self._open: _OpenBar | None = None
        self._newest_open_time: int | None = None
        # (ts, ticks) of the last event of each base slot that a future bar may still need,
        # oldest first. Normally one or two entries; more only while klines lag behind `ts`.
        self._ticks: deque[tuple[int, Ticks]] = deque()

    def on_event(self, event: MarketEvent, jumped: bool) -> list[Bar]:
        """Feed one accepted event (and its jump flag); the bars that became final, in order."""
        self._record_ticks(event)
        kline = event.kline
        final: list[Bar] = []
        current = self._open
        if current is not None:
            if kline.open_time == current.kline.open_time:
                current.kline = kline
                current.jump_count += jumped
            if event.ts > current.kline.close_time or kline.open_time > current.kline.open_time:
                final.append(self._finalise(current))
                self._open = None
        if self._newest_open_time is None or kline.open_time > self._newest_open_time:
            self._newest_open_time = kline.open_time
            started = _OpenBar(kline, int(jumped))
            if event.ts > kline.close_time:
                # The kline arrived after its close: it is complete and final at once.
                final.append(self._finalise(started))
            else:
                self._open = started
        self._prune_ticks()
        return final

    def _record_ticks(self, event: MarketEvent) -> None:
        entry = (event.ts, ticks_of(event))
        ticks = self._ticks
        # Bars close at slot ends (`k * base_ms - 1`), so only the last event of a slot can be
        # the as-of event of any bar: a newer event of the same slot replaces it.
        if ticks and ticks[-1][0] // self._base_ms == event.ts // self._base_ms:
            ticks[-1] = entry
        else:
            ticks.append(entry)
            if len(ticks) > MAX_TICK_SLOTS:
                ticks.popleft()

    def _ticks_as_of(self, close_time: int) -> Ticks | None:
        for ts, ticks in reversed(self._ticks):
            if ts <= close_time:
                return ticks
        return None

    def _prune_ticks(self) -> None:
        """Drop tick entries no future bar can need: all but the last one at or before the
        earliest close time still to come (the open bar's, else the next bar's after the newest)."""
        if self._open is not None:
            earliest = self._open.kline.close_time
        elif self._newest_open_time is not None:
            earliest = self._newest_open_time + 2 * self._base_ms - 1
        else:
            return
        ticks = self._ticks
        while len(ticks) > 1 and ticks[1][0] <= earliest:
            ticks.popleft()

    def _finalise(self, bar: _OpenBar) -> Bar:
        k = bar.kline
        ticks = self._ticks_as_of(k.close_time)
        mid, bid, ask, depth, split, funding, bid_qty, ask_qty = (
            ticks if ticks is not None else (None, None, None, None, False, None, None, None)
        )
        return Bar(
            k.open_time,
            k.close_time,
            k.open,
            k.high,
            k.low,
            k.close,
            k.volume,
            mid=mid,
            best_bid=bid,
            best_ask=ask,
            depth_top1_usdt=depth,
            depth_split=split,
            funding_next=funding,
            bid_qty=bid_qty,
            ask_qty=ask_qty,
            jump_count=bar.jump_count,
        )

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state; `restore` of it continues exactly where this left off."""
        return {
            "base_ms": self._base_ms,
            "open": None if self._open is None else self._open.to_state(),
            "newest_open_time": self._newest_open_time,
            "ticks": [[ts, list(ticks)] for ts, ticks in self._ticks],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        if int(state["base_ms"]) != self._base_ms:
            raise ValueError(
                f"state was assembled with base_ms={state['base_ms']}, not {self._base_ms}"
            )
        self._open = None if state["open"] is None else _OpenBar.from_state(state["open"])
        newest = state["newest_open_time"]
        self._newest_open_time = None if newest is None else int(newest)
        self._ticks = deque((int(ts), _ticks_from_state(values)) for ts, values in state["ticks"])


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _ticks_from_state(values: list[Any]) -> Ticks:
    mid, bid, ask, depth, split, funding, bid_qty, ask_qty = values
    return (
        float(mid),
        float(bid),
        float(ask),
        float(depth),
        bool(split),
        _optional_float(funding),
        _optional_float(bid_qty),
        _optional_float(ask_qty),
    )
