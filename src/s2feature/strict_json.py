"""Strict JSON for every document the service writes: store docs, emits, `feat:last`, checkpoints.

One shared msgspec encoder, several times faster than `json.dumps` on a snapshot payload. Its
output is compact UTF-8 and reads back to the same values as `json.dumps` would (floats are
written with the shortest text that round-trips).

msgspec writes NaN and infinities as `null`, where `json.dumps(allow_nan=False)` raised. A
silent `null` would hide a bug (features that cannot be computed are None, never NaN, and a
non-finite value is not a number any reader could use), so `encode` refuses documents holding a
non-finite float, as before: NonFiniteError names the path of the first one.
"""

from __future__ import annotations

import math
from typing import Any, Final

import msgspec

__all__ = ["NonFiniteError", "all_finite", "encode", "encode_checked", "non_finite_path"]


class NonFiniteError(ValueError):
    """The document holds NaN or an infinity, which JSON cannot represent."""


def _float_subclass(value: Any) -> float:
    """msgspec encodes exact floats itself and hands other types here: float subclasses such as
    numpy.float64, which `json.dumps` took as floats, are checked and encoded as floats."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NonFiniteError(f"non-finite number {value!r}")
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


_ENCODER: Final = msgspec.json.Encoder(enc_hook=_float_subclass)


_NESTED: Final = frozenset({dict, list, tuple})
_isfinite: Final = math.isfinite


def all_finite(value: Any) -> bool:
    """Whether no exact float inside `value` is NaN or infinite (float subclasses are checked by
    the encoder's hook). Written for speed: it runs on every document the service writes."""
    kind = type(value)
    if kind is float:
        return _isfinite(value)
    if kind is dict:
        items = value.values()
    elif kind is list or kind is tuple:
        first = type(value[0]) if value else None
        if first is float or first is int:
            try:
                # Long lists of numbers (checkpointed histories) in one C loop: a sum of numbers
                # is finite only when every one of them is. Anything else is checked item by
                # item (as are lists of text, where the sum would raise at every call).
                if _isfinite(sum(value)):
                    return True
            except (TypeError, OverflowError):
                pass
        items = value
    else:
        return True
    for item in items:
        kind = type(item)
        if kind is float:
            if not _isfinite(item):
                return False
        elif kind in _NESTED and not all_finite(item):
            return False
    return True


def non_finite_path(value: Any, path: str = "") -> str | None:
    """Path (`.key`, `[index]`) of the first NaN or infinity inside `value`, `.` for the value
    itself; None when there is none."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path or "."
    if isinstance(value, dict):
        for key, item in value.items():
            found = non_finite_path(item, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = non_finite_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def encode(doc: Any) -> bytes:
    """Compact UTF-8 JSON of `doc`. NonFiniteError for NaN or infinities, TypeError for values
    JSON has no type for (and for dict keys other than strings and numbers)."""
    if not all_finite(doc):
        raise NonFiniteError(f"non-finite number at {non_finite_path(doc)}")
    return _ENCODER.encode(doc)


def encode_checked(doc: Any) -> bytes:
    """`encode` of a document whose exact floats the caller has already checked (see
    `all_finite`), or one holding pre-encoded `msgspec.Raw` texts; float subclasses are still
    checked. msgspec would write a non-finite exact float as `null`: never pass unchecked ones."""
    return _ENCODER.encode(doc)
