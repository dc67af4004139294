"""Book family: spread, depth, liquidity score, micro imbalance and funding as of t0.

Every case runs through both paths, the online class and the batch function, which must agree;
the expected values are derived by hand in the comments.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from s2feature.compute.book import BOOK_FAMILY, OnlineBookFamily, book_family_batch
from s2feature.compute.family import FamilyContext
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import HOUR_MS, Bar, BarArrays, FeatureValue

W = HOUR_MS
FIRST_OPEN = 420_000 * W  # any multiple of W
BUNDLE = ConfigBundle(base_interval="1h")  # liq_threshold_usdt = 1_000_000
NAN = float("nan")


def make_bar(slot: int = 0, /, **ticks: float | None) -> Bar:
    """A w-bar at `slot` with a sane book unless `ticks` overrides fields."""
    fields: dict[str, float | None] = {
        "mid": 100.0,
        "best_bid": 99.5,
        "best_ask": 100.5,
        "depth_top1_usdt": 250_000.0,
        "bid_qty": 3.0,
        "ask_qty": 1.0,
        "funding_next": 1e-4,
    }
    fields.update(ticks)
    open_time = FIRST_OPEN + slot * W
    return Bar(
        open_time=open_time,
        close_time=open_time + W - 1,
        open=100.0,
        high=101.0,
        low=99.0,
        close=100.0,
        volume=1.0,
        **fields,  # type: ignore[arg-type]
    )


def same(a: FeatureValue, b: FeatureValue) -> bool:
    if a is None or b is None:
        return a is b
    assert isinstance(a, float)
    assert isinstance(b, float)
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def values_of(bars: list[Bar], bundle: ConfigBundle = BUNDLE) -> dict[str, FeatureValue]:
    """Values at the last bar's close from both paths, asserted equal, as the online dict."""
    ctx = FamilyContext(bundle, W, W)
    online = OnlineBookFamily(ctx)
    for bar in bars:
        online.update(bar)
    t0 = bars[-1].close_time
    got = online.values_at(t0)
    batch = book_family_batch(BarArrays.from_bars(bars), np.array([t0], dtype=np.int64), ctx)
    assert set(got) == set(batch) == set(BOOK_FAMILY.features)
    for name, value in got.items():
        from_batch = batch[name][0]
        assert same(value, None if np.isnan(from_batch) else float(from_batch)), name
    return got


@pytest.mark.parametrize(
    ("bid", "ask", "mid", "expected"),
    [
        # (100.5 - 99.5) / 100 * 1e4 = 100 bps
        (99.5, 100.5, 100.0, 100.0),
        # locked book: 0 / 100 = 0 bps, a real zero
        (100.0, 100.0, 100.0, 0.0),
        # crossed book: (99.5 - 100.5) / 100 * 1e4 = -100 bps, kept for the bounds check
        (100.5, 99.5, 100.0, -100.0),
        # (30_001 - 29_999) / 30_000 * 1e4 = 2 / 3 bps
        (29_999.0, 30_001.0, 30_000.0, 2.0 / 3.0),
    ],
    ids=["normal", "locked", "crossed", "btc_like"],
)
def test_spread_bps_of_the_t0_book(bid: float, ask: float, mid: float, expected: float) -> None:
    values = values_of([make_bar(best_bid=bid, best_ask=ask, mid=mid)])
    assert values["spread_bps"] == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    "ticks",
    [
        {"best_bid": None},
        {"best_ask": None},
        {"mid": None},
        {"best_bid": NAN},
        {"mid": 0.0},
    ],
    ids=["no_bid", "no_ask", "no_mid", "nan_bid", "zero_mid"],
)
def test_spread_bps_is_null_without_a_usable_input(ticks: dict[str, float | None]) -> None:
    values = values_of([make_bar(**ticks)])
    assert values["spread_bps"] is None
    assert values["depth_top1_usdt"] == 250_000.0  # the other features do not suffer


@pytest.mark.parametrize(
    ("depth", "expected_liq"),
    [
        (0.0, 0.0),  # the lower clip point itself
        (-1e-9, 0.0),  # just below 0: clipped to 0, never negative
        (1e-9, 1e-15),  # just above 0: 1e-9 / 1e6
        (250_000.0, 0.25),  # 250k / 1M
        (999_999.0, 0.999999),  # one below the threshold: 999_999 / 1e6
        (1_000_000.0, 1.0),  # the upper clip point itself
        (1_000_001.0, 1.0),  # just above: clipped to 1
        (5e9, 1.0),
    ],
    ids=["zero", "below_zero", "above_zero", "quarter", "below_one", "one", "above_one", "huge"],
)
def test_liq_score_is_depth_over_threshold_clipped_to_unit(
    depth: float, expected_liq: float
) -> None:
    values = values_of([make_bar(depth_top1_usdt=depth)])
    assert values["depth_top1_usdt"] == depth
    assert values["liq_score"] == pytest.approx(expected_liq, rel=1e-12, abs=0.0)


def test_liq_score_uses_the_bundle_threshold() -> None:
    bundle = BUNDLE.with_overrides(liq_threshold_usdt=400_000.0)
    # 250_000 / 400_000 = 0.625
    assert values_of([make_bar()], bundle)["liq_score"] == 0.625


@pytest.mark.parametrize("depth", [None, NAN], ids=["none", "nan"])
def test_depth_and_liq_score_are_null_without_depth(depth: float | None) -> None:
    values = values_of([make_bar(depth_top1_usdt=depth)])
    assert values["depth_top1_usdt"] is None
    assert values["liq_score"] is None


