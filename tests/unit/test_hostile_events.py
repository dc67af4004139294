"""Malformed and hostile stream entries through the whole ingest: none raises, the dropped ones
change no state, and each gets the expected DQC category and reasons."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from s2feature.config.bundle import ConfigBundle
from s2feature.domain import SeriesId
from s2feature.ingest.stream import StreamIngestor

MINUTE = 60_000
A = 1_700_000_040_000  # open time of the current bar of the warmed-up stream
SERIES = SeriesId("binance", "fut", "BTCUSDT")

KLINE: dict[str, Any] = {"open": "100", "high": "101", "low": "99", "close": "100.5",
                         "volume": "3", "open_time": A, "close_time": A + MINUTE - 1}  # fmt: skip
FIELDS: dict[str, Any] = {"ts": A + 3000, "source": "binance", "symbol": "BTCUSDT", "mid": "100",
                          "best_bid": "99.95", "best_ask": "100.05", "depth_top1_usdt": "2e5",
                          "funding_next": "1e-4"}  # fmt: skip
DROP = object()  # marks a field to leave out


def flat(
    kline_changes: Mapping[str, Any] | None = None, **changes: Any
) -> dict[bytes | str, bytes | str]:
    """A flat entry with bytes keys and values, as redis-py returns it; `DROP` removes a field."""
    values = {**FIELDS, "kline": json.dumps({**KLINE, **(kline_changes or {})}), **changes}
    return {
        k.encode(): v if isinstance(v, bytes) else str(v).encode()
        for k, v in values.items()
        if v is not DROP
    }


def data(text: str | bytes) -> dict[bytes | str, bytes | str]:
    return {b"data": text.encode() if isinstance(text, str) else text}


def data_object(kline: Any = None, **changes: Any) -> dict[bytes | str, bytes | str]:
    """A `data` entry whose JSON object has the given fields replaced."""
    return data(json.dumps({**FIELDS, "kline": KLINE if kline is None else kline, **changes}))


def warmed_ingestor() -> StreamIngestor:
    """Two accepted events in bar A, the last at ts A + 2000."""
    ingestor = StreamIngestor(SERIES, ConfigBundle())
    for ts in (A + 1000, A + 2000):
        outcome = ingestor.on_entry(flat(ts=ts))
        assert outcome.accepted
    return ingestor


ACCEPTED = "accepted"
# (id, entry, expected reason: its prefix is the DQC category; or ACCEPTED)
CASES: list[tuple[str, dict[bytes | str, bytes | str], str]] = [
    ("missing-mid", flat(mid=DROP), "unreadable:missing_field:mid"),
    ("missing-kline", flat(kline=DROP), "unreadable:missing_field:kline"),
    ("word-for-number", flat(best_bid="cheap"), "unreadable:not_a_number:best_bid"),
    ("json-nan", data_object(mid=float("nan")), "unreadable:non_finite:mid"),
    ("text-nan", flat(mid="nan"), "unreadable:non_finite:mid"),
    ("text-inf", flat(best_ask="inf"), "unreadable:non_finite:best_ask"),
    (
        "text-minus-infinity",
        flat(depth_top1_usdt="-Infinity"),
        "unreadable:non_finite:depth_top1_usdt",
    ),
    ("zero-price", flat(mid="0"), "unreadable:non_positive:mid"),
    ("negative-price", flat(best_bid="-99.95"), "unreadable:non_positive:best_bid"),
    ("negative-kline-low", flat({"low": "-1"}), "unreadable:non_positive:kline.low"),
    ("negative-depth", flat(depth_top1_usdt="-5"), "unreadable:negative:depth_top1_usdt"),
    ("huge-1e400-text", flat({"volume": "1" + "0" * 400}), "unreadable:non_finite:kline.volume"),
    ("huge-int-json", data_object(mid=10**400), "unreadable:non_finite:mid"),
    ("huge-ts", flat(ts="1" + "0" * 400), "unreadable:out_of_range:ts"),
    ("unicode-digits", flat(mid="１００"), "unreadable:not_a_number:mid"),
    ("unicode-junk-symbol", flat(symbol="BTC\u200bUSDT"), "unreadable:symbol_mismatch"),
    ("empty-entry", {}, "unreadable:empty_entry"),
    ("data-not-object", data("[1, 2, 3]"), "unreadable:not_an_object:data"),
    ("data-not-json", data("{'ts': 1}"), "unreadable:not_json"),
    ("data-deeply-nested", data("[" * 100_000), "unreadable:not_json"),
    ("data-not-utf8", data(b"\xff\xfe{}"), "unreadable:not_utf8:data"),
    ("symbol-not-utf8", flat(symbol=b"BTC\xffUSDT"), "unreadable:not_utf8:symbol"),
    ("boolean-price", data_object(mid=True), "unreadable:not_a_number:mid"),
    ("boolean-ts", data_object(ts=False), "unreadable:not_a_number:ts"),
    ("kline-list", data_object(kline=[100, 101, 99, 100.5]), "unreadable:not_an_object:kline"),
    ("kline-not-json", {**flat(), b"kline": b"{open: 100}"}, "unreadable:not_json:kline"),
    ("fractional-ts", flat(ts=f"{A + 3000}.5"), "unreadable:not_an_integer:ts"),
    ("ts-backwards", flat(ts=A + 1999), "time_order:ts_backwards"),
    ("kline-open-equals-close", flat({"close_time": A}), "time_order:kline_open_not_before_close"),
    (
        "kline-regressed",
        flat({"open_time": A - MINUTE, "close_time": A - 1}),
        "time_order:kline_regressed",
    ),
    (
        "kline-off-grid",
        flat({"open_time": A + 1, "close_time": A + MINUTE}),
        "unreadable:kline_not_on_base_grid",
    ),
    ("symbol-mismatch", flat(symbol="ETHUSDT"), "unreadable:symbol_mismatch"),
    ("high-below-close", flat({"high": "100.2"}), "unreadable:kline_high_below_range"),
    ("crossed-book", flat(best_bid="100.1", best_ask="99.9"), ACCEPTED),
    ("huge-1e308-depth", flat(depth_top1_usdt="1e308"), ACCEPTED),
    ("equal-ts", flat(ts=A + 2000, mid="100.01"), ACCEPTED),
    ("unknown-extra-fields", {**flat(), b"\xff\xfe": b"\x00", b"note": b"hi"}, ACCEPTED),
]


@pytest.mark.parametrize(("entry", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_entry_outcome(entry: dict[bytes | str, bytes | str], expected: str) -> None:
    ingestor = warmed_ingestor()
    before = ingestor.snapshot()
    outcome = ingestor.on_entry(entry)
    if expected == ACCEPTED:
        assert outcome.rejected is None
        assert outcome.event is not None
        assert ingestor.snapshot() != before
    else:
        assert outcome.rejected is not None
        assert outcome.rejected.category == expected.split(":")[0]
        assert outcome.rejected.reasons == (expected,)
        assert outcome.bars == []
        assert ingestor.snapshot() == before


def test_there_are_at_least_25_distinct_hostile_cases() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 25


def test_duplicated_event_is_accepted_and_changes_nothing() -> None:
    ingestor = warmed_ingestor()
    before = ingestor.snapshot()
    outcome = ingestor.on_entry(flat(ts=A + 2000))  # the last accepted entry, again
    assert (outcome.accepted, outcome.duplicate, outcome.bars, outcome.jumped) == (
        True,
        True,
        [],
        False,
    )
    assert ingestor.snapshot() == before


def test_duplicate_in_the_other_encoding_is_still_a_duplicate() -> None:
    ingestor = warmed_ingestor()
    before = ingestor.snapshot()
    assert ingestor.on_entry(data_object(ts=A + 2000)).duplicate
    assert ingestor.snapshot() == before


def test_a_burst_of_hostile_entries_leaves_the_stream_as_it_was() -> None:
    # Every dropped entry in a row, then a good event: the result is that of the good event alone.
    hostile = warmed_ingestor()
    for _, entry, expected in CASES:
        if expected != ACCEPTED:
            hostile.on_entry(entry)
    clean = warmed_ingestor()
    assert hostile.snapshot() == clean.snapshot()
    next_bar = flat(
        ts=A + MINUTE + 1, kline={"open_time": A + MINUTE, "close_time": A + 2 * MINUTE - 1}
    )
    assert hostile.on_entry(next_bar) == clean.on_entry(next_bar)


def bar_entry(ts: int, open_minute: int, mid: str = "100") -> dict[bytes | str, bytes | str]:
    open_time = A + open_minute * MINUTE
    return flat({"open_time": open_time, "close_time": open_time + MINUTE - 1}, ts=ts, mid=mid)


def test_jump_flags_reach_the_bar_through_the_ingestor() -> None:
    # lookback 3: after mids 100, 100, 100 the median is 100 and the MAD 0 (floored at 1e-3),
    # so 150 is a jump; it is carried by bar A's kline, so bar A counts one.
    bundle = ConfigBundle().with_overrides(dqc={"jump_lookback": 3})
    ingestor = StreamIngestor(SERIES, bundle)
    outcomes = [ingestor.on_entry(bar_entry(A + i, 0)) for i in range(3)]
    jump = ingestor.on_entry(bar_entry(A + 3, 0, mid="150"))
    (bar,) = ingestor.on_entry(bar_entry(A + MINUTE, 1)).bars
    assert [o.jumped for o in outcomes] + [jump.jumped] == [False, False, False, True]
    assert (bar.open_time, bar.jump_count, bar.mid) == (A, 1, 150.0)


def test_ingestor_restored_anywhere_in_a_hostile_stream_continues_identically() -> None:
    # Good events over four bars, with every hostile case and a duplicate woven in.
    good = [
        bar_entry(A + 1000 * i + 60_000 * (i // 5), i // 5, mid=str(100 + i % 3)) for i in range(20)
    ]
    hostile = [entry for _, entry, _ in CASES]
    entries = [e for pair in zip(good, hostile[: len(good)], strict=True) for e in pair]
    entries += [*hostile[len(good) :], good[-1], bar_entry(A + 9 * MINUTE + 1, 9)]
    uninterrupted = StreamIngestor(SERIES, ConfigBundle())
    expected = [uninterrupted.on_entry(e) for e in entries]
    assert sum(len(o.bars) for o in expected) == 4
    for cut in range(0, len(entries) + 1, 3):
        first = StreamIngestor(SERIES, ConfigBundle())
        head = [first.on_entry(e) for e in entries[:cut]]
        second = StreamIngestor(SERIES, ConfigBundle())
        second.restore(json.loads(json.dumps(first.snapshot())))
        assert head + [second.on_entry(e) for e in entries[cut:]] == expected, cut
