"""The feature engine: final base bars in, snapshots out — online (`SymbolEngine`) and batch.

Both paths use the registered families (`compute.registry`) and the same snapshot assembly, so the
only thing that differs between live, restart and recompute is *how* each family computes: the
online classes incrementally, the batch functions over whole arrays. Tests hold them equal.

Order of work for each base bar (online), which the batch path reproduces:
1. w-bars that the bar's arrival finalises across a gap are evaluated first, before the base-level
   families see the new bar (their t0 precedes it);
2. base-level families take the bar;
3. w-bars that the bar completes are evaluated at t0 = the bar's close.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from s2feature.compute.assembly import SnapshotAssembler
from s2feature.compute.bars import FinalWBar, WBarBuilder, aggregate_wbars
from s2feature.compute.family import FamilyContext, FxCloses, FxCloseTable, OnlineFamily
from s2feature.compute.registry import FAMILIES
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import (
    WINDOWS,
    Bar,
    BarArrays,
    FeatureValue,
    SeriesId,
    Snapshot,
    interval_ms,
)


def validate_windows(windows: Sequence[str], base_ms: int) -> tuple[str, ...]:
    """Windows in canonical order; each must be a known window and a multiple of the base."""
    if not windows:
        raise ValueError("at least one window is needed")
    for window in windows:
        if interval_ms(window) % base_ms:
            raise ValueError(
                f"window {window} is shorter than or not a multiple of the base interval"
            )
    return tuple(sorted(set(windows), key=WINDOWS.index))


class SymbolEngine:
    """Online engine of one series: feed final base bars, get the snapshots they finalise."""

    def __init__(
        self,
        series: SeriesId,
        windows: Sequence[str],
        bundle: ConfigBundle,
        fx: Mapping[str, FxCloses] | None = None,
    ) -> None:
        base_ms = bundle.base_ms
        self.windows = validate_windows(windows, base_ms)
        self._assembler = SnapshotAssembler(series, bundle)
        base_ctx = FamilyContext(bundle, base_ms, base_ms, series.market)
        self._base_families = [f.online(base_ctx) for f in FAMILIES if f.level == "base"]
        self._builders: dict[str, WBarBuilder] = {}
        self._wbar_families: dict[str, list[OnlineFamily]] = {}
        for window in self.windows:
            w_ms = interval_ms(window)
            fx_w = fx.get(window) if fx else None
            ctx = FamilyContext(bundle, w_ms, base_ms, series.market, fx_online=fx_w)
            self._builders[window] = WBarBuilder(w_ms, base_ms)
            self._wbar_families[window] = [f.online(ctx) for f in FAMILIES if f.level == "wbar"]
        self._base_t0 = -1
        self._base_values: dict[str, FeatureValue] = {}

    def on_base_bar(self, bar: Bar) -> list[Snapshot]:
        out = []
        for window in self.windows:
            done = self._builders[window].close_before(bar)
            if done is not None:
                out.append(self._evaluate(window, done))
        for family in self._base_families:
            family.update(bar)
        for window in self.windows:
            done = self._builders[window].add(bar)
            if done is not None:
                out.append(self._evaluate(window, done))
        return out

    def _evaluate(self, window: str, done: FinalWBar) -> Snapshot:
        t0 = done.bar.close_time
        if t0 != self._base_t0:  # windows closing together share the base-level values
            values: dict[str, FeatureValue] = {}
            for family in self._base_families:
                values.update(family.values_at(t0))
            self._base_t0, self._base_values = t0, values
        merged = dict(self._base_values)
        for family in self._wbar_families[window]:
            family.update(done.bar)
            merged.update(family.values_at(t0))
        return self._assembler.from_bar(window, done.bar, done.inputs_until, merged)

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state of the whole engine."""
        return {
            "base": [f.snapshot() for f in self._base_families],
            "builders": {w: b.snapshot() for w, b in self._builders.items()},
            "wbar": {w: [f.snapshot() for f in fams] for w, fams in self._wbar_families.items()},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        for family, fstate in zip(self._base_families, state["base"], strict=True):
            family.restore(fstate)
        for window, bstate in state["builders"].items():
            self._builders[window].restore(bstate)
        for window, fstates in state["wbar"].items():
            for family, fstate in zip(self._wbar_families[window], fstates, strict=True):
                family.restore(fstate)
        self._base_t0 = -1


def fx_tables(fx_base: BarArrays, windows: Iterable[str]) -> dict[str, FxCloseTable]:
    """FX w-bar closes per window, for an online engine run over a known FX history."""
    tables = {}
    for window in windows:
        wbars, _ = aggregate_wbars(fx_base, interval_ms(window))
        table = FxCloseTable()
        for close_time, close in zip(wbars.close_time.tolist(), wbars.close.tolist(), strict=True):
            table.add(close_time, close)
        tables[window] = table
    return tables


def run_online(
    base: Iterable[Bar],
    series: SeriesId,
    windows: Sequence[str],
    bundle: ConfigBundle,
    fx_base: BarArrays | None = None,
) -> list[Snapshot]:
    """Feed a whole base-bar history through a fresh `SymbolEngine`."""
    fx = fx_tables(fx_base, windows) if fx_base is not None else None
    engine = SymbolEngine(series, windows, bundle, fx)
    out: list[Snapshot] = []
    for bar in base:
        out.extend(engine.on_base_bar(bar))
    return out
