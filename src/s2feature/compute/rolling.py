"""A rolling time-window sum that stays exact to a stated tolerance, for online families."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

# The running total is re-anchored with an exact sum before its accumulated rounding could exceed
# this relative error, so online sums stay within the project's 1e-9 agreement with batch ones.
ANCHOR_RTOL: Final = 1e-12
_UNIT_ROUNDOFF: Final = 2.0**-53


class RollingSum:
    """Sum and count of non-negative values with time in `(t - span, t]`, for a rising t.

    Additions and removals keep a running total; every rounding step adds at most one unit
    roundoff of the result, which is tracked, and the total is recomputed exactly (`math.fsum`)
    whenever that bound could exceed `ANCHOR_RTOL` of it, e.g. right after a huge value leaves.
    """

    __slots__ = ("_error", "_span", "_times", "_total", "_values")

    def __init__(self, span_ms: int) -> None:
        self._span = span_ms
        self._times: deque[int] = deque()
        self._values: deque[float] = deque()
        self._total = 0.0
        self._error = 0.0  # sum of |partial results| since the last anchor

    def __len__(self) -> int:
        return len(self._times)

    def add(self, time: int, value: float) -> None:
        """Append a value (times strictly increase)."""
        self._times.append(time)
        self._values.append(value)
        total = self._total + value
        self._total = total
        self._error += total

    def advance(self, now: int) -> None:
        """Drop the values at or before `now - span`."""
        times, values = self._times, self._values
        horizon = now - self._span
        if not times or times[0] > horizon:
            return
        total, error = self._total, self._error
        while times and times[0] <= horizon:
            times.popleft()
            total -= values.popleft()
            error += abs(total)
        if times:
            self._total, self._error = total, error
        else:
            self._total = self._error = 0.0

    def total(self) -> float:
        """The window's sum, accurate to `ANCHOR_RTOL` relative."""
        total = self._total
        if self._error * _UNIT_ROUNDOFF > ANCHOR_RTOL * total:  # also catches total <= 0
            total = math.fsum(self._values)
            self._total = self._error = total
        return total

    def snapshot(self) -> dict[str, Any]:
        return {
            "times": list(self._times),
            "values": list(self._values),
            "total": self._total,
            "error": self._error,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self._times = deque(int(t) for t in state["times"])
        self._values = deque(float(v) for v in state["values"])
        self._total = float(state["total"])
        self._error = float(state["error"])

    def reset(self) -> None:
        self._times.clear()
        self._values.clear()
        self._total = self._error = 0.0
