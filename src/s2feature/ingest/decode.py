"""Decoding of input stream entries into `MarketEvent`s (SPEC §3).

An entry either has one field `data` holding a JSON object, or flat fields where the nested
`kline` object is a JSON string. Keys and values may be `bytes` (a Redis client without
`decode_responses`) or `str`; numbers may be JSON numbers or numeric strings.

This is the hot path of the service, so fields are parsed by hand. Nothing here raises for bad
input: every problem of an entry becomes a reason of one `Rejected("unreadable", ...)`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

from s2feature.domain import Kline, MarketEvent
from s2feature.dqc.events import Rejected

__all__ = ["Rejected", "decode_entry"]

# Integer timestamps must fit an int64 column downstream; negative epoch times are not events.
_MAX_INT: Final = 2**63 - 1
_KLINE_PRICES: Final = ("open", "high", "low", "close")
_OPTIONAL_NON_NEGATIVE: Final = ("best_bid_qty", "best_ask_qty", "depth_bid_usdt", "depth_ask_usdt")

# Sentinel results of the raw parsers: a reason kind instead of a value.
_NOT_A_NUMBER: Final = "not_a_number"
_NOT_AN_INTEGER: Final = "not_an_integer"
# Bytes are searched for the int, not for b"_": `b"_" in data` first tries the needle as an int,
# which raises and clears a TypeError on every call (about 9 times slower).
_UNDERSCORE: Final = ord("_")


def _unreadable(kind: str, name: str) -> str:
    return f"unreadable:{kind}:{name}"


def _float_of(raw: object) -> float | None:
    """A float from a JSON number or a plain ASCII numeric string; None if it is not one.

    Python's `float()` also takes Unicode digits and `1_000`; a feed sending those is broken,
    so they are refused. Booleans are ints in Python but never numbers here.
    """
    if type(raw) is float:
        return raw
    if type(raw) is str:
        if not raw.isascii() or "_" in raw:
            return None
        try:
            return float(raw)
        except ValueError:
            return None
    if isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
        if _UNDERSCORE in data:
            return None
        try:
            return float(data)  # bytes are parsed as ASCII only
        except ValueError:
            return None
    if type(raw) is int:
        try:
            return float(raw)
        except OverflowError:
            return math.inf  # e.g. 10**400 as a JSON integer: a number, but not a finite one
    return None


def _int_of(raw: object) -> int | str:
    """An int from a JSON integer, an integral float or a numeric string; else a reason kind."""
    if type(raw) is int:
        return raw
    if type(raw) is bytes:
        raw = raw.decode("ascii", "replace")  # a replaced byte fails the isascii check below
    if type(raw) is str:
        if not raw.isascii() or "_" in raw:
            return _NOT_A_NUMBER
        try:
            return int(raw)
        except ValueError:
            pass  # maybe "1.7e12" or "1700000000000.0": go through float below
    value = _float_of(raw)
    if value is None:
        return _NOT_A_NUMBER
    if not math.isfinite(value) or not value.is_integer():
        return _NOT_AN_INTEGER
    return int(value)


def _parse_int(obj: Mapping[str, object], name: str, label: str, reasons: list[str]) -> int:
    raw = obj.get(name)
    if raw is None:
        reasons.append(_unreadable("missing_field", label))
        return 0
    value = _int_of(raw)
    if isinstance(value, str):
        reasons.append(_unreadable(value, label))
        return 0
    if not 0 <= value <= _MAX_INT:
        reasons.append(_unreadable("out_of_range", label))
        return 0
    return value


def _parse_float(
    obj: Mapping[str, object], name: str, label: str, reasons: list[str], low: str | None
) -> float:
    """A required number; `low` is "positive", "non_negative" or None (any finite value)."""
    raw = obj.get(name)
    if raw is None:
        reasons.append(_unreadable("missing_field", label))
        return math.nan
    return _check_float(raw, label, reasons, low)


def _check_float(raw: object, label: str, reasons: list[str], low: str | None) -> float:
    value = _float_of(raw)
    if value is None:
        reasons.append(_unreadable(_NOT_A_NUMBER, label))
        return math.nan
    if not math.isfinite(value):
        reasons.append(_unreadable("non_finite", label))
        return math.nan
    if low == "positive" and value <= 0:
        reasons.append(_unreadable("non_positive", label))
    elif low == "non_negative" and value < 0:
        reasons.append(_unreadable("negative", label))
    return value


def _parse_optional_float(
    obj: Mapping[str, object], name: str, reasons: list[str], low: str | None
) -> float | None:
    """An optional number: absent, JSON null or an empty string all mean "not carried"."""
    raw = obj.get(name)
    if raw is None or raw == "" or raw == b"":
        return None
    return _check_float(raw, name, reasons, low)


def _parse_text(obj: Mapping[str, object], name: str, reasons: list[str]) -> str:
    raw = obj.get(name)
    if raw is None:
        reasons.append(_unreadable("missing_field", name))
        return ""
    if type(raw) is bytes:
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            reasons.append(_unreadable("not_utf8", name))
            return ""
    if type(raw) is not str:
        reasons.append(_unreadable("not_a_string", name))
        return ""
    if not raw:
        reasons.append(_unreadable("empty", name))
    return raw


def _json_object(raw: object, name: str, reasons: list[str]) -> Mapping[str, object] | None:
    """A JSON object from a nested object or its JSON text; None (with a reason) otherwise."""
    if isinstance(raw, dict):
        return raw
    if type(raw) is bytes:
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            reasons.append(_unreadable("not_utf8", name))
            return None
    if type(raw) is not str:
        reasons.append(_unreadable("not_an_object", name))
        return None
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        reasons.append("unreadable:not_json" if name == "data" else f"unreadable:not_json:{name}")
        return None
    if not isinstance(parsed, dict):
        reasons.append(_unreadable("not_an_object", name))
        return None
    return parsed


def _parse_kline(raw: object, reasons: list[str]) -> Kline | None:
    obj = _json_object(raw, "kline", reasons)
    if obj is None:
        return None
    before = len(reasons)
    o, h, lo, c = (
        _parse_float(obj, name, f"kline.{name}", reasons, "positive") for name in _KLINE_PRICES
    )
    volume = _parse_float(obj, "volume", "kline.volume", reasons, "non_negative")
    open_time = _parse_int(obj, "open_time", "kline.open_time", reasons)
    close_time = _parse_int(obj, "close_time", "kline.close_time", reasons)
    if len(reasons) > before:
        return None
    if h < max(o, c, lo):
        reasons.append("unreadable:kline_high_below_range")
    if lo > min(o, c):
        reasons.append("unreadable:kline_low_above_range")
    if len(reasons) > before:
        return None
    return Kline(o, h, lo, c, volume, open_time, close_time)


def _decode_object(obj: Mapping[str, object]) -> MarketEvent | Rejected:
    reasons: list[str] = []
    ts = _parse_int(obj, "ts", "ts", reasons)
    source = _parse_text(obj, "source", reasons)
    symbol = _parse_text(obj, "symbol", reasons)
    mid = _parse_float(obj, "mid", "mid", reasons, "positive")
    best_bid = _parse_float(obj, "best_bid", "best_bid", reasons, "positive")
    best_ask = _parse_float(obj, "best_ask", "best_ask", reasons, "positive")
    depth = _parse_float(obj, "depth_top1_usdt", "depth_top1_usdt", reasons, "non_negative")
    raw_kline = obj.get("kline")
    if raw_kline is None:
        reasons.append(_unreadable("missing_field", "kline"))
        kline = None
    else:
        kline = _parse_kline(raw_kline, reasons)
    optional = [_parse_optional_float(obj, "funding_next", reasons, None)]
    optional += [
        _parse_optional_float(obj, name, reasons, "non_negative") for name in _OPTIONAL_NON_NEGATIVE
    ]
    if reasons or kline is None:
        return Rejected("unreadable", tuple(reasons))
    return MarketEvent(ts, source, symbol, mid, best_bid, best_ask, depth, kline, *optional)


class _Names:
    """The top-level field names as keys of one entry's mapping (`bytes` or `str`)."""

    def __init__(self, encode: bool) -> None:
        def key(name: str) -> bytes | str:
            return name.encode() if encode else name

        self.ts, self.source, self.symbol = key("ts"), key("source"), key("symbol")
        self.mid, self.bid, self.ask = key("mid"), key("best_bid"), key("best_ask")
        self.depth, self.funding = key("depth_top1_usdt"), key("funding_next")
        self.bid_qty, self.ask_qty = key("best_bid_qty"), key("best_ask_qty")
        self.depth_bid, self.depth_ask = key("depth_bid_usdt"), key("depth_ask_usdt")
        self.kline, self.data = key("kline"), key("data")
        # In `MarketEvent` order: funding_next, best_bid_qty, best_ask_qty, depth_bid/ask_usdt.
        self.optional = (self.funding, self.bid_qty, self.ask_qty, self.depth_bid, self.depth_ask)


