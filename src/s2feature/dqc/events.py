"""Event-level data-quality checks (SPEC §6): the time-order gate and the jump check.

Both are pure and restartable. The gate decides whether a decoded event may change a stream's
state at all; the jump detector flags an accepted event whose `mid` is far from the robust centre
of the mids before it. Bad data never raises here: it becomes a `Rejected` with reasons.

Reasons are machine-readable strings `<category>:<what>[:<field>]`, e.g.
`"time_order:ts_backwards"` or `"unreadable:missing_field:mid"`.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from s2feature.domain import MarketEvent

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

RejectCategory = Literal["unreadable", "time_order"]

# Scales the MAD to the standard deviation of a normal distribution.
MAD_SCALE: Final = 1.4826
# Rows of the batch jump check computed at once: bounds the (rows x lookback) working copy.
_BATCH_CHUNK_ROWS: Final = 8192


@dataclass(frozen=True, slots=True)
class Rejected:
    """A dropped input entry: the DQC category and every reason found, in field order.

    `unreadable` entries also go to the dead-letter stream; `time_order` ones are only dropped.
    """

    category: RejectCategory
    reasons: tuple[str, ...]

    @classmethod
    def from_reasons(cls, reasons: list[str] | tuple[str, ...]) -> Rejected:
        """Category from the reasons: `unreadable` wins, as it asks for the stronger action."""
        unreadable = any(reason.startswith("unreadable:") for reason in reasons)
        return cls("unreadable" if unreadable else "time_order", tuple(reasons))


class EventGate:
    """The per-stream time-order and identity gate (SPEC §6).

    Drops (with reasons) an event whose `ts` is below the last accepted one, whose kline does not
    open before it closes, is older than the stream's current base bar or is off the base grid,
    or whose symbol is not the stream's. Only `admit` of an accepted event changes state.
    """

    def __init__(self, symbol: str, base_ms: int) -> None:
        if base_ms <= 0:
            raise ValueError(f"base_ms must be positive, got {base_ms}")
        self._symbol = symbol
        self._base_ms = base_ms
        self._last_ts: int | None = None
        self._last_open_time: int | None = None

    def check(self, event: MarketEvent) -> Rejected | None:
        """Reasons to drop `event`, or None when it may pass; changes no state."""
        reasons: list[str] = []
        if event.symbol != self._symbol:
            reasons.append("unreadable:symbol_mismatch")
        if self._last_ts is not None and event.ts < self._last_ts:
            reasons.append("time_order:ts_backwards")
        kline = event.kline
        if kline.open_time >= kline.close_time:
            # Already a time-order failure; an off-grid reason on top would only restate it.
            reasons.append("time_order:kline_open_not_before_close")
        elif (
            kline.open_time % self._base_ms != 0
            or kline.close_time != kline.open_time + self._base_ms - 1
        ):
            reasons.append("unreadable:kline_not_on_base_grid")
        if self._last_open_time is not None and kline.open_time < self._last_open_time:
            reasons.append("time_order:kline_regressed")
        return Rejected.from_reasons(reasons) if reasons else None

    def admit(self, event: MarketEvent) -> Rejected | None:
        """`check`, and record the event as the stream's latest when it passes."""
        rejected = self.check(event)
        if rejected is None:
            self._last_ts = event.ts
            # Accepted klines never regress, so the newest open_time is the current base bar's.
            self._last_open_time = event.kline.open_time
        return rejected

    def snapshot(self) -> dict[str, Any]:
        return {"last_ts": self._last_ts, "last_open_time": self._last_open_time}

    def restore(self, state: Mapping[str, Any]) -> None:
        last_ts, last_open_time = state["last_ts"], state["last_open_time"]
        self._last_ts = None if last_ts is None else int(last_ts)
        self._last_open_time = None if last_open_time is None else int(last_open_time)


def _validate_jump_params(lookback: int, multiplier: float, mad_floor_ratio: float) -> None:
    if lookback < 1:
        raise ValueError(f"lookback must be at least 1, got {lookback}")
    if not (math.isfinite(multiplier) and multiplier > 0):
        raise ValueError(f"multiplier must be finite and positive, got {multiplier}")
    if not (math.isfinite(mad_floor_ratio) and mad_floor_ratio >= 0):
        raise ValueError(f"mad_floor_ratio must be finite and >= 0, got {mad_floor_ratio}")


