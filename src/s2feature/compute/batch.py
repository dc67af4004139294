"""The batch engine: a whole base-bar history to snapshots, through the families' batch functions.

`compute_columns` is the numeric part: per window, the final w-bars and one array per feature
(NaN, or None for labels, while null). `compute_batch` materialises those columns as `Snapshot`
values through the same assembly as the online engine, in the online engine's emission order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from s2feature.compute.assembly import SnapshotAssembler
from s2feature.compute.bars import aggregate_wbars
from s2feature.compute.engine import validate_windows
from s2feature.compute.family import BatchValues, FamilyContext, IntArray
from s2feature.compute.registry import FAMILIES
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import WINDOWS, BarArrays, FeatureValue, SeriesId, Snapshot, interval_ms


@dataclass(frozen=True)
class WindowColumns:
    window: str
    wbars: BarArrays
    inputs_until: IntArray
    values: BatchValues  # every feature of every family, aligned with `wbars`


def compute_columns(
    base: BarArrays,
    series: SeriesId,
    windows: Sequence[str],
    bundle: ConfigBundle,
    fx_base: BarArrays | None = None,
) -> list[WindowColumns]:
    base_ms = bundle.base_ms
    windows = validate_windows(windows, base_ms)
    aggregated = {w: aggregate_wbars(base, interval_ms(w)) for w in windows}
    # Base-level families are evaluated once at every t0 of any window, then gathered per window.
    t0s = np.sort(np.concatenate([wb.close_time for wb, _ in aggregated.values()]), kind="stable")
    all_t0 = t0s[np.r_[True, t0s[1:] != t0s[:-1]]] if len(t0s) else t0s
    base_ctx = FamilyContext(bundle, base_ms, base_ms, series.market)
    base_values: BatchValues = {}
    for family in FAMILIES:
        if family.level == "base":
            base_values.update(family.batch(base, all_t0, base_ctx))
    out = []
    for window in windows:
        wbars, inputs_until = aggregated[window]
        fx_batch = None
        if fx_base is not None:
            fx_w, _ = aggregate_wbars(fx_base, interval_ms(window))
            fx_batch = (fx_w.close_time, fx_w.close)
        ctx = FamilyContext(bundle, interval_ms(window), base_ms, series.market, fx_batch=fx_batch)
        position = np.searchsorted(all_t0, wbars.close_time)
        values: BatchValues = {name: arr[position] for name, arr in base_values.items()}
        for family in FAMILIES:
            if family.level == "wbar":
                values.update(family.batch(wbars, wbars.close_time, ctx))
        out.append(WindowColumns(window, wbars, inputs_until, values))
    return out


def _python_values(array: npt.NDArray[np.generic]) -> list[FeatureValue]:
    items = array.tolist()
    if array.dtype == object:
        return [None if v is None else str(v) for v in items]
    return [None if v != v else v for v in items]  # NaN is the only value not equal to itself


def materialise(
    columns: Sequence[WindowColumns], series: SeriesId, bundle: ConfigBundle
) -> list[Snapshot]:
    assembler = SnapshotAssembler(series, bundle)
    rows: list[tuple[int, int, Snapshot]] = []
    for col in columns:
        names = [n for n in col.values if n in assembler.enabled]
        lists = [_python_values(col.values[n]) for n in names]
        k = WINDOWS.index(col.window)
        t0s = col.wbars.close_time.tolist()
        n_base = col.wbars.n_base.tolist()
        jumps = col.wbars.jump_count.tolist()
        split = col.wbars.depth_split.tolist()
        until = col.inputs_until.tolist()
        for i, t0 in enumerate(t0s):
            values = {name: column[i] for name, column in zip(names, lists, strict=True)}
            snap = assembler.snapshot(
                col.window, t0, n_base[i], jumps[i], split[i], until[i], values
            )
            rows.append((t0, k, snap))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [snap for _, _, snap in rows]


def compute_batch(
    base: BarArrays,
    series: SeriesId,
    windows: Sequence[str],
    bundle: ConfigBundle,
    fx_base: BarArrays | None = None,
) -> list[Snapshot]:
    """All snapshots of a base-bar history, by t0 then window (the online emission order)."""
    columns = compute_columns(base, series, windows, bundle, fx_base)
    return materialise(columns, series, bundle)
