"""Redis key names of the service (SPEC §8)."""

from __future__ import annotations


def events_key(symbol: str) -> str:
    return f"feat:events:{symbol}"


def last_key(symbol: str) -> str:
    return f"feat:last:{symbol}"


def cache_key(symbol: str) -> str:
    # The {cache} hash tag is the SPEC's key name; it keeps every checkpoint in one slot.
    return f"feat:{{cache}}:{symbol}"


def lease_key(symbol: str) -> str:
    # The checkpoint's hash tag: the fenced checkpoint write touches both in one script.
    return f"feat:{{cache}}:{symbol}:owner"


def dead_letter_key(symbol: str) -> str:
    return f"feat:dlq:{symbol}"


def fx_bars_key(symbol: str) -> str:
    """The FX series' final base bars, published by its owner for every instance."""
    return f"feat:fxbars:{symbol}"
