"""The store rows of a recompute batch, built a column at a time.

The per-snapshot path — `materialise` (a `Snapshot` with its DQC verdict each), `routing`, then
`prepare_snapshot` — spends most of a recompute's time on Python work per document. Most
snapshots of a range pass DQC and carry only finite floats, and that can be decided for a whole
column at once: the required features' null masks, `jump_count > 0`, the two physical bounds and
infinities are array operations. Those rows are encoded straight from the columns
(`prepare_passing_rows`, each column encoded at once); every other row (a DQC failure, an
infinity, a required feature the columns lack) takes the per-snapshot path, so each verdict,
routing decision and error is the one the live service's code gives. `signal_rows` returns
exactly the rows of the per-snapshot path, in its order (tests hold them equal, text for text).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from s2feature.compute.assembly import SnapshotAssembler
from s2feature.compute.batch import WindowColumns, materialise
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import WINDOWS, BarArrays, SeriesId, interval_ms
from s2feature.dqc.verdict import required_features, routing
from s2feature.store.base import SignalRow
from s2feature.store.snapshot_rows import prepare_passing_rows, prepare_snapshot

__all__ = ["signal_rows"]

_BoolArray = np.ndarray[Any, np.dtype[np.bool_]]
# `meta.calc` of a snapshot (`SnapshotAssembler.snapshot`); only read, so rows share them.
_SPLIT: Final = {"depth_top1_usdt": "split"}
_SUM: Final = {"depth_top1_usdt": "sum"}


def _present(values: np.ndarray[Any, Any]) -> _BoolArray:
    """Non-null entries: not NaN in a float column, not None in an object column."""
    if values.dtype == object:
        return np.fromiter((v is not None for v in values), dtype=np.bool_, count=len(values))
    if np.issubdtype(values.dtype, np.floating):
        present: _BoolArray = ~np.isnan(values)
        return present
    return np.ones(len(values), dtype=np.bool_)


def _fast_rows(
    col: WindowColumns, enabled: Sequence[str], required: Sequence[str], bundle: ConfigBundle
) -> _BoolArray:
    """Rows that pass DQC (`dqc.verdict.assess`) with every enabled float finite."""
    ok: _BoolArray = np.asarray(col.wbars.jump_count <= 0, dtype=np.bool_)
    for name in required:
        if name not in col.values:
            return np.zeros(len(ok), dtype=np.bool_)
        ok &= _present(col.values[name])
    # NaN compares false: a null value is never out of bounds, as in `assess`.
    if "spread_bps" in enabled and "spread_bps" in col.values:
        spread = col.values["spread_bps"]
        ok &= ~((spread < 0.0) | (spread > bundle.bounds.spread_bps_max))
    if "depth_top1_usdt" in enabled and "depth_top1_usdt" in col.values:
        ok &= ~(col.values["depth_top1_usdt"] > bundle.bounds.depth_top1_usdt_max)
    for name in enabled:
        values = col.values.get(name)
        if values is not None and np.issubdtype(values.dtype, np.floating):
            ok &= ~np.isinf(values)
    return ok


def _feature_column(values: np.ndarray[Any, Any]) -> list[Any]:
    """The values of a column as the payload holds them; a float column keeps NaN for a null
    (`prepare_passing_rows` writes it as `null`), labels become text as in `materialise`."""
    items: list[Any] = values.tolist()
    if values.dtype == object:
        return [None if v is None else str(v) for v in items]
    return items


def _take(col: WindowColumns, rows: np.ndarray[Any, Any]) -> WindowColumns:
    wbars = BarArrays(**{k: v[rows] for k, v in col.wbars.__dict__.items()})
    values = {name: array[rows] for name, array in col.values.items()}
    return WindowColumns(col.window, wbars, col.inputs_until[rows], values)


def signal_rows(
    columns: Sequence[WindowColumns],
    series: SeriesId,
    bundle: ConfigBundle,
    mode: str,
    computed_at: int,
) -> list[SignalRow]:
    """The rows of the snapshots the live service would store (`routing`), by (t0, window):
    `[prepare_snapshot(s, ...) for s in materialise(columns, ...) if routing(s, ...)[0]]`."""
    enabled = SnapshotAssembler(series, bundle).enabled
    required = required_features(bundle, series.market)
    realtime, persist_all = bundle.mode.realtime, bundle.mode.persist_all
    found: list[SignalRow] = []
    t0_parts: list[np.ndarray[Any, Any]] = []
    window_parts: list[np.ndarray[Any, Any]] = []
    for col in columns:
        k = WINDOWS.index(col.window)
        fast = _fast_rows(col, enabled, required, bundle)
        if not (realtime or persist_all):
            fast[:] = False  # a passing snapshot is not stored: leave it to `routing`
        slow = np.flatnonzero(~fast)
        if len(slow):
            slow_t0s = []
            for snap in materialise([_take(col, slow)], series, bundle):
                if routing(snap, realtime, persist_all)[0]:
                    found.append(prepare_snapshot(snap, mode, computed_at))
                    slow_t0s.append(snap.t0)
            t0_parts.append(np.asarray(slow_t0s, dtype=np.int64))
            window_parts.append(np.full(len(slow_t0s), k))
        rows = np.flatnonzero(fast)
        if not len(rows):
            continue
        n = len(rows)
        features = [
            (name, _feature_column(col.values[name][rows]) if name in col.values else [None] * n)
            for name in enabled
        ]
        bases = interval_ms(col.window) // bundle.base_ms
        t0s = col.wbars.close_time[rows]
        found.extend(
            prepare_passing_rows(
                series,
                col.window,
                bundle.rev,
                mode,
                computed_at,
                t0s.tolist(),
                features,
                [_SPLIT if split else _SUM for split in col.wbars.depth_split[rows].tolist()],
                (col.wbars.n_base[rows] / bases).tolist(),  # int / int as Python divides it
                col.inputs_until[rows].tolist(),
            )
        )
        t0_parts.append(t0s)
        window_parts.append(np.full(n, k))
    if not found:
        return []
    # By (t0, window index), as `materialise` orders snapshots: one sort of two int columns.
    order = np.lexsort((np.concatenate(window_parts), np.concatenate(t0_parts)))
    return [found[i] for i in order.tolist()]
