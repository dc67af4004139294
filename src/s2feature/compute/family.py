"""The contract every feature family implements, twice: a batch function and an online class.

A *family* computes a few related features from one bar series. It has

* a **batch** function: pure numpy over a whole `BarArrays`, written independently of the online
  code, giving one value per evaluation time (NaN, or None for labels, while null);
* an **online** class fed one final bar at a time, answering `values_at(t0)`, with `snapshot()`,
  `restore()` and `reset()` so that state survives a restart.

`level` says what the family is fed: `"base"` families see base bars and may be evaluated at any
t0 at or after the last bar's close (a w-bar finalised across a gap has a t0 later than its last
base bar); `"wbar"` families see w-bars and are evaluated at each w-bar's close.

Each family also declares what its saved state means, so the engine can tell whether a saved state
still fits (`s2feature.compute.engine_state`): `state_version`, bumped whenever the shape or the
meaning of its `snapshot()` changes, and `state_params`, the bundle parameters (and geometry) its
state depends on. A parameter belongs there iff restoring a state saved under another value would
give values that differ from a fresh run over the same bars under the new value (periods, window
lengths, coverage); parameters read only when values are produced (thresholds) do not.

The registry (`s2feature.compute.registry`) lists the families; the generic property tests run
every family through the same checks: online == batch, snapshot/restore == uninterrupted,
restore under a bundle with the same state params == a run under that bundle, reset == fresh,
and no leakage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from s2feature.config.bundle import ConfigBundle
from s2feature.domain import Bar, BarArrays, FeatureValue, Market

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
# Batch results: float arrays with NaN for null, or object arrays of str/None for labels.
BatchValues = dict[str, npt.NDArray[Any]]


class FxCloses(Protocol):
    """Closes of the FX reference series' w-bars, looked up by their exact close time."""

    def close_at(self, close_time: int) -> float | None: ...


class FxCloseTable:
    """A dict-backed `FxCloses` for one window, filled from a known FX history."""

    def __init__(self) -> None:
        self._closes: dict[int, float] = {}

    def add(self, close_time: int, close: float) -> None:
        self._closes[close_time] = close

    def close_at(self, close_time: int) -> float | None:
        return self._closes.get(close_time)


@dataclass(frozen=True)
class FamilyContext:
    """What a family needs besides its bars: the bundle and the series' geometry."""

    bundle: ConfigBundle
    window_ms: int  # interval of the bars the family is fed (base_ms for base-level families)
    base_ms: int
    market: Market = "spot"
    fx_online: FxCloses | None = None  # correlation only: FX w-bar closes for the online path
    fx_batch: tuple[IntArray, FloatArray] | None = None  # correlation only: (close_time, close)


class OnlineFamily(Protocol):
    def update(self, bar: Bar) -> None:
        """Feed the next final bar; close times strictly increase and never precede a past t0."""

    def values_at(self, t0: int) -> dict[str, FeatureValue]:
        """Values of all the family's features as of t0 (>= last bar close, non-decreasing)."""

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state; `restore` of it continues exactly where this left off."""

    def restore(self, state: Mapping[str, Any]) -> None: ...

    def reset(self) -> None:
        """Back to the state of a fresh instance."""


@dataclass(frozen=True)
class CloseHistory:
    """Close times and closes of base bars, oldest first: what a `HistoryBacked` family derives
    its bulk state from (the lake reads just these two columns for it)."""

    close_time: IntArray
    close: FloatArray


class HistoryMismatchError(ValueError):
    """The base bars given to `HistoryBacked.restore_from_history` do not hold what the saved
    state was computed from: the family must be rebuilt from the history instead."""


@runtime_checkable
class HistoryBacked(Protocol):
    """An online family whose bulk state is a function of the base bars it was fed, which the
    lake holds: its checkpoint leaves that bulk out and a restore derives it again.

    `checkpoint()` is JSON like `snapshot()`, but continues exactly only through
    `restore_from_history(state, bars)`, given the base bars of the last `history_ms()` ms up to
    the newest bar it had seen (more is fine). `warm_start` builds the state from such bars in
    one vectorised pass (a cold start: equal to a bar-by-bar run within the 1e-9 tolerance)."""

    def history_ms(self) -> int: ...

    def checkpoint(self) -> dict[str, Any]: ...

    def restore_from_history(self, state: Mapping[str, Any], history: CloseHistory) -> None: ...

    def warm_start(self, history: CloseHistory) -> None:
        """Start over as if fed `history` and read at its last close (a cold start)."""


BatchFn = Callable[[BarArrays, IntArray, FamilyContext], BatchValues]
OnlineFactory = Callable[[FamilyContext], OnlineFamily]
# JSON-serialisable values (numbers, strings, lists), compared after a JSON round trip.
StateParams = Callable[[FamilyContext], Mapping[str, Any]]


@dataclass(frozen=True)
class FeatureFamily:
    name: str
    features: tuple[str, ...]
    level: Literal["base", "wbar"]
    batch: BatchFn  # (bars, t0s, ctx) -> {feature: values aligned with t0s}
    online: OnlineFactory
    state_version: int  # bump when the shape or the meaning of the online `snapshot()` changes
    state_params: StateParams  # what of the bundle / geometry the online state depends on
