"""Order-book family: spread, top-of-book depth, liquidity score, micro imbalance and funding.

Every value is "as of t0": it is read from the tick fields of the w-bar that closes at t0 (those
of its last base bar, i.e. of the last event with `ts <= t0`). Nothing is smoothed or carried over
from earlier bars, so the online class only has to remember the latest bar's inputs.

Null rules (None online, NaN in batch):

* any input of a feature is absent (None / NaN) -> that feature is null;
* `spread_bps` is null when `mid <= 0` (a ratio to a non-positive mid means nothing);
* `micro_imbalance_top1` is null when `bid_qty + ask_qty <= 0`.

A crossed book gives a negative `spread_bps` on purpose: the bounds check downstream flags it,
and hiding it here would hide bad data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from s2feature.compute.family import (
    BatchValues,
    FamilyContext,
    FeatureFamily,
    FloatArray,
    IntArray,
)
from s2feature.domain import Bar, BarArrays, FeatureValue

__all__ = ["BOOK_FAMILY", "BOOK_FEATURES", "OnlineBookFamily", "book_family_batch"]

BOOK_FEATURES: tuple[str, ...] = (
    "spread_bps",
    "depth_top1_usdt",
    "liq_score",
    "micro_imbalance_top1",
    "funding_next",
    "funding_next_abs",
)

# The bar fields the family reads, in the order the online state stores them.
_INPUT_FIELDS: tuple[str, ...] = (
    "best_bid",
    "best_ask",
    "mid",
    "depth_top1_usdt",
    "bid_qty",
    "ask_qty",
    "funding_next",
)

_NAN = float("nan")


def book_family_batch(bars: BarArrays, t0s: IntArray, ctx: FamilyContext) -> BatchValues:
    """All book features at each t0, from the last bar closing at or before it (NaN for null)."""
    n_out = len(t0s)
    # As-of join: the bar whose close is the latest one <= t0 (t0s are the w-bar closes).
    index = np.searchsorted(bars.close_time, np.asarray(t0s, dtype=np.int64), side="right") - 1
    has_bar = index >= 0
    safe_index = np.where(has_bar, index, 0)

    def as_of(column: FloatArray) -> FloatArray:
        if len(column) == 0:
            return np.full(n_out, np.nan)
        return np.where(has_bar, column[safe_index], np.nan)

    bid, ask, mid = as_of(bars.best_bid), as_of(bars.best_ask), as_of(bars.mid)
    depth = as_of(bars.depth_top1_usdt)
    bid_qty, ask_qty = as_of(bars.bid_qty), as_of(bars.ask_qty)
    funding = as_of(bars.funding_next)

    # NaN inputs propagate through the arithmetic; the masks only add the non-NaN null cases.
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.where(mid > 0.0, (ask - bid) / mid * 1e4, np.nan)
        qty_sum = bid_qty + ask_qty
        imbalance = np.where(qty_sum > 0.0, (bid_qty - ask_qty) / qty_sum, np.nan)
    liq = np.clip(depth / ctx.bundle.liq_threshold_usdt, 0.0, 1.0)
    return {
        "spread_bps": spread,
        "depth_top1_usdt": depth,
        "liq_score": liq,
        "micro_imbalance_top1": imbalance,
        "funding_next": funding,
        "funding_next_abs": np.abs(funding),
    }


def _present(value: float | None) -> float | None:
    """The value as a plain float, or None when absent (None or NaN)."""
    if value is None or value != value:  # NaN is the only float unequal to itself
        return None
    return float(value)


class OnlineBookFamily:
    """Book features from the latest w-bar's tick fields (`OnlineFamily`)."""

    def __init__(self, ctx: FamilyContext) -> None:
        self._liq_threshold = ctx.bundle.liq_threshold_usdt
        # The raw inputs of the latest bar, not derived values: a restore under a bundle with
        # another liquidity threshold then scores with the new threshold.
        self._bid: float | None = None
        self._ask: float | None = None
        self._mid: float | None = None
        self._depth: float | None = None
        self._bid_qty: float | None = None
        self._ask_qty: float | None = None
        self._funding: float | None = None

    def update(self, bar: Bar) -> None:
        """Take the tick fields of the next final bar."""
        self._bid = _present(bar.best_bid)
        self._ask = _present(bar.best_ask)
        self._mid = _present(bar.mid)
        self._depth = _present(bar.depth_top1_usdt)
        self._bid_qty = _present(bar.bid_qty)
        self._ask_qty = _present(bar.ask_qty)
        self._funding = _present(bar.funding_next)

    def values_at(self, t0: int) -> dict[str, FeatureValue]:
        """The six book features as of t0 (the latest bar fed); None where null."""
        bid, ask, mid = self._bid, self._ask, self._mid
        spread = None
        if bid is not None and ask is not None and mid is not None and mid > 0.0:
            spread = (ask - bid) / mid * 1e4

        depth = self._depth
        liq = None
        if depth is not None:
            liq = min(max(depth / self._liq_threshold, 0.0), 1.0)

        bid_qty, ask_qty = self._bid_qty, self._ask_qty
        imbalance = None
        if bid_qty is not None and ask_qty is not None:
            qty_sum = bid_qty + ask_qty
            if qty_sum > 0.0:
                imbalance = (bid_qty - ask_qty) / qty_sum

        funding = self._funding
        return {
            "spread_bps": spread,
            "depth_top1_usdt": depth,
            "liq_score": liq,
            "micro_imbalance_top1": imbalance,
            "funding_next": funding,
            "funding_next_abs": None if funding is None else abs(funding),
        }

    def snapshot(self) -> dict[str, Any]:
        """The latest bar's inputs (None for absent ones), JSON-serialisable."""
        return {
            "inputs": [
                self._bid,
                self._ask,
                self._mid,
                self._depth,
                self._bid_qty,
                self._ask_qty,
                self._funding,
            ]
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a `snapshot()`."""
        values = [None if v is None else float(v) for v in state["inputs"]]
        if len(values) != len(_INPUT_FIELDS):
            raise ValueError(
                f"book state holds {len(values)} inputs, expected {len(_INPUT_FIELDS)}"
            )
        (
            self._bid,
            self._ask,
            self._mid,
            self._depth,
            self._bid_qty,
            self._ask_qty,
            self._funding,
        ) = values

    def reset(self) -> None:
        """Forget the latest bar, as a fresh instance."""
        self.restore({"inputs": [None] * len(_INPUT_FIELDS)})


def book_state_params(ctx: FamilyContext) -> dict[str, Any]:
    """Nothing: the state is the latest bar's raw inputs; `liq_threshold_usdt` applies at output."""
    return {}


BOOK_FAMILY = FeatureFamily(
    name="book",
    features=BOOK_FEATURES,
    level="wbar",
    batch=book_family_batch,
    online=OnlineBookFamily,
    state_version=1,
    state_params=book_state_params,
)
