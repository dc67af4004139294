"""Decoding of input stream entries into `MarketEvent`s (SPEC §3).

An entry either has one field `data` holding a JSON object, or flat fields where the nested
`kline` object is a JSON string. Keys and values may be `bytes` (a Redis client without
`decode_responses`) or `str`; numbers may be JSON numbers or numeric strings.

This is the hot path of the service, so fields are parsed by hand: the common well-formed entry
by `common_entry.decode_common`, with as few calls as possible, and anything else by the checked
decoder here, which gives the same event for every entry the fast path accepts. Nothing here
raises for bad input: every problem of an entry becomes a reason of one
`Rejected("unreadable", ...)`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Final

from s2feature.domain import Kline, MarketEvent
from s2feature.dqc.events import Rejected
from s2feature.ingest.common_entry import MAX_INT, NOT_COMMON, UNDERSCORE, decode_common

__all__ = ["Rejected", "decode_entry"]

_KLINE_PRICES: Final = ("open", "high", "low", "close")
_OPTIONAL_NON_NEGATIVE: Final = ("best_bid_qty", "best_ask_qty", "depth_bid_usdt", "depth_ask_usdt")

# Sentinel results of the raw parsers: a reason kind instead of a value.
_NOT_A_NUMBER: Final = "not_a_number"
_NOT_AN_INTEGER: Final = "not_an_integer"


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
        if UNDERSCORE in data:
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
    if not 0 <= value <= MAX_INT:
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


def _text_keys(fields: Mapping[bytes | str, bytes | str]) -> dict[str, object]:
    """The entry with `str` keys; undecodable or non-string keys cannot name a field."""
    out: dict[str, object] = {}
    for key, value in fields.items():
        if type(key) is bytes:
            out[key.decode("utf-8", "replace")] = value
        elif type(key) is str:
            out[key] = value
    return out


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
        return decode_common(fields)
    except NOT_COMMON:
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
