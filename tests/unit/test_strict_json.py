"""The shared JSON encoder of every output: same values as `json.dumps`, and no non-finite float
ever slips out as a silent `null`."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from s2feature.domain import Dqc, SeriesId, Snapshot
from s2feature.strict_json import NonFiniteError, encode, non_finite_path

EDGE_FLOATS = [0.0, -0.0, 1e-05, 0.1, 1e16, 1e22, 1.7976931348623157e308, 5e-324, -2.5e-300]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


def snapshot_payload() -> dict[str, Any]:
    snap = Snapshot(
        series=SeriesId("binance", "fut", "BTCUSDT"),
        window="5m",
        t0=1_735_689_599_999,
        features={"atr_14": 12.5, "rv_4h": None, "spread_bps": 0.7, "regime_label": "calm"},
        dqc=Dqc(missing=True, reasons=("missing:rv_4h",), note="1 required feature(s) null"),
        config_rev="default",
        bar_coverage=0.8,
        inputs_until=1_735_689_599_000,
        calc={"depth_top1_usdt": "sum"},
    )
    return snap.to_payload("realtime", 1_735_689_600_123)


@given(json_values)
def test_reads_back_as_the_same_values_as_json_dumps(value: Any) -> None:
    assert json.loads(encode(value)) == json.loads(json.dumps(value, allow_nan=False))


def test_a_snapshot_payload_reads_back_exactly() -> None:
    payload = snapshot_payload()
    payload["features"]["edge"] = EDGE_FLOATS
    payload["symbol"] = "BTC€USDT"  # written as UTF-8, read back the same
    assert json.loads(encode(payload)) == payload


def test_output_is_compact_utf8() -> None:
    assert encode({"a": [1, 2.5, None], "b": "é"}) == '{"a":[1,2.5,null],"b":"é"}'.encode()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "minus-inf"])
@pytest.mark.parametrize(
    ("place", "path"),
    [
        (lambda v: v, "."),
        (lambda v: {"features": {"atr_14": 1.0, "rv_4h": v}}, ".features.rv_4h"),
        (lambda v: {"meta": [{"x": "a"}, (1.0, v)]}, ".meta[1][1]"),
        # long numeric lists take the summing shortcut: the bad item is found all the same
        (lambda v: {"mids": [float(i) for i in range(500)] + [v]}, ".mids[500]"),
    ],
    ids=["bare", "nested-dict", "tuple-in-list", "long-list"],
)
def test_non_finite_floats_are_refused_with_their_path(bad: float, place: Any, path: str) -> None:
    doc = place(bad)
    assert non_finite_path(doc) == path
    with pytest.raises(NonFiniteError, match=f"at {re.escape(path)}$"):
        encode(doc)


def test_a_non_finite_numpy_float_is_refused_and_a_finite_one_is_a_float() -> None:
    assert encode({"x": np.float64(0.25)}) == b'{"x":0.25}'
    with pytest.raises(NonFiniteError):
        encode({"x": [np.float64("nan")]})


def test_finite_numbers_whose_sum_overflows_are_fine() -> None:
    big = [1.7e308, 1.7e308, -1.0]
    assert json.loads(encode({"v": big})) == {"v": big}


@pytest.mark.parametrize("value", [object(), {None: 1}, {True: 1}, np.int64(3)])
def test_values_json_has_no_type_for_are_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        encode(value)