_BYTES_NAMES: Final = _Names(encode=True)
_STR_NAMES: Final = _Names(encode=False)
_INF: Final = math.inf
# Raw values of an optional field that mean "not carried" (compared with ==, so 0 is a value).
_ABSENT: Final = (None, b"", "")


class _UnusualEntryError(Exception):
    """Raised inside the fast path: leave it and let the checked path say what is wrong."""


def _fast_float(raw: object) -> float:
    if type(raw) is bytes:
        if _UNDERSCORE in raw:
            raise _UnusualEntryError
        return float(raw)  # ValueError for non-numbers: handled by the caller
    if type(raw) is float:
        return raw
    if type(raw) is str and raw.isascii() and "_" not in raw:
        return float(raw)
    if type(raw) is int:
        return float(raw)  # OverflowError for huge ints: handled by the caller
    raise _UnusualEntryError


def _fast_floats(raw: tuple[object, ...]) -> list[float]:
    """Several values at once: text values are checked in one piece and parsed by one `map`."""
    if type(raw[0]) is bytes:
        # join raises TypeError unless all are bytes-like (the checked path then decides)
        if _UNDERSCORE in b"".join(raw):  # type: ignore[arg-type]
            raise _UnusualEntryError
    elif type(raw[0]) is str:
        joined = "".join(raw)  # type: ignore[arg-type]
        if not joined.isascii() or "_" in joined:
            raise _UnusualEntryError
    else:
        return [_fast_float(value) for value in raw]
    return list(map(float, raw))  # type: ignore[arg-type]


