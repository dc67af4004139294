"""The FX series' w-bar closes as its base bars arrive: what the live correlation family reads.

The FX w-bar of a window closing at T has the close of the last FX base bar of its period (the
batch path's `aggregate_wbars` gives the same), and it is *final* once a base bar closing at T or
later was seen: base bars come in order, so no bar of its period can follow. `LiveFxCloses`
keeps the closes per window period and `known_until`, the close time of the newest base bar fed,
and answers `close_at(T)` only for final w-bars. A snapshot at t0 may read FX closes up to t0
only; the service holds a symbol's bar until `known_until` reaches its close time (or a deadline
passes), so what is read is what a recompute reads.
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

    `keep_periods` bounds the memory: closes older than that many periods of their window
    before `known_until` are dropped (the correlation reads at most rho_period + rho_z_period
    periods back).
    """

    def __init__(self, windows_ms: Iterable[int], keep_periods: int) -> None:
        self.known_until = -1  # close time of the newest base bar fed; -1 for none
        self._keep = keep_periods
        self._tables: dict[int, dict[int, float]] = {w: {} for w in windows_ms}
        self._views = {w: FxWindowCloses(self, table) for w, table in self._tables.items()}

    def view(self, window_ms: int) -> FxWindowCloses:
        return self._views[window_ms]

    def add(self, open_time: int, close_time: int, close: float) -> bool:
        """Take the next FX base bar; False (and nothing changes) for one already seen."""
        if close_time <= self.known_until:
            return False
        for window_ms, table in self._tables.items():
            period_end = open_time - open_time % window_ms + window_ms - 1
            table[period_end] = close  # the last base bar of the period sets its close
            if len(table) > 2 * self._keep:
                oldest = close_time - self._keep * window_ms
                for t in [t for t in table if t < oldest]:
                    del table[t]
        self.known_until = close_time
        return True
