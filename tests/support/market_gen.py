"""Seeded random base-bar series for property tests: random walks with gaps, flat runs and
absent tick fields. Hypothesis draws the parameters; numpy draws the series from the seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from s2feature.domain import BarArrays


@dataclass(frozen=True)
class SeriesSpec:
    seed: int
    n: int
    base_ms: int
    gap_prob: float = 0.0
    max_gap: int = 1
    flat_prob: float = 0.0
    missing_tick_prob: float = 0.0
    sigma: float = 0.01
    start_slot: int = 28_000_000  # about 2023 in minutes; a multiple of 1440 keeps days aligned


def make_series(spec: SeriesSpec) -> BarArrays:
    """Bars on the base grid: open_time multiple of base_ms, close = open + base - 1."""
    rng = np.random.default_rng(spec.seed)
    steps = 1 + (rng.random(spec.n) < spec.gap_prob) * rng.integers(1, spec.max_gap + 1, spec.n)
    slots = spec.start_slot + np.cumsum(steps)
    open_time = (slots * spec.base_ms).astype(np.int64)
    rets = rng.normal(0.0, spec.sigma, spec.n)
    rets[rng.random(spec.n) < spec.flat_prob] = 0.0
    close = 100.0 * np.exp(np.cumsum(rets))
    open_ = np.r_[100.0, close[:-1]]
    wick = np.abs(rng.normal(0.0, spec.sigma / 2, spec.n))
    flat = rets == 0.0
    wick[flat] = 0.0
    high = np.maximum(open_, close) * (1 + wick)
    low = np.minimum(open_, close) * (1 - wick)
    half_spread = rng.uniform(0.5e-4, 5e-4, spec.n)

    def maybe_missing(values: np.ndarray) -> np.ndarray:
        out = values.astype(np.float64).copy()
        out[rng.random(spec.n) < spec.missing_tick_prob] = np.nan
        return out

    return BarArrays(
        open_time=open_time,
        close_time=open_time + spec.base_ms - 1,
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=rng.uniform(0, 50, spec.n),
        mid=maybe_missing(close),
        best_bid=maybe_missing(close * (1 - half_spread)),
        best_ask=maybe_missing(close * (1 + half_spread)),
        depth_top1_usdt=maybe_missing(rng.uniform(1e4, 5e6, spec.n)),
        depth_split=rng.random(spec.n) < 0.5,
        funding_next=maybe_missing(rng.normal(1e-4, 2e-4, spec.n)),
        bid_qty=maybe_missing(rng.uniform(0, 10, spec.n)),
        ask_qty=maybe_missing(rng.uniform(0, 10, spec.n)),
        jump_count=(rng.random(spec.n) < 0.02).astype(np.int64),
        n_base=np.ones(spec.n, dtype=np.int64),
    )


def series_specs(
    base_ms: int, min_n: int, max_n: int, gaps: bool = True, sigma: float = 0.01
) -> st.SearchStrategy[SeriesSpec]:
    return st.builds(
        SeriesSpec,
        seed=st.integers(0, 2**32 - 1),
        n=st.integers(min_n, max_n),
        base_ms=st.just(base_ms),
        gap_prob=st.sampled_from([0.0, 0.01, 0.1]) if gaps else st.just(0.0),
        max_gap=st.sampled_from([1, 3, 30]),
        flat_prob=st.sampled_from([0.0, 0.2, 0.9]),
        missing_tick_prob=st.sampled_from([0.0, 0.05]),
        sigma=st.just(sigma) | st.sampled_from([1e-4, 0.05]),
    )