def _fast_int(raw: object) -> int:
    """An int from an int or ASCII digits; the range is checked by the caller."""
    if type(raw) is int:
        return raw
    if (type(raw) is bytes and _UNDERSCORE not in raw) or (
        type(raw) is str and raw.isascii() and "_" not in raw
    ):
        return int(raw)  # "1.7e12" raises ValueError: the checked path accepts it
    raise _UnusualEntryError


def _fast_text(raw: object) -> str:
    text = raw.decode("utf-8") if type(raw) is bytes else raw
    if type(text) is not str or not text:
        raise _UnusualEntryError
    return text


def _fast_object(raw: object) -> dict[str, object]:
    if type(raw) is dict:
        return raw
    if type(raw) is bytes:
        # Decode strictly first: json.loads(bytes) would also guess UTF-16/32.
        raw = raw.decode("utf-8")
    if type(raw) is not str:
        raise _UnusualEntryError
    obj = json.loads(raw)
    if type(obj) is not dict:
        raise _UnusualEntryError
    return obj


def _decode_fast(entry: Mapping[Any, object], n: _Names) -> MarketEvent:
    """The common well-formed entry, with as few calls as possible.

    Raises (KeyError, ValueError, ...) for anything it does not handle; the caller then runs
    the checked path, which gives the same event for every entry this accepts (a property the
    tests check exhaustively on edge values) and decides, with reasons, everything else.
    """
    k = _fast_object(entry[n.kline])
    o, h, lo, c, volume = _fast_floats((k["open"], k["high"], k["low"], k["close"], k["volume"]))
    mid, bid, ask, depth = _fast_floats((entry[n.mid], entry[n.bid], entry[n.ask], entry[n.depth]))
    raw_optional = tuple(map(entry.get, n.optional))
    optional: list[float | None]
    if None in raw_optional:  # some optional field is not carried: value by value
        optional = [None if raw in _ABSENT else _fast_float(raw) for raw in raw_optional]
    else:
        optional = list(_fast_floats(raw_optional))
    funding, bid_qty, ask_qty, depth_bid, depth_ask = optional
    ts, open_time, close_time = entry[n.ts], k["open_time"], k["close_time"]
    if type(ts) is not int:
        ts = _fast_int(ts)
    if type(open_time) is not int:
        open_time = _fast_int(open_time)
    if type(close_time) is not int:
        close_time = _fast_int(close_time)
    # One comparison chain for every rule; NaN fails every comparison, so it is caught as well.
    if not (
        0 < mid < _INF
        and 0 < bid < _INF
        and 0 < ask < _INF
        and 0 < lo <= o <= h < _INF
        and lo <= c <= h
        and 0 <= volume < _INF
        and 0 <= depth < _INF
        and (funding is None or -_INF < funding < _INF)
        and (bid_qty is None or 0 <= bid_qty < _INF)
        and (ask_qty is None or 0 <= ask_qty < _INF)
        and (depth_bid is None or 0 <= depth_bid < _INF)
        and (depth_ask is None or 0 <= depth_ask < _INF)
        and 0 <= ts <= _MAX_INT
        and 0 <= open_time <= _MAX_INT
        and 0 <= close_time <= _MAX_INT
    ):
        raise _UnusualEntryError
    kline = Kline(o, h, lo, c, volume, open_time, close_time)
    source, symbol = _fast_text(entry[n.source]), _fast_text(entry[n.symbol])
    return MarketEvent(ts, source, symbol, mid, bid, ask, depth, kline, *optional)


