"""Rolling time-window sums that stay exact to a stated tolerance, for online families.

`RollingSums` keeps several windows of different spans over one series of (time, value) pairs:
the pairs are stored once, in two flat `array`s, not as Python objects in deques, and every
window is a suffix of that series, marked by its head index. Values are doubles (8 bytes); times
are 4-byte offsets from an origin, re-based when an offset would pass 2^32 - 1 ms (49 days; a
series that holds a wider span keeps 8-byte times). A 30-day window of one-minute values costs
12 bytes a minute: about 0.5 MB, where deques of Python floats and ints held about 3 MB.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

# The running total is re-anchored with an exact sum before its accumulated rounding could exceed
# this relative error, so online sums stay within the project's 1e-9 agreement with batch ones.
ANCHOR_RTOL: Final = 1e-12
_UNIT_ROUNDOFF: Final = 2.0**-53
# Pairs no window holds any more are dropped in one move once there are this many and they are
# at least an eighth of the series: amortised O(1) (a move of n kept pairs comes after at least
# n/7 additions), and at most an eighth of the series is dead weight. (At a half, a month of
# one-minute returns, half a megabyte a symbol, grew to up to twice that between moves.)
_COMPACT_AT: Final = 4096
_SLACK_PER_SERIES: Final = 8
_OFFSET_MAX: Final = 2**32 - 1
Times = Sequence[int] | npt.NDArray[np.int64]
Values = Sequence[float] | npt.NDArray[np.float64]
_NARROW: Final = "I" if array("I").itemsize == 4 else "L"  # 4-byte unsigned offsets
if array(_NARROW).itemsize != 4:
    raise RuntimeError("no 4-byte unsigned array type on this platform")


class RollingSums:
    """Sum and count of non-negative values with time in `(t - span, t]` per span, for a rising t.

    Additions and removals keep a running total per window; every rounding step adds at most one
    unit roundoff of the result, which is tracked, and the total is recomputed exactly
    (`math.fsum`) whenever that bound could exceed `ANCHOR_RTOL` of it, e.g. right after a huge
    value leaves. The arithmetic, step for step, is that of one deque per window.
    """

    __slots__ = ("_errors", "_heads", "_origin", "_spans", "_times", "_totals", "_values")

    def __init__(self, spans_ms: Sequence[int]) -> None:
        self._spans = tuple(spans_ms)
        self._origin = 0  # time of offset 0 (0 with 8-byte times)
        self._times = array(_NARROW)  # time - origin
        self._values = array("d")
        self._heads = [0] * len(self._spans)
        self._totals = [0.0] * len(self._spans)
        self._errors = [0.0] * len(self._spans)  # sum of |partial results| since the last anchor

    def count(self, index: int) -> int:
        return len(self._times) - self._heads[index]

    def add(self, time: int, value: float) -> None:
        """Append a value to every window (times strictly increase)."""
        times = self._times
        if not times and times.typecode == _NARROW:
            self._origin = time
        elif time - self._origin > _OFFSET_MAX and times.typecode == _NARROW:
            self._rebase(time)
            times = self._times
        times.append(time - self._origin)
        self._values.append(value)
        totals, errors = self._totals, self._errors
        for index in range(len(totals)):
            total = totals[index] + value
            totals[index] = total
            errors[index] += total

    def advance(self, now: int) -> None:
        """Drop from every window the values at or before `now - span`."""
        for index in range(len(self._spans)):
            self.advance_one(index, now)

    def advance_one(self, index: int, now: int) -> None:
        times, head = self._times, self._heads[index]
        end = len(times)
        horizon = now - self._spans[index] - self._origin
        if head >= end or times[head] > horizon:
            return
        values = self._values
        total, error = self._totals[index], self._errors[index]
        while head < end and times[head] <= horizon:
            total -= values[head]
            error += abs(total)
            head += 1
        self._heads[index] = head
        if head < end:
            self._totals[index], self._errors[index] = total, error
        else:
            self._totals[index] = self._errors[index] = 0.0
        self._compact()

    def total(self, index: int) -> float:
        """The window's sum, accurate to `ANCHOR_RTOL` relative."""
        total = self._totals[index]
        if self._errors[index] * _UNIT_ROUNDOFF > ANCHOR_RTOL * total:  # also catches total <= 0
            total = math.fsum(self._values[self._heads[index] :])
            self._totals[index] = self._errors[index] = total
        return total

    def _rebase(self, time: int) -> None:
        """Drop the pairs no window holds, and take the oldest kept time (or `time`) as the
        origin, so that `time` gets an offset that fits."""
        oldest = min(self._heads)
        kept = self._absolute(oldest)
        self._load(kept, self._values[oldest:], upto=time)
        self._heads = [head - oldest for head in self._heads]

    def _absolute(self, start: int = 0) -> list[int]:
        origin = self._origin
        return [offset + origin for offset in self._times[start:]]

    def _load(self, times: Times, values: Values, upto: int | None = None) -> None:
        """Hold these pairs (absolute times ascending), with 4-byte offsets when every time up
        to `upto` fits them."""
        absolute = np.asarray(times, dtype=np.int64)
        n = len(absolute)
        origin = int(absolute[0]) if n else (upto if upto is not None else 0)
        newest = max(int(absolute[-1]) if n else origin, origin if upto is None else upto)
        if newest - origin <= _OFFSET_MAX:
            self._origin = origin
            self._times = array(_NARROW)
            self._times.frombytes((absolute - origin).astype(np.uint32).tobytes())
        else:
            self._origin = 0
            self._times = array("q")
            self._times.frombytes(absolute.tobytes())
        self._values = array("d")
        self._values.frombytes(np.asarray(values, dtype=np.float64).tobytes())

    def _compact(self) -> None:
        oldest = min(self._heads)
        if oldest >= _COMPACT_AT and _SLACK_PER_SERIES * oldest >= len(self._times):
            del self._times[:oldest]
            del self._values[:oldest]
            self._heads = [head - oldest for head in self._heads]

    def reset(self) -> None:
        self._origin = 0
        self._times = array(_NARROW)
        del self._values[:]
        n = len(self._spans)
        self._heads, self._totals, self._errors = [0] * n, [0.0] * n, [0.0] * n

    # -- state -----------------------------------------------------------------------------------

    def window(self, index: int) -> tuple[list[int], list[float]]:
        head = self._heads[index]
        return self._absolute(head), self._values[head:].tolist()

    def snapshot(self) -> list[dict[str, Any]]:
        """One `{times, values, total, error}` per window (each window's own pairs)."""
        out = []
        for index in range(len(self._spans)):
            times, values = self.window(index)
            out.append(
                {
                    "times": times,
                    "values": values,
                    "total": self._totals[index],
                    "error": self._errors[index],
                }
            )
        return out

    def restore(self, states: Sequence[Mapping[str, Any]]) -> None:
        """Continue from `snapshot()`: the longest window holds the pairs of all the others
        (each is a suffix of the same series)."""
        if len(states) != len(self._spans):
            raise ValueError(f"{len(states)} windows saved, {len(self._spans)} expected")
        longest = max(range(len(states)), key=lambda i: len(states[i]["times"]))
        times = [int(t) for t in states[longest]["times"]]
        values = [float(v) for v in states[longest]["values"]]
        heads = []
        for state in states:
            n = len(state["times"])
            if len(state["values"]) != n or n > len(times):
                raise ValueError("saved windows are not suffixes of one series")
            head = len(times) - n
            if n and (int(state["times"][0]) != times[head]):
                raise ValueError("saved windows are not suffixes of one series")
            heads.append(head)
        self._load(times, values)
        self._heads = heads
        self._totals = [float(s["total"]) for s in states]
        self._errors = [float(s["error"]) for s in states]

    def fill(self, times: Times, values: Values, now: int) -> None:
        """Start over holding, per window, the given pairs with time in `(now - span, now]`
        (`times` ascending, none after `now`), each total computed exactly (an anchored state)."""
        self.reset()
        start = bisect.bisect_right(times, now - max(self._spans, default=0))
        kept = times[start:]
        self._load(kept, values[start:])
        for index, span in enumerate(self._spans):
            head = bisect.bisect_right(kept, now - span)
            self._heads[index] = head
            total = math.fsum(self._values[head:]) if head < len(kept) else 0.0
            self._totals[index] = self._errors[index] = total

    def running(self) -> list[dict[str, Any]]:
        """What a window holds besides its pairs: the running total and its error bound, the
        count and the first and last time (for `restore_running`)."""
        out = []
        for index in range(len(self._spans)):
            head, n = self._heads[index], self.count(index)
            out.append(
                {
                    "total": self._totals[index],
                    "error": self._errors[index],
                    "count": n,
                    "first": self._times[head] + self._origin if n else None,
                    "last": self._times[-1] + self._origin if n else None,
                }
            )
        return out

    def restore_running(
        self, states: Sequence[Mapping[str, Any]], times: Times, values: Values
    ) -> None:
        """Continue from `running()` and the series the windows held, given again (`times`
        ascending; pairs outside the windows are ignored). Raises ValueError when the series
        given does not hold exactly the pairs saved: count, first and last time, and a sum that
        agrees with the saved total."""
        if len(states) != len(self._spans):
            raise ValueError(f"{len(states)} windows saved, {len(self._spans)} expected")
        saved = [s for s in states if int(s["count"])]
        self.reset()
        if not saved:
            self._totals = [float(s["total"]) for s in states]
            self._errors = [float(s["error"]) for s in states]
            return
        first = min(int(s["first"]) for s in saved)
        last = max(int(s["last"]) for s in saved)
        lo, hi = bisect.bisect_left(times, first), bisect.bisect_right(times, last)
        self._load(times[lo:hi], values[lo:hi])
        kept, origin = self._times, self._origin
        heads = []
        for state in states:
            n = int(state["count"])
            head = len(kept) - n
            if head < 0 or (n and (kept[head] + origin != int(state["first"]))):
                raise ValueError("the series given does not hold the saved window")
            if n and kept[-1] + origin != int(state["last"]):
                raise ValueError("the series given does not hold the saved window")
            total = float(state["total"])
            exact = math.fsum(self._values[head:])
            if abs(exact - total) > 1e-9 * abs(exact):
                raise ValueError(f"saved window sum {total!r} differs from the series' {exact!r}")
            heads.append(head)
        self._heads = heads
        self._totals = [float(s["total"]) for s in states]
        self._errors = [float(s["error"]) for s in states]


class RollingSum:
    """One window of `RollingSums`: sum and count of the values in `(t - span, t]`."""

    __slots__ = ("_sums",)

    def __init__(self, span_ms: int) -> None:
        self._sums = RollingSums((span_ms,))

    def __len__(self) -> int:
        return self._sums.count(0)

    def add(self, time: int, value: float) -> None:
        """Append a value (times strictly increase)."""
        self._sums.add(time, value)

    def advance(self, now: int) -> None:
        """Drop the values at or before `now - span`."""
        self._sums.advance_one(0, now)

    def total(self) -> float:
        """The window's sum, accurate to `ANCHOR_RTOL` relative."""
        return self._sums.total(0)

    def snapshot(self) -> dict[str, Any]:
        return self._sums.snapshot()[0]

    def restore(self, state: Mapping[str, Any]) -> None:
        self._sums.restore([state])

    def reset(self) -> None:
        self._sums.reset()
