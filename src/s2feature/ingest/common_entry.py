"""The fast path of `decode.decode_entry`: the common well-formed entry, with as few calls as
possible (entries are decoded one by one on the service's hot path).

`decode_common` returns the event or raises one of `NOT_COMMON` for anything unusual (a missing
field, an out-of-range value, unexpected types, `1_000`-style numbers). The caller then runs the
checked decoder, which gives the same event for every entry accepted here (the tests check that
exhaustively on edge values) and decides, with reasons, about everything else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

from s2feature.domain import Kline, MarketEvent

# Integer timestamps must fit an int64 column downstream; negative epoch times are not events.
MAX_INT: Final = 2**63 - 1
# Bytes are searched for the int, not for b"_": `b"_" in data` first tries the needle as an int,
# which raises and clears a TypeError on every call (about 9 times slower).
UNDERSCORE: Final = ord("_")


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
    """Raised inside the fast path: leave it and let the checked decoder say what is wrong."""


def _fast_float(raw: object) -> float:
    if type(raw) is bytes:
        if UNDERSCORE in raw:
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
        if UNDERSCORE in b"".join(raw):  # type: ignore[arg-type]
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
    if (type(raw) is bytes and UNDERSCORE not in raw) or (
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


def _decode_fields(entry: Mapping[Any, object], n: _Names) -> MarketEvent:
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
        and 0 <= ts <= MAX_INT
        and 0 <= open_time <= MAX_INT
        and 0 <= close_time <= MAX_INT
    ):
        raise _UnusualEntryError
    kline = Kline(o, h, lo, c, volume, open_time, close_time)
    source, symbol = _fast_text(entry[n.source]), _fast_text(entry[n.symbol])
    return MarketEvent(ts, source, symbol, mid, bid, ask, depth, kline, *optional)


def decode_common(fields: Mapping[bytes | str, bytes | str]) -> MarketEvent:
    """The event of a common entry (`data` JSON or flat fields); raises one of `NOT_COMMON`
    for any other."""
    data = fields.get(b"data")
    if data is None:
        data = fields.get("data")
    if data is not None:
        return _decode_fields(_fast_object(data), _STR_NAMES)
    return _decode_fields(fields, _BYTES_NAMES if b"kline" in fields else _STR_NAMES)


# Everything `decode_common` may raise for an entry it does not handle.
NOT_COMMON: Final = (
    _UnusualEntryError,
    KeyError,
    TypeError,
    ValueError,
    OverflowError,
    RecursionError,
)