def _text_keys(fields: Mapping[bytes | str, bytes | str]) -> dict[str, object]:
    """The entry with `str` keys; undecodable or non-string keys cannot name a field."""
    out: dict[str, object] = {}
    for key, value in fields.items():
        if type(key) is bytes:
            out[key.decode("utf-8", "replace")] = value
        elif type(key) is str:
            out[key] = value
    return out


# Everything the fast path may raise for an entry it does not handle.
_NOT_FAST: Final = (
    _UnusualEntryError,
    KeyError,
    TypeError,
    ValueError,
    OverflowError,
    RecursionError,
)


def _decode_checked(fields: Mapping[bytes | str, bytes | str]) -> MarketEvent | Rejected:
    """The reference decoder: checks every field and gathers every reason."""
    entry = _text_keys(fields)
    if not entry:
        return Rejected("unreadable", ("unreadable:empty_entry",))
    raw_data = entry.get("data")
    if raw_data is None:
        return _decode_object(entry)
    reasons: list[str] = []
    obj = _json_object(raw_data, "data", reasons)
    if obj is None:
        return Rejected("unreadable", tuple(reasons))
    return _decode_object(obj)


def _decode(fields: Mapping[bytes | str, bytes | str]) -> MarketEvent | Rejected:
    try:
        data = fields.get(b"data")
        if data is None:
            data = fields.get("data")
        if data is not None:
            return _decode_fast(_fast_object(data), _STR_NAMES)
        return _decode_fast(fields, _BYTES_NAMES if b"kline" in fields else _STR_NAMES)
    except _NOT_FAST:
        return _decode_checked(fields)


def decode_entry(fields: Mapping[bytes | str, bytes | str]) -> MarketEvent | Rejected:
    """Decode one stream entry (`data` JSON or flat fields) into an event, or say why not.

    All problems of the entry are reported, in field order. A crossed book (bid > ask) is not a
    decoding problem: the snapshot bounds check flags the negative spread.
    """
    try:
        return _decode(fields)
    except Exception:  # the service must survive any entry; the tests keep this branch unused
        return Rejected("unreadable", ("unreadable:undecodable",))
