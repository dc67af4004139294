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
from functools import partial
from itertools import repeat
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
_new_row: Final = partial(tuple.__new__, SignalRow)  # SignalRow(*fields), without its checks
_json: Final = msgspec.json.Encoder()  # for lists of plain numbers, True/False and None only


def _json_texts(column: Sequence[Any]) -> list[str]:
    """The JSON text of each value of a column, as it appears inside a document.

    A column of numbers, booleans and None is encoded in one call and split at its commas (no
    such text holds one), where a value at a time would cost a call each; NaN is written as
    `null`, which is what the columns mean by it. Any other column (labels) is encoded value by
    value, each distinct value once."""
    if not column:
        return []
    whole = _json.encode(column if isinstance(column, list) else list(column))
    if b'"' not in whole and whole.count(b"[") == 1 and b"{" not in whole:
        return whole.decode()[1:-1].split(",")
    texts: dict[Any, str] = {}
    out = []
    for value in column:
        text = texts.get(value)
        if text is None:
            text = texts[value] = strict_json.encode(value).decode()
        out.append(text)
    return out


def _template_part(text: str) -> str:
    return text.replace("%", "%%")  # constants go into a %-format template


def _json_text(value: Any) -> str:
    return strict_json.encode(value).decode()


def prepare_passing_rows(
    series: SeriesId,
    window: str,
    config_rev: str,
    mode: str,
    computed_at: int,
    t0s: Sequence[int],
    features: Sequence[tuple[str, Sequence[FeatureValue]]],
    calcs: Sequence[dict[str, str]],
    coverages: Sequence[float],
    inputs_until: Sequence[int],
) -> list[SignalRow]:
    """`prepare_snapshot` of the snapshots of one window with these parts and a passing DQC
    verdict, without building the `Snapshot`s: the recompute's path, a column at a time.

    `features` are the columns of the payload's features, in its order: `(name, values)`, a
    value per t0, where a float column may hold NaN for a null (as the batch columns do). The
    caller vouches that no float here is infinite (it checks whole columns at once). Every
    column is encoded once (`_json_texts`) and each document is the payload's text with its
    values put in by one %-format of a template made of `_Payload`'s fields, in its order: the
    texts are the ones `prepare_snapshot` gives (tests hold them equal, text for text).
    The keys are checked once: they differ only in the digits of t0 (and a sign), which the key
    pattern admits, so when the longest ones are valid, all are.
    """
    symbol, venue, market = series.symbol, series.venue, series.market
    prefix = f"{symbol}:{window}:"
    if t0s and not (is_valid_key(f"{prefix}{min(t0s)}") and is_valid_key(f"{prefix}{max(t0s)}")):
        columns = [values for _, values in features]
        names = [name for name, _ in features]
        return [  # per snapshot: raises the store's error naming the key
            prepare_snapshot(
                Snapshot(
                    series,
                    window,
                    t0,
                    {n: None if v != v else v for n, v in zip(names, feats, strict=True)},
                    Dqc(),
                    config_rev,
                    cov,
                    until,
                    calc,
                ),
                mode,
                computed_at,
            )
            for t0, calc, cov, until, *feats in zip(
                t0s, calcs, coverages, inputs_until, *columns, strict=True
            )
        ]
    # The document around its values, as `_Payload` encodes (compact, fields in its order).
    feature_keys = ",".join(f"{_template_part(_json_text(name))}:%s" for name, _ in features)
    id_open = _template_part(_json_text(prefix)[:-1])  # the id's text up to its t0 digits
    template = (
        f'{{"signal_id":{id_open}%s","t0":%s,"symbol":{_template_part(_json_text(symbol))},'
        f'"venue":{_template_part(_json_text(venue))},'
        f'"market":{_template_part(_json_text(market))},'
        f'"window":{_template_part(_json_text(window))},"features":{{{feature_keys}}},'
        '"meta":{"calc":%s,"bar_coverage":%s,"inputs_until":%s},'
        f'"config_rev":{_template_part(_json_text(config_rev))},'
        f'"dqc":{_template_part(strict_json.encode_checked(_PASSED_DQC).decode())},'
        f'"source":"s2","mode":{_template_part(_json_text(mode))},"computed_at":{computed_at}}}'
    )
    t0_texts = _json_texts(t0s)
    by_row = zip(
        t0_texts,
        t0_texts,
        *(_json_texts(values) for _, values in features),
        _json_texts_of_calcs(calcs),
        _json_texts(coverages),
        _json_texts(inputs_until),
        strict=True,
    )
    # map over C-level callables: about a third less time than the same comprehensions.
    texts = map(template.__mod__, by_row)
    ids = map(prefix.__add__, t0_texts)
    fields = zip(ids, repeat(symbol), repeat(window), t0s, texts, strict=False)  # repeat: endless
    return list(map(_new_row, fields))


def _json_texts_of_calcs(calcs: Sequence[dict[str, str]]) -> list[str]:
    """`meta.calc` of each row: rows share a few dicts (by identity), each encoded once."""
    ids = list(map(id, calcs))
    texts = {key: _json_text(calc) for key, calc in dict(zip(ids, calcs, strict=True)).items()}
    return [texts[key] for key in ids]
