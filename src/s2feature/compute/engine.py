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
from typing import Any, Self

import numpy as np

from s2feature.compute.assembly import SnapshotAssembler
from s2feature.compute.bars import FinalWBar, WBarBuilder, aggregate_wbars, bars_of
from s2feature.compute.engine_state import (
    BASE_SCOPE,
    STATE_FORMAT,
    WBARS,
    BaseIntervalChangeError,
    EngineStateError,
    StateKey,
    canonical_params,
    entry,
    mapping_at,
    saved_state_if_fits,
)
from s2feature.compute.family import (
    CloseHistory,
    FamilyContext,
    FeatureFamily,
    FxCloses,
    FxCloseTable,
    HistoryBacked,
    HistoryMismatchError,
    OnlineFamily,
)
from s2feature.compute.history import atr_warmup_wbars
from s2feature.compute.registry import FAMILIES
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import (
    DAY_MS,
    WINDOWS,
    Bar,
    BarArrays,
    FeatureValue,
    SeriesId,
    Snapshot,
    interval_ms,
)

Part = OnlineFamily | WBarBuilder  # what a `StateKey` names in a running engine


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
    """Online engine of one series: feed final base bars, get the snapshots they finalise.

    Its state (`snapshot`, `restore`) is keyed by family name and versioned per family (format in
    `compute.engine_state`). A family whose saved state does not fit is left fresh and reported;
    `rebuild` then replays the base-bar history through those families only. `with_bundle` moves
    the engine to another bundle, keeping every family whose state params did not change.
    """

    def __init__(
        self,
        series: SeriesId,
        windows: Sequence[str],
        bundle: ConfigBundle,
        fx: Mapping[str, FxCloses] | None = None,
    ) -> None:
        base_ms = self._base_ms = bundle.base_ms
        self.series = series
        self.bundle = bundle
        self.windows = validate_windows(windows, base_ms)
        self._fx = fx
        self._assembler = SnapshotAssembler(series, bundle)
        base_ctx = FamilyContext(bundle, base_ms, base_ms, series.market)
        self._contexts: dict[str, FamilyContext] = {BASE_SCOPE: base_ctx}
        self._kinds: dict[str, tuple[FeatureFamily, ...]] = {
            BASE_SCOPE: tuple(f for f in FAMILIES if f.level == "base")
        }
        self._builders: dict[str, WBarBuilder] = {}
        for window in self.windows:
            w_ms = interval_ms(window)
            fx_w = fx.get(window) if fx else None
            ctx = FamilyContext(bundle, w_ms, base_ms, series.market, fx_online=fx_w)
            self._contexts[window] = ctx
            self._kinds[window] = tuple(f for f in FAMILIES if f.level == "wbar")
            self._builders[window] = WBarBuilder(w_ms, base_ms)
        # scope -> the online instances, in `_kinds` order (lists: the per-bar loop reads them)
        self._instances: dict[str, list[OnlineFamily]] = {
            scope: [f.online(self._contexts[scope]) for f in kinds]
            for scope, kinds in self._kinds.items()
        }
        self._params = {
            scope: [canonical_params(f, self._contexts[scope]) for f in kinds]
            for scope, kinds in self._kinds.items()
        }
        self._base_families = self._instances[BASE_SCOPE]
        self._wbar_families = {w: self._instances[w] for w in self.windows}
        self._base_t0 = -1
        self._base_values: dict[str, FeatureValue] = {}
        # Close time of the newest base bar fed: -1 for none, None when unknown (a state of
        # another format was restored: everything is stale and the history decides).
        self.seen_until: int | None = -1

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
        self.seen_until = bar.close_time
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

    # -- state -----------------------------------------------------------------------------------

    def state_keys(self) -> set[StateKey]:
        """Every key `restore` may report: each (scope, family) and each (window, WBARS)."""
        keys = {(scope, f.name) for scope, kinds in self._kinds.items() for f in kinds}
        return keys | {(window, WBARS) for window in self.windows}

    def snapshot(self, compact: bool = False) -> dict[str, Any]:
        """JSON-serialisable state of the whole engine (format: `compute.engine_state`).

        `compact`: base-level families that are `HistoryBacked` save their `checkpoint()`, an
        entry marked `"history": true`, which `restore` continues only given the base bars of
        the last `history_ms()` (the lake's)."""
        families: dict[str, dict[str, Any]] = {}
        for scope, kinds in self._kinds.items():
            saved = families[scope] = {}
            for family, params, instance in zip(
                kinds, self._params[scope], self._instances[scope], strict=True
            ):
                if compact and scope == BASE_SCOPE and isinstance(instance, HistoryBacked):
                    saved[family.name] = entry(family, params, instance.checkpoint())
                    saved[family.name]["history"] = True
                else:
                    saved[family.name] = entry(family, params, instance.snapshot())
        return {
            "format": STATE_FORMAT,
            "base_ms": self._base_ms,
            "seen_until": self.seen_until,
            "config_rev": self.bundle.rev,
            "builders": {w: b.snapshot() for w, b in self._builders.items()},
            "families": families,
        }

    def history_ms(self) -> int:
        """How far before `seen_until` the base bars given to `restore` must reach for the
        compact entries of `snapshot(compact=True)` (0: none needs any)."""
        spans = [f.history_ms() for f in self._base_families if isinstance(f, HistoryBacked)]
        return max(spans, default=0)

    def restore(
        self, state: Mapping[str, Any], history: CloseHistory | None = None
    ) -> set[StateKey]:
        """Restore what fits; return the keys left fresh, for `rebuild`.

        A compact entry (`"history": true`) is restored from `history`, the base bars of at
        least the last `history_ms()` up to `seen_until`; without them, or when they do not give
        back what was saved, its family is left fresh like one that does not fit.

        A family is left fresh when its entry is missing or has another version or other params;
        a window's builder (WBARS) when it is missing or the base interval differs, and then that
        window's families too (they saw w-bars this builder no longer knows). A state of another
        format leaves everything fresh. Entries the engine has no family for are ignored. Raises
        `EngineStateError` for garbage, and then changes nothing.
        """
        if not isinstance(state, Mapping):
            raise EngineStateError(f"engine state is a {type(state).__name__}, not an object")
        if state.get("format") != STATE_FORMAT:
            everything = self.state_keys()
            self._install(self._fresh_parts(everything))
            self.seen_until = None
            return everything
        same_geometry = state.get("base_ms") == self._base_ms
        seen_until = state.get("seen_until", "absent")
        if seen_until is not None and (
            isinstance(seen_until, bool) or not isinstance(seen_until, int)
        ):
            raise EngineStateError(f"engine state: seen_until is {seen_until!r}, not an integer")
        builders = mapping_at(state, "builders", "builders")
        families = mapping_at(state, "families", "families")
        stale: set[StateKey] = set()
        parts: dict[StateKey, Part] = {}
        for window in self.windows:
            builder = WBarBuilder(interval_ms(window), self._base_ms)
            saved = builders.get(window)
            if same_geometry and saved is not None:
                _restore_part(builder, saved, f"builder of {window}")
                parts[(window, WBARS)] = builder
            else:
                stale.add((window, WBARS))
        for scope, kinds in self._kinds.items():
            saved_scope = mapping_at(families, scope, f"families.{scope}")
            builder_stale = (scope, WBARS) in stale
            for family, params in zip(kinds, self._params[scope], strict=True):
                key, where = (scope, family.name), f"families.{scope}.{family.name}"
                saved = saved_scope.get(family.name)
                fstate = None
                if saved is not None:
                    fstate = saved_state_if_fits(saved, family, params, where)
                if fstate is None or not same_geometry or builder_stale:
                    stale.add(key)
                    continue
                instance = family.online(self._contexts[scope])
                if saved is not None and saved.get("history") is True:
                    if not _restore_from_history(instance, fstate, history, where):
                        stale.add(key)
                        continue
                else:
                    _restore_part(instance, fstate, where)
                parts[key] = instance
        parts.update(self._fresh_parts(stale))
        self._install(parts)
        self.seen_until = seen_until
        return stale

    def rebuild(self, stale: Iterable[StateKey], history: Iterable[Bar]) -> None:
        """Recompute the stale parts from the base bars this engine has seen, oldest first.

        Only the stale families are fed (w-bar ones through fresh builders, so they see the
        same w-bars), in the order `on_base_bar` feeds them and with the same evaluations, and
        no snapshot is made; afterwards the engine equals one that ran uninterrupted over
        `history` under its bundle. Bars after `seen_until` are ignored; a history that ends
        before it raises ValueError (the rebuilt parts would lag the others). When `seen_until`
        is unknown (None: a state of another format left everything stale), the whole history
        is replayed and its last bar becomes `seen_until`.
        """
        wanted = set(stale)
        unknown = wanted - self.state_keys()
        if unknown:
            raise ValueError(f"not parts of this engine: {sorted(unknown)}")
        if not wanted:
            return
        fresh = self._fresh_parts(wanted)
        base = [_family(fresh[key]) for key in self._keys(BASE_SCOPE) if key in fresh]
        wbar = {w: [_family(fresh[k]) for k in self._keys(w) if k in fresh] for w in self.windows}
        # Base families are evaluated at the t0 of every window's w-bars.
        replayed = [w for w in self.windows if base or wbar[w] or (w, WBARS) in wanted]
        builders = {w: WBarBuilder(interval_ms(w), self._base_ms) for w in replayed}
        last_t0 = -1

        def evaluate(window: str, done: FinalWBar) -> None:
            nonlocal last_t0
            t0 = done.bar.close_time
            if t0 != last_t0:
                for family in base:
                    family.values_at(t0)
                last_t0 = t0
            for family in wbar[window]:
                family.update(done.bar)
                family.values_at(t0)

        until = self.seen_until
        replayed_until = -1
        for bar in history:
            if until is not None and until < bar.close_time:
                break  # bars the engine has not seen yet (e.g. a lake written past a checkpoint)
            replayed_until = bar.close_time
            for window, builder in builders.items():
                done = builder.close_before(bar)
                if done is not None:
                    evaluate(window, done)
            for family in base:
                family.update(bar)
            for window, builder in builders.items():
                done = builder.add(bar)
                if done is not None:
                    evaluate(window, done)
        if until is not None and replayed_until != until:
            raise ValueError(
                f"the history ends at {replayed_until}, the engine has seen bars until {until}: "
                "a rebuild over it would leave the families behind the others"
            )
        for window in replayed:
            if (window, WBARS) in wanted:
                fresh[(window, WBARS)] = builders[window]
        self._install(fresh)
        self.seen_until = replayed_until

    def warm_up(self, history: BarArrays, closes: CloseHistory | None = None) -> None:
        """Start over from a base-bar history (oldest first), as if it had been fed bar by
        bar, without making its snapshots (they were made when the bars were live).

        `HistoryBacked` base families warm-start from `closes` (by default those of `history`)
        in one vectorised pass. Each window's families are fed the final w-bars of only the
        tail they depend on (from `warm_up_tail_start`), aggregated in one pass, and its builder
        the base bars of the open w-bar; so `history` needs to reach back only to
        `warm_up_tail_start`, and `closes` as far as the families' `history_ms`. Values then
        equal a run over the whole history within the 1e-9 tolerance (Wilder's ATR keeps less
        than that of what came before the tail).
        """
        everything = self.state_keys()
        self._install(self._fresh_parts(everything))
        if len(history) == 0:
            return
        if not all(isinstance(f, HistoryBacked) for f in self._base_families):
            self.seen_until = None
            self.rebuild(everything, bars_of(history))  # no vectorised start: replay it all
            return
        if closes is None:
            closes = CloseHistory(history.close_time, history.close)
        for family in self._base_families:
            assert isinstance(family, HistoryBacked)
            family.warm_start(closes)
        last = int(history.close_time[-1])
        for window in self.windows:
            self._warm_window(window, history, last)
        self.seen_until = last

    def warm_up_tail_start(self, last: int) -> int:
        """`open_time` from which `warm_up` needs whole base bars, for a history ending with a
        bar closing at `last`."""
        return min(self._tail_start(window, last) for window in self.windows)

    def _tail_start(self, window: str, last: int) -> int:
        return (last - self.wbar_history_ms(window)) // DAY_MS * DAY_MS

    def _warm_window(self, window: str, history: BarArrays, last: int) -> None:
        start = self._tail_start(window, last)
        tail = history.slice(int(np.searchsorted(history.open_time, start)), len(history))
        wbars, _ = aggregate_wbars(tail, interval_ms(window))
        families = self._wbar_families[window]
        for bar in bars_of(wbars):
            t0 = bar.close_time
            for family in families:
                family.update(bar)
                family.values_at(t0)
        done_until = int(wbars.close_time[-1]) if len(wbars) else start - 1
        first_open = int(np.searchsorted(tail.open_time, done_until + 1))
        builder = self._builders[window]
        for bar in bars_of(tail.slice(first_open, len(tail))):
            if builder.close_before(bar) is not None or builder.add(bar) is not None:
                raise AssertionError("a w-bar left out of the aggregation completed")

    def wbar_history_ms(self, window: str) -> int:
        """Base-bar history the w-bar families of `window` depend on: Wilder's ATR horizon or
        the correlation span, in w-bars, plus the open one."""
        lengths = self.bundle.windows
        wbars = max(atr_warmup_wbars(lengths.atr_period), lengths.rho_period + lengths.rho_z_period)
        return (wbars + 1) * interval_ms(window)

    def with_bundle(self, bundle: ConfigBundle) -> tuple[Self, set[StateKey]]:
        """This engine under another bundle, and the parts to `rebuild` (same history).

        Families whose state params are unchanged keep their state and read every other
        parameter (thresholds) from the new bundle from their next values on; snapshots are
        assembled under the new bundle. The others are fresh and returned. This engine is left
        as it was. Raises `BaseIntervalChangeError` for another base interval.
        """
        if bundle.base_ms != self._base_ms:
            raise BaseIntervalChangeError(
                f"bundle {bundle.rev} has base interval {bundle.base_interval}, the running "
                f"engine {self.bundle.base_interval}: a base interval cannot change while running"
            )
        engine = type(self)(self.series, self.windows, bundle, self._fx)
        return engine, engine.restore(self.snapshot())

    def _keys(self, scope: str) -> list[StateKey]:
        return [(scope, f.name) for f in self._kinds[scope]]

    def _fresh_parts(self, keys: Iterable[StateKey]) -> dict[StateKey, Part]:
        parts: dict[StateKey, Part] = {}
        for scope, name in keys:
            if name == WBARS:
                parts[(scope, name)] = WBarBuilder(interval_ms(scope), self._base_ms)
            else:
                family = next(f for f in self._kinds[scope] if f.name == name)
                parts[(scope, name)] = family.online(self._contexts[scope])
        return parts

    def _install(self, parts: Mapping[StateKey, Part]) -> None:
        """Put builders and family instances in place (lists are updated, not replaced)."""
        for (scope, name), part in parts.items():
            if isinstance(part, WBarBuilder):
                self._builders[scope] = part
            else:
                index = next(i for i, f in enumerate(self._kinds[scope]) if f.name == name)
                self._instances[scope][index] = part
        self._base_t0 = -1


def _family(part: Part) -> OnlineFamily:
    assert not isinstance(part, WBarBuilder)  # keys other than WBARS name families
    return part


def _restore_part(part: Part, state: Any, where: str) -> None:
    """Restore a family or builder whose entry fits; a state it cannot read is garbage."""
    if not isinstance(state, Mapping):
        raise EngineStateError(f"engine state: {where} holds a {type(state).__name__}")
    try:
        part.restore(state)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise EngineStateError(f"engine state: {where} cannot be read: {exc!r}") from exc


def _restore_from_history(
    part: OnlineFamily, state: Any, history: CloseHistory | None, where: str
) -> bool:
    """Restore a compact entry; False when it cannot be (no history, or one that does not hold
    what was saved): the family is then rebuilt. A state it cannot read is garbage."""
    if history is None or not isinstance(part, HistoryBacked):
        return False
    if not isinstance(state, Mapping):
        raise EngineStateError(f"engine state: {where} holds a {type(state).__name__}")
    try:
        part.restore_from_history(state, history)
    except HistoryMismatchError:
        return False
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise EngineStateError(f"engine state: {where} cannot be read: {exc!r}") from exc
    return True


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
