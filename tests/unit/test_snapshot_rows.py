"""The service's fast store rows of snapshots: byte for byte the rows of `prepare_signal` of the
payload dict, and refused with the same error where that one refuses."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from s2feature.domain import FEATURES, WINDOWS, Dqc, SeriesId, Snapshot
from s2feature.store.base import StoreError, prepare_signal
from s2feature.store.snapshot_rows import _json_texts, prepare_snapshot

finite = st.floats(allow_nan=False, allow_infinity=False)
feature_value = st.none() | finite | st.sampled_from(["calm", "normal", "stressed"])
dqcs = st.builds(
    Dqc,
    missing=st.booleans(),
    jump=st.booleans(),
    bounds=st.booleans(),
    reasons=st.lists(st.text(max_size=12), max_size=3).map(tuple),
    note=st.text(max_size=20),
)


@st.composite
def snapshots(
    draw: st.DrawFn,
    value: st.SearchStrategy[Any] = feature_value,
    symbols: tuple[str, ...] = ("BTCUSDT", "ETH-USD", "BTC€USDT", "SOL/USDT"),  # 2 invalid keys
) -> Snapshot:
    names = draw(st.lists(st.sampled_from(FEATURES), unique=True, max_size=8))
    return Snapshot(
        series=SeriesId(
            draw(st.sampled_from(["binance", "okx"])),
            draw(st.sampled_from(["fut", "spot"])),
            draw(st.sampled_from(symbols)),
        ),
        window=draw(st.sampled_from(WINDOWS)),
        t0=draw(st.integers(min_value=0, max_value=2**53)),
        features={name: draw(value) for name in names},
        dqc=draw(dqcs),
        config_rev=draw(st.sampled_from(["default", "rev-7"])),
        bar_coverage=draw(finite),
        inputs_until=draw(st.integers(min_value=0, max_value=2**53)),
        calc=draw(st.dictionaries(st.sampled_from(["depth_top1_usdt"]), st.just("split"))),
    )


def outcome(prepare: Any) -> Any:
    """The row, or the message of the StoreError that refused it."""
    try:
        return prepare()
    except StoreError as e:
        return f"StoreError: {e}"


@given(snapshots(), st.sampled_from(["realtime", "recompute"]), st.integers(0, 2**53))
def test_the_row_is_the_one_of_the_payload_dict(snap: Snapshot, mode: str, at: int) -> None:
    fast = outcome(lambda: prepare_snapshot(snap, mode, at))
    assert fast == outcome(lambda: prepare_signal(snap.to_payload(mode, at)))


def test_a_valid_snapshot_gives_the_payload_as_text() -> None:
    snap = Snapshot(
        series=SeriesId("binance", "fut", "BTCUSDT"),
        window="5m",
        t0=1_735_689_599_999,
        features={"atr_14": 12.5, "rv_4h": None, "regime_label": "calm"},
        dqc=Dqc(missing=True, reasons=("missing:rv_4h",), note="1 required feature(s) null"),
        config_rev="default",
        bar_coverage=0.8,
        inputs_until=1_735_689_599_000,
        calc={"depth_top1_usdt": "sum"},
    )
    row = prepare_snapshot(snap, "realtime", 7)
    assert row[:4] == ("BTCUSDT:5m:1735689599999", "BTCUSDT", "5m", 1_735_689_599_999)
    assert json.loads(row.json_text) == snap.to_payload("realtime", 7)
    assert '"dqc":{"pass":false,"missing":true' in row.json_text


non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


@given(snapshots(non_finite | st.builds(np.float64, non_finite), symbols=("BTCUSDT",)))
def test_non_finite_features_are_refused_naming_the_feature(snap: Snapshot) -> None:
    if not snap.features:
        return
    with pytest.raises(StoreError, match=r"not storable as JSON at \.features\."):
        prepare_snapshot(snap, "realtime", 0)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_coverage_or_calc_value_is_refused(bad: float) -> None:
    snap = Snapshot(
        series=SeriesId("binance", "fut", "BTCUSDT"),
        window="1m",
        t0=59_999,
        features={},
        dqc=Dqc(),
        config_rev="default",
        bar_coverage=bad,
        inputs_until=0,
    )
    with pytest.raises(StoreError, match=r"at \.meta\.bar_coverage"):
        prepare_snapshot(snap, "realtime", 0)
    odd_calc = Snapshot(**{**_fields(snap), "bar_coverage": 1.0, "calc": {"x": bad}})
    with pytest.raises(StoreError, match=r"at \.meta\.calc\.x"):
        prepare_snapshot(odd_calc, "realtime", 0)


def _fields(snap: Snapshot) -> dict[str, Any]:
    return {name: getattr(snap, name) for name in Snapshot.__dataclass_fields__}


def test_column_texts_are_the_texts_inside_a_document() -> None:
    """`prepare_passing_rows` encodes a column at once: each value's text is the one a document
    holding it has, NaN (a null in a batch column) included."""
    floats = [1.0, math.nan, None, 1e-05, 1.5e300, -0.0, 3, True]
    assert _json_texts(floats) == ["1.0", "null", "null", "0.00001", "1.5e300", "-0.0", "3", "true"]
    labels = [None, 'a,b"c', "é", 'a,b"c']
    assert _json_texts(labels) == [json.dumps(v, ensure_ascii=False) for v in labels]
    assert _json_texts([]) == []