@pytest.mark.parametrize(
    ("bid_qty", "ask_qty", "expected"),
    [
        (3.0, 1.0, 0.5),  # (3 - 1) / 4
        (1.0, 3.0, -0.5),  # (1 - 3) / 4
        (2.0, 2.0, 0.0),  # balanced: a real zero
        (5.0, 0.0, 1.0),  # one-sided: (5 - 0) / 5
        (0.0, 0.0, None),  # empty top of book: the sum is 0
        (None, 1.0, None),
        (1.0, None, None),
        (NAN, 1.0, None),
    ],
    ids=["bid_heavy", "ask_heavy", "balanced", "one_sided", "empty", "no_bid", "no_ask", "nan"],
)
def test_micro_imbalance_top1(
    bid_qty: float | None, ask_qty: float | None, expected: float | None
) -> None:
    values = values_of([make_bar(bid_qty=bid_qty, ask_qty=ask_qty)])
    assert values["micro_imbalance_top1"] == expected


@pytest.mark.parametrize(
    ("funding", "expected_abs"),
    [(1e-4, 1e-4), (-2.5e-4, 2.5e-4), (0.0, 0.0), (None, None), (NAN, None)],
    ids=["positive", "negative", "zero", "absent", "nan"],
)
def test_funding_next_and_its_absolute_value(
    funding: float | None, expected_abs: float | None
) -> None:
    values = values_of([make_bar(funding_next=funding)])
    expected = None if funding is None or funding != funding else funding
    assert values["funding_next"] == expected
    assert values["funding_next_abs"] == expected_abs


def test_a_bar_without_any_tick_field_gives_all_six_keys_null() -> None:
    bare = make_bar(
        mid=None,
        best_bid=None,
        best_ask=None,
        depth_top1_usdt=None,
        bid_qty=None,
        ask_qty=None,
        funding_next=None,
    )
    assert values_of([bare]) == dict.fromkeys(BOOK_FAMILY.features)


def test_values_come_from_the_t0_bar_and_are_never_carried_forward() -> None:
    earlier = make_bar(0, best_bid=99.0, best_ask=101.0, depth_top1_usdt=2e6, funding_next=3e-4)
    latest = make_bar(1, depth_top1_usdt=None, funding_next=None)
    values = values_of([earlier, latest])
    # (100.5 - 99.5) / 100 * 1e4 from the latest bar, not 200 bps from the earlier one
    assert values["spread_bps"] == 100.0
    assert values["depth_top1_usdt"] is None
    assert values["funding_next"] is None


def test_batch_reads_each_t0_from_its_own_bar_and_is_null_before_the_first() -> None:
    bars = [make_bar(0, best_ask=101.5), make_bar(1), make_bar(2, best_ask=None)]
    t0s = np.array([FIRST_OPEN - 1] + [b.close_time for b in bars], dtype=np.int64)
    spread = book_family_batch(BarArrays.from_bars(bars), t0s, FamilyContext(BUNDLE, W, W))
    # before any bar: null; then (101.5 - 99.5) / 100 * 1e4 = 200, 100, and null
    np.testing.assert_array_equal(spread["spread_bps"], [NAN, 200.0, 100.0, NAN])


def test_online_before_any_bar_is_all_null() -> None:
    online = OnlineBookFamily(FamilyContext(BUNDLE, W, W))
    assert online.values_at(FIRST_OPEN + W - 1) == dict.fromkeys(BOOK_FAMILY.features)


def test_snapshot_through_json_then_restore_continues_identically() -> None:
    ctx = FamilyContext(BUNDLE, W, W)
    first = OnlineBookFamily(ctx)
    first.update(make_bar(0, bid_qty=None, funding_next=-1e-4))
    restored = OnlineBookFamily(ctx)
    restored.restore(json.loads(json.dumps(first.snapshot(), allow_nan=False)))
    t0 = make_bar(0).close_time
    assert restored.values_at(t0) == first.values_at(t0)
    nxt = make_bar(1, best_bid=99.9)
    first.update(nxt)
    restored.update(nxt)
    assert restored.values_at(nxt.close_time) == first.values_at(nxt.close_time)


def test_restore_under_another_threshold_scores_with_the_new_one() -> None:
    first = OnlineBookFamily(FamilyContext(BUNDLE, W, W))
    first.update(make_bar(0))
    bundle = BUNDLE.with_overrides(liq_threshold_usdt=500_000.0)
    restored = OnlineBookFamily(replace(FamilyContext(BUNDLE, W, W), bundle=bundle))
    restored.restore(first.snapshot())
    # the raw depth is the state: 250_000 / 500_000 = 0.5
    assert restored.values_at(make_bar(0).close_time)["liq_score"] == 0.5


def test_restore_rejects_a_state_of_the_wrong_shape() -> None:
    online = OnlineBookFamily(FamilyContext(BUNDLE, W, W))
    with pytest.raises(ValueError, match="7"):
        online.restore({"inputs": [1.0, 2.0]})


def test_reset_forgets_the_last_bar() -> None:
    online = OnlineBookFamily(FamilyContext(BUNDLE, W, W))
    online.update(make_bar(0))
    online.reset()
    assert online.values_at(make_bar(0).close_time) == dict.fromkeys(BOOK_FAMILY.features)
    assert online.snapshot() == OnlineBookFamily(FamilyContext(BUNDLE, W, W)).snapshot()
