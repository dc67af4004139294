"""Decoding of stream entries: both encodings, number rules, gathered reasons, fast == checked."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2feature.domain import Kline, MarketEvent
from s2feature.ingest.decode import Rejected, _decode_checked, decode_entry

TS = 1_700_000_050_000
OPEN = 1_700_000_040_000
CLOSE = OPEN + 59_999

KLINE = {"open": "100.5", "high": "101", "low": "100", "close": "100.7", "volume": "12.5",
         "open_time": OPEN, "close_time": CLOSE}  # fmt: skip
FIELDS: dict[str, Any] = {
    "ts": str(TS),
    "source": "binance",
    "symbol": "BTCUSDT",
    "mid": "100.6",
    "best_bid": "100.55",
    "best_ask": "100.65",
    "depth_top1_usdt": "250000",
    "funding_next": "-0.0001",
    "best_bid_qty": "1.5",
    "best_ask_qty": "2.5",
}
EXPECTED = MarketEvent(
    TS, "binance", "BTCUSDT", 100.6, 100.55, 100.65, 250000.0,
    Kline(100.5, 101.0, 100.0, 100.7, 12.5, OPEN, CLOSE),
    funding_next=-0.0001, best_bid_qty=1.5, best_ask_qty=2.5,
)  # fmt: skip


def flat_bytes(
    fields: Mapping[str, Any], kline: Mapping[str, Any]
) -> dict[bytes | str, bytes | str]:
    """A flat entry as a Redis client without decode_responses returns it."""
    entry: dict[bytes | str, bytes | str] = {k.encode(): str(v).encode() for k, v in fields.items()}
    entry[b"kline"] = json.dumps(kline).encode()
    return entry


def flat_text(
    fields: Mapping[str, Any], kline: Mapping[str, Any]
) -> dict[bytes | str, bytes | str]:
    return {**{k: str(v) for k, v in fields.items()}, "kline": json.dumps(kline)}


def as_json_numbers(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: json.loads(v) if k not in ("source", "symbol") and isinstance(v, str) else v
            for k, v in values.items()}  # fmt: skip


ENCODINGS: dict[str, Callable[[], dict[bytes | str, bytes | str]]] = {
    "flat-bytes": lambda: flat_bytes(FIELDS, KLINE),
    "flat-str": lambda: flat_text(FIELDS, KLINE),
    "data-bytes-nested-kline": lambda: {b"data": json.dumps({**FIELDS, "kline": KLINE}).encode()},
    "data-str-kline-as-text": lambda: {"data": json.dumps({**FIELDS, "kline": json.dumps(KLINE)})},
    "data-json-numbers": lambda: {
        "data": json.dumps({**as_json_numbers(FIELDS), "kline": as_json_numbers(KLINE)})
    },
    "flat-kline-numbers-as-text": lambda: flat_bytes(FIELDS, {k: str(v) for k, v in KLINE.items()}),
}


@pytest.mark.parametrize("encoding", list(ENCODINGS), ids=list(ENCODINGS))
def test_every_encoding_decodes_to_the_same_event(encoding: str) -> None:
    assert decode_entry(ENCODINGS[encoding]()) == EXPECTED


def test_optional_fields_absent_empty_or_null_are_none() -> None:
    fields = {k: v for k, v in FIELDS.items() if k != "funding_next"} | {"best_bid_qty": ""}
    event = decode_entry(flat_bytes(fields, KLINE))
    assert isinstance(event, MarketEvent)
    assert (event.funding_next, event.best_bid_qty, event.best_ask_qty) == (None, None, 2.5)
    data = decode_entry({"data": json.dumps({**FIELDS, "best_ask_qty": None, "kline": KLINE})})
    assert isinstance(data, MarketEvent)
    assert data.best_ask_qty is None


def test_zero_is_a_value_not_an_absent_field() -> None:
    event = decode_entry({"data": json.dumps({**FIELDS, "funding_next": 0, "kline": KLINE})})
    assert isinstance(event, MarketEvent)
    assert event.funding_next == 0.0


def test_split_depth_fields_are_decoded() -> None:
    event = decode_entry(
        flat_bytes({**FIELDS, "depth_bid_usdt": "4e4", "depth_ask_usdt": 6e4}, KLINE)
    )
    assert isinstance(event, MarketEvent)
    assert (event.depth_bid_usdt, event.depth_ask_usdt) == (40000.0, 60000.0)


def test_crossed_book_is_not_a_decoding_problem() -> None:
    event = decode_entry(flat_bytes({**FIELDS, "best_bid": "101", "best_ask": "99"}, KLINE))
    assert isinstance(event, MarketEvent)
    assert event.best_bid > event.best_ask


@pytest.mark.parametrize(
    ("raw_ts", "expected"),
    [
        pytest.param(str(TS), TS, id="digits"),
        pytest.param(f"{TS}.0", TS, id="integral-float-text"),
        pytest.param("1.70000005e12", TS, id="exponent-text"),
        pytest.param(float(TS), TS, id="integral-json-float"),
        pytest.param(f"{TS}.5", "unreadable:not_an_integer:ts", id="fractional"),
        pytest.param("1e30", "unreadable:out_of_range:ts", id="beyond-int64"),
        pytest.param(-1, "unreadable:out_of_range:ts", id="negative"),
        pytest.param(True, "unreadable:not_a_number:ts", id="boolean"),
        pytest.param("1_700_000_050_000", "unreadable:not_a_number:ts", id="underscores"),
        pytest.param("soon", "unreadable:not_a_number:ts", id="word"),
    ],
)
def test_integer_fields_accept_only_integral_numbers(raw_ts: Any, expected: int | str) -> None:
    result = decode_entry({"data": json.dumps({**FIELDS, "ts": raw_ts, "kline": KLINE})})
    if isinstance(expected, int):
        assert isinstance(result, MarketEvent)
        assert result.ts == expected
    else:
        assert result == Rejected("unreadable", (expected,))


def test_all_reasons_are_gathered_in_field_order() -> None:
    fields = {**FIELDS, "mid": "abc", "best_bid": "-1", "funding_next": "nan"}
    del fields["source"]
    kline = {**KLINE, "volume": "-3"}
    del kline["open_time"]
    assert decode_entry(flat_bytes(fields, kline)) == Rejected(
        "unreadable",
        (
            "unreadable:missing_field:source",
            "unreadable:not_a_number:mid",
            "unreadable:non_positive:best_bid",
            "unreadable:negative:kline.volume",
            "unreadable:missing_field:kline.open_time",
            "unreadable:non_finite:funding_next",
        ),
    )


@pytest.mark.parametrize(
    ("kline", "reasons"),
    [
        # high 100.6 < close 100.7
        pytest.param(
            {"high": "100.6"}, ("unreadable:kline_high_below_range",), id="high-below-close"
        ),
        # low 100.6 > open 100.5
        pytest.param({"low": "100.6"}, ("unreadable:kline_low_above_range",), id="low-above-open"),
        # high 99 is below low 100 (and open, close); low 100 is fine
        pytest.param({"high": "99"}, ("unreadable:kline_high_below_range",), id="high-below-low"),
        pytest.param(
            {"high": "100", "low": "101"},
            ("unreadable:kline_high_below_range", "unreadable:kline_low_above_range"),
            id="inverted",
        ),
        pytest.param({"open": "101", "close": "100"}, (), id="open-and-close-on-the-extremes"),
    ],
)
def test_kline_range_consistency(kline: dict[str, str], reasons: tuple[str, ...]) -> None:
    result = decode_entry(flat_bytes(FIELDS, {**KLINE, **kline}))
    if reasons:
        assert result == Rejected("unreadable", reasons)
    else:
        assert isinstance(result, MarketEvent)


class ExplodingMapping(Mapping[bytes | str, bytes | str]):
    """A mapping that fails on any access, standing in for a broken client object."""

    def __getitem__(self, key: bytes | str) -> bytes | str:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[bytes | str]:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        return 1


def test_a_failing_mapping_becomes_a_reason_not_an_exception() -> None:
    assert decode_entry(ExplodingMapping()) == Rejected("unreadable", ("unreadable:undecodable",))


# --- properties ------------------------------------------------------------------------------

# Values on the edge of every rule (sign, zero, finiteness, integrality, ASCII, types): where a
# lenient fast path would accept what the checked decoder refuses.
BORDERLINE_VALUES: list[Any] = [
    "", "0", "0.0", "-0.0", "-1", "-1e-300", "5e-324", "1e308", "1e400", "-inf", "nan", "NaN",
    "Infinity", "1_0", "１００", " 7 ", "7\n", "+7", "0x10", "true", "null", "[1]", "{}", "1.5",
    "1700000050000.0", "1700000050000.5", "\ud800", "\x00",
    0, -1, -0.0, 1.5, 1e308, 10**400, -(10**19), 2**63, True, False, None, [1], {"a": 1},
    float("nan"), float("inf"), b"\xff", b"1_0", b"-2", b"", b" 3 ",
]  # fmt: skip
JUNK = st.one_of(
    st.sampled_from(BORDERLINE_VALUES),
    st.binary(max_size=8),
    st.text(max_size=8),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),
)
OPTIONAL = ["depth_bid_usdt", "depth_ask_usdt"]
TARGETS = [("fields", name) for name in [*FIELDS, *OPTIONAL]] + [("kline", name) for name in KLINE]
ENCODING_KINDS = ("flat-bytes", "flat-str", "data-bytes", "data-str")
REMOVED = object()


def encode_value(value: Any, as_bytes: bool) -> bytes | str:
    text = value if isinstance(value, str | bytes) else json.dumps(value)
    if isinstance(text, bytes):
        return text if as_bytes else text.decode("latin-1")
    return text.encode("utf-8", "surrogatepass") if as_bytes else text


def jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.decode("latin-1") if isinstance(v, bytes) else v for k, v in values.items()}


def mutated_entry(changes: list[tuple[str, str, Any]], kind: str) -> dict[bytes | str, bytes | str]:
    """The valid entry with (where, field, value) changes, in one of the encodings."""
    fields: dict[str, Any] = dict(FIELDS)
    kline: dict[str, Any] = dict(KLINE)
    for where, name, value in changes:
        target = fields if where == "fields" else kline
        if value is REMOVED:
            target.pop(name, None)
        else:
            target[name] = value
    if kind.startswith("data"):
        text = json.dumps({**jsonable(fields), "kline": jsonable(kline)})
        if kind == "data-bytes":
            return {b"data": text.encode("utf-8", "surrogatepass")}
        return {"data": text}
    as_bytes = kind == "flat-bytes"
    entry: dict[bytes | str, bytes | str] = {
        (k.encode() if as_bytes else k): encode_value(v, as_bytes) for k, v in fields.items()
    }
    entry[b"kline" if as_bytes else "kline"] = encode_value(json.dumps(jsonable(kline)), as_bytes)
    return entry


@pytest.mark.parametrize("kind", ENCODING_KINDS, ids=ENCODING_KINDS)
def test_fast_path_agrees_with_checked_decoder_on_every_single_edge_value(kind: str) -> None:
    # Exhaustive over one change: every field removed, or set to every borderline value.
    for where, name in TARGETS:
        for value in [*BORDERLINE_VALUES, REMOVED]:
            entry = mutated_entry([(where, name, value)], kind)
            assert decode_entry(entry) == _decode_checked(entry), (where, name, value)


@settings(max_examples=400, deadline=None)
@given(
    changes=st.lists(
        st.tuples(st.sampled_from(TARGETS), st.one_of(JUNK, st.just(REMOVED))), max_size=3
    ),
    kind=st.sampled_from(ENCODING_KINDS),
)
def test_fast_path_agrees_with_checked_decoder(
    changes: list[tuple[tuple[str, str], Any]], kind: str
) -> None:
    entry = mutated_entry([(where, name, value) for (where, name), value in changes], kind)
    result = decode_entry(entry)
    assert result == _decode_checked(entry)
    if isinstance(result, Rejected):
        assert result.category == "unreadable"
        assert result.reasons
        assert "unreadable:undecodable" not in result.reasons


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.one_of(st.binary(max_size=12), st.sampled_from(["data", "kline", "ts", "mid"])),
        st.one_of(st.binary(max_size=30), st.text(max_size=30)),
        max_size=12,
    )
)
def test_arbitrary_entries_never_raise_or_reach_the_safety_net(
    entry: dict[bytes | str, bytes | str],
) -> None:
    result = decode_entry(entry)
    assert isinstance(result, MarketEvent | Rejected)
    if isinstance(result, Rejected):
        assert "unreadable:undecodable" not in result.reasons
