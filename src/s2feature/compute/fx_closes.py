"""The FX series' w-bar closes as its base bars arrive: what the live correlation family reads.

The FX w-bar of a window closing at T has the close of the last FX base bar of its period (the
batch path's `aggregate_wbars` gives the same), and it is *final* once a base bar closing at T or
later was seen: base bars come in order, so no bar of its period can follow. `LiveFxCloses`
keeps the closes per window period and `known_until`, the close time of the newest base bar fed,
and answers `close_at(T)` only for final w-bars (`covered_from` says from when the closes are
complete). A snapshot at t0 may read FX closes up to t0 only; the service holds a symbol's bar
until `known_until` reaches its close time (or a deadline passes), so what is read is what a
recompute reads.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["FxWindowCloses", "LiveFxCloses"]


class FxWindowCloses:
    """One window's view of a `LiveFxCloses` (`compute.family.FxCloses`)."""

    __slots__ = ("_closes", "_feed")

    def __init__(self, feed: LiveFxCloses, closes: dict[int, float]) -> None:
        self._feed = feed
        self._closes = closes

    def close_at(self, close_time: int) -> float | None:
        if close_time > self._feed.known_until:
            return None  # the w-bar may still be open: not known yet
        return self._closes.get(close_time)


class LiveFxCloses:
    """FX w-bar closes per window, fed with the FX base bars in time order.

    Nothing is dropped on its own: the FX series may run far ahead of a symbol (a symbol catching
    up), and that symbol still reads closes from its own past. The owner of the feed `prune`s what
    no consumer can read any more, and `backfill`s older bars when a consumer needs closes from
    before `covered_from`.
    """

    def __init__(self, windows_ms: Iterable[int]) -> None:
        self.known_until = -1  # close time of the newest base bar fed; -1 for none
        self.covered_from: int | None = None  # open time of the oldest base bar held
        self._tables: dict[int, dict[int, float]] = {w: {} for w in windows_ms}
        self._views = {w: FxWindowCloses(self, table) for w, table in self._tables.items()}

    def view(self, window_ms: int) -> FxWindowCloses:
        return self._views[window_ms]

    def add(self, open_time: int, close_time: int, close: float) -> bool:
        """Take the next FX base bar; False (and nothing changes) for one already seen."""
        if close_time <= self.known_until:
            return False
        for window_ms, table in self._tables.items():
            # The last base bar of the period sets its close.
            table[open_time - open_time % window_ms + window_ms - 1] = close
        self.known_until = close_time
        if self.covered_from is None:
            self.covered_from = open_time
        return True

    def backfill(self, bars: Iterable[tuple[int, int, float]]) -> None:
        """Older base bars `(open_time, close_time, close)`, in time order, all before
        `covered_from`: a period that already has a close keeps it (its later bars set it)."""
        older: dict[int, dict[int, float]] = {w: {} for w in self._tables}
        first = None
        for open_time, _, close in bars:
            if self.covered_from is not None and open_time >= self.covered_from:
                break
            first = open_time if first is None else first
            for window_ms, table in older.items():
                table[open_time - open_time % window_ms + window_ms - 1] = close
        if first is None:
            return
        for window_ms, table in self._tables.items():
            for period_end, close in older[window_ms].items():
                table.setdefault(period_end, close)
        self.covered_from = first

    def prune(self, before: int) -> None:
        """Drop the closes of periods ending before `before` (no consumer reads them)."""
        for table in self._tables.values():
            for t in [t for t in table if t < before]:
                del table[t]
        if self.covered_from is not None and self.covered_from < before:
            self.covered_from = before

    def __len__(self) -> int:
        return max((len(table) for table in self._tables.values()), default=0)