class JumpDetector:
    """Online jump check: is a mid outside `median ± N * 1.4826 * max(MAD, floor * median)`?

    The median and MAD are those of the `lookback` mids accepted before the event; there is no
    check until that many are available. Every checked mid joins the history, flagged or not:
    one outlier moves neither the median nor the MAD (both have a 50% breakdown point), so
    keeping it costs nothing, while a genuine level shift stops being flagged as soon as the new
    level holds the majority of the window, instead of being flagged forever against a history
    that only ever holds the old level.

    Per event: an O(log K) bisect into a sorted copy of the window (plus an O(K) memmove), and,
    unless an O(1) lower bound of the MAD already clears the mid, an O(log K) selection of the
    MAD from the two sorted halves of the deviations; no numpy.
    Mids must be finite (the decoder guarantees it).
    """

    def __init__(self, lookback: int, multiplier: float, mad_floor_ratio: float) -> None:
        _validate_jump_params(lookback, multiplier, mad_floor_ratio)
        self._lookback = lookback
        self._scale = multiplier * MAD_SCALE
        self._mad_floor_ratio = mad_floor_ratio
        self._window: deque[float] = deque()
        self._sorted: list[float] = []

    def check_and_add(self, mid: float) -> bool:
        """Whether `mid` is a jump against the window before it; then add it to the window."""
        if not math.isfinite(mid):
            raise ValueError(f"mid must be finite, got {mid}")
        flagged = False
        window, ordered = self._window, self._sorted
        if len(window) >= self._lookback:
            flagged = self._is_jump(mid)
            del ordered[bisect_left(ordered, window.popleft())]
        window.append(mid)
        insort(ordered, mid)
        return flagged

    def _is_jump(self, mid: float) -> bool:
        values = self._sorted
        n = len(values)
        half = n // 2
        median = values[half] if n % 2 else (values[half - 1] + values[half]) / 2
        distance = abs(mid - median)
        floor = self._mad_floor_ratio * median
        # Most mids lie well inside the limit, and a lower bound of the MAD settles them without
        # the exact MAD. The MAD is (for even n, the mean of it and the next deviation) the
        # `take`-th smallest of the deviations, which form two ascending runs (see `_mad`);
        # fewer than `take` deviations are below the m-th of both runs, m = ceil(take / 2), so
        # the MAD is at least the smaller of the two. The same float operations as the exact
        # path give the same deviations, so the bound never changes a flag.
        take = n - half
        m = (take + 1) // 2
        if m <= half:
            lower = min(median - values[half - m], values[half + m - 1] - median)
            if distance <= self._scale * max(lower, floor):
                return False
        return distance > self._scale * max(self._mad(median), floor)

    def _mad(self, median: float) -> float:
        values = self._sorted
        n = len(values)
        half = n // 2
        # Deviations |x - median| form two ascending runs: below[i] = median - values[half-1-i]
        # (`half` of them) and above[j] = values[half+j] - median (`n - half`). Take the first
        # `take` of their merge by a binary search for how many come from `below`.
        take = half if n % 2 == 0 else half + 1
        n_above = n - half
        lo, hi = max(0, take - n_above), min(half, take)
        while lo < hi:
            i = (lo + hi) // 2
            # below[i] < above[take-i-1]: the first `take` need more deviations from below.
            if median - values[half - 1 - i] < values[half + take - i - 1] - median:
                lo = i + 1
            else:
                hi = i
        i, j = lo, take - lo
        last_below = median - values[half - i] if i > 0 else -math.inf
        last_above = values[half + j - 1] - median if j > 0 else -math.inf
        kth = max(last_below, last_above)  # the take-th smallest deviation
        if n % 2:
            return kth
        next_below = median - values[half - 1 - i] if i < half else math.inf
        next_above = values[half + j] - median if j < n_above else math.inf
        return (kth + min(next_below, next_above)) / 2

    def snapshot(self) -> dict[str, Any]:
        return {"mids": list(self._window)}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load a window; only the newest `lookback` mids are kept if the lookback shrank."""
        mids = [float(m) for m in state["mids"]][-self._lookback :]
        self._window = deque(mids)
        self._sorted = sorted(mids)


def jump_flags_batch(
    mids: FloatArray, lookback: int, multiplier: float, mad_floor_ratio: float
) -> BoolArray:
    """The jump check over a whole series of accepted mids at once (independent of the online
    class): flag `i` compares `mids[i]` with the median and MAD of `mids[i-lookback:i]`."""
    _validate_jump_params(lookback, multiplier, mad_floor_ratio)
    mids = np.asarray(mids, dtype=np.float64)
    flags = np.zeros(len(mids), dtype=np.bool_)
    if len(mids) <= lookback:
        return flags
    # Window w covers mids[w : w+lookback] and judges mids[w+lookback].
    windows = sliding_window_view(mids, lookback)[:-1]
    for start in range(0, len(windows), _BATCH_CHUNK_ROWS):
        block = windows[start : start + _BATCH_CHUNK_ROWS]
        median = np.median(block, axis=1)
        mad = np.median(np.abs(block - median[:, None]), axis=1)
        limit = multiplier * MAD_SCALE * np.maximum(mad, mad_floor_ratio * median)
        judged = mids[start + lookback : start + lookback + len(block)]
        flags[start + lookback : start + lookback + len(block)] = np.abs(judged - median) > limit
    return flags
