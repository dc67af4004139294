"""Store rows of snapshots, encoded straight from the `Snapshot`: the service's fast path.

The service stores and emits one JSON text per snapshot. Building the payload dict
(`Snapshot.to_payload`), walking all of it for non-finite numbers and encoding it took about
8 µs a snapshot; encoding msgspec Structs that mirror the payload, after checking the only
fields of a `Snapshot` that hold floats, gives the same bytes in about 3 µs. Tests hold the two
texts equal. Anything the fast path does not vouch for (a non-finite value, a key that is not a
valid document key) goes through `prepare_signal` of the payload dict, which raises the store's
usual error naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from s2feature import strict_json
from s2feature.domain import Dqc, FeatureValue, SeriesId, Snapshot
from s2feature.store.base import SignalRow, is_valid_key, prepare_signal

__all__ = ["prepare_passing_rows", "prepare_snapshot"]


class _Meta(msgspec.Struct):
    calc: Any
    bar_coverage: float
    inputs_until: int


class _Dqc(msgspec.Struct, rename={"passed": "pass"}):
    passed: bool
    missing: bool
    jump: bool
    bounds: bool
    note: str
    reasons: tuple[str, ...]


class _Payload(msgspec.Struct):
    """`Snapshot.to_payload`, field for field and in its order (msgspec writes fields in
    declaration order, so the texts match byte for byte)."""

    signal_id: str
    t0: int
    symbol: str
    venue: str
    market: str
    window: str
    features: Any
    meta: _Meta
    config_rev: str
    dqc: _Dqc
    source: str
    mode: str
    computed_at: int


_isfinite: Final = math.isfinite


def _floats_finite(snap: Snapshot) -> bool:
    """Whether every float the payload would carry is finite. Features and `bar_coverage` are
    the snapshot's float fields; `calc` is checked whole, as anything there would be encoded.
    (Float subclasses, such as numpy's, are checked by the encoder's hook.)"""
    for value in snap.features.values():
        if value.__class__ is float and not _isfinite(value):
            return False
    return _isfinite(snap.bar_coverage) and strict_json.all_finite(snap.calc)


def prepare_snapshot(snap: Snapshot, mode: str, computed_at: int) -> SignalRow:
    """The checked store row of a snapshot's payload, as `prepare_signal(snap.to_payload(mode,
    computed_at))` gives it (and raising the same StoreError when the payload is not storable)."""
    series = snap.series
    signal_id = snap.signal_id
    if not (_floats_finite(snap) and is_valid_key(signal_id)):
        return prepare_signal(snap.to_payload(mode, computed_at))  # raises, naming the field
    dqc = snap.dqc
    payload = _Payload(
        signal_id,
        snap.t0,
        series.symbol,
        series.venue,
        series.market,
        snap.window,
        snap.features,
        _Meta(snap.calc, snap.bar_coverage, snap.inputs_until),
        snap.config_rev,
        _Dqc(dqc.passed, dqc.missing, dqc.jump, dqc.bounds, dqc.note, dqc.reasons),
        "s2",
        mode,
        computed_at,
    )
    try:
        text = strict_json.encode_checked(payload).decode()
    except (ValueError, TypeError):  # a non-finite float subclass, a value JSON has no type for
        return prepare_signal(snap.to_payload(mode, computed_at))
    return SignalRow(signal_id, series.symbol, snap.window, snap.t0, text)


_PASSED_DQC: Final = _Dqc(True, False, False, False, "", ())


def prepare_passing_rows(
    series: SeriesId,
    window: str,
    config_rev: str,
    mode: str,
    computed_at: int,
    t0s: Sequence[int],
    features: Sequence[dict[str, FeatureValue]],
    calcs: Sequence[dict[str, str]],
    coverages: Sequence[float],
    inputs_until: Sequence[int],
) -> list[SignalRow]:
    """`prepare_snapshot` of the snapshots of one window with these parts and a passing DQC
    verdict, without building the `Snapshot`s: the recompute's path, a column at a time.

    The caller vouches that every float here is an exact, finite `float` (it checks whole
    columns at once); the texts are the ones `prepare_snapshot` gives (tests hold them equal).
    The keys are checked once: they differ only in the digits of t0 (and a sign), which the key
    pattern admits, so when the longest ones are valid, all are.
    """
    symbol, venue, market = series.symbol, series.venue, series.market
    prefix = f"{symbol}:{window}:"
    if t0s and not (is_valid_key(f"{prefix}{min(t0s)}") and is_valid_key(f"{prefix}{max(t0s)}")):
        return [  # per snapshot: raises the store's error naming the key
            prepare_snapshot(
                Snapshot(series, window, t0, feats, Dqc(), config_rev, cov, until, calc),
                mode,
                computed_at,
            )
            for t0, feats, calc, cov, until in zip(
                t0s, features, calcs, coverages, inputs_until, strict=True
            )
        ]
    encode = strict_json.encode_checked
    rows = []
    for t0, feats, calc, cov, until in zip(
        t0s, features, calcs, coverages, inputs_until, strict=True
    ):
        signal_id = f"{prefix}{t0}"
        payload = _Payload(
            signal_id,
            t0,
            symbol,
            venue,
            market,
            window,
            feats,
            _Meta(calc, cov, until),
            config_rev,
            _PASSED_DQC,
            "s2",
            mode,
            computed_at,
        )
        rows.append(SignalRow(signal_id, symbol, window, t0, encode(payload).decode()))
    return rows
