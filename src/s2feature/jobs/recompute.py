"""The recompute job (SPEC §10): snapshots of a range recomputed from the lake into `signals`.

A task is planned (`plan`) into batches, one per symbol and UTC day of t0, then run
(`run_recompute`) batch by batch, reporting `Progress` after each one and checking `stop` before
each one. Per symbol, the lake is read once, from the warm-up start (`jobs.warmup`) to `to_ts`
with `to_close_time=to_ts`: no bar closing after the range is ever read, and the batch engine is
causal (a snapshot at t0 uses only bars closing by t0), so no value depends on later data.

Writes are upserts of the same `signal_id`s the live service uses, with `mode = "recompute"`.
Only the snapshots the live service would store are written (same routing rule, SPEC §6/§8).
`force = False` writes only signals that are absent or stored under another `config_rev`;
`force = True` rewrites all. One FEATURE_RECOMPUTE strategy event records the task's scope.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from s2feature.compute.batch import WindowColumns, compute_columns
from s2feature.compute.engine import validate_windows
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import DAY_MS, WINDOWS, BarArrays, SeriesId, interval_ms
from s2feature.dqc.verdict import FX_LATE
from s2feature.errors import ConfigurationError
from s2feature.jobs.recompute_rows import signal_rows
from s2feature.jobs.warmup import warmup_start
from s2feature.lake.parquet import BarLake
from s2feature.store.base import Store, recompute_event_id

__all__ = [
    "FALLBACK_MARKET",
    "FALLBACK_VENUE",
    "MODE",
    "Batch",
    "Progress",
    "RecomputeError",
    "RecomputePlan",
    "RecomputeRequest",
    "RecomputeResult",
    "Resume",
    "ResumeRefusedError",
    "plan",
    "run_recompute",
]

MODE: Final = "recompute"
# Signals per store transaction of the job (a batch is written in chunks of this many).
WRITE_CHUNK_ROWS: Final = 250
# The lake knows symbols only; a symbol the caller gives no series for is recomputed as this.
FALLBACK_VENUE: Final = "offline"
FALLBACK_MARKET: Final = "spot"


class RecomputeError(ConfigurationError):
    """A recompute request that cannot be run (the message names the bad field)."""


class ResumeRefusedError(RecomputeError):
    """An interrupted task cannot be resumed safely (the message says why)."""


@dataclass(frozen=True)
class RecomputeRequest:
    """What to recompute: t0 in `[from_ts, to_ts]` (epoch ms, both inclusive) for every symbol
    and window. Validated on construction (RecomputeError naming the field)."""

    symbols: tuple[str, ...]
    windows: tuple[str, ...]
    from_ts: int
    to_ts: int
    force: bool = False

    def __post_init__(self) -> None:
        if not self.symbols:
            raise RecomputeError("symbols: at least one symbol is needed")
        if len(set(self.symbols)) != len(self.symbols):
            raise RecomputeError(f"symbols: duplicated in {list(self.symbols)}")
        unknown = [w for w in self.windows if w not in WINDOWS]
        if not self.windows or unknown:
            raise RecomputeError(
                f"windows: a non-empty subset of {','.join(WINDOWS)} is needed, got "
                f"{list(self.windows)}"
            )
        if not 0 <= self.from_ts < self.to_ts:
            raise RecomputeError(
                f"from_ts/to_ts: need 0 <= from_ts < to_ts, got {self.from_ts}, {self.to_ts}"
            )

    def overlaps(self, other: RecomputeRequest) -> bool:
        """Whether the two scopes share a symbol and a t0 (windows do not matter); both ranges
        are inclusive, so ranges that share only their end point overlap."""
        shared = not set(self.symbols).isdisjoint(other.symbols)
        return shared and self.from_ts <= other.to_ts and other.from_ts <= self.to_ts


@dataclass(frozen=True)
class Batch:
    """One unit of work and progress: the t0s of one symbol in `[from_ts, to_ts]` (one UTC day
    at most)."""

    symbol: str
    from_ts: int
    to_ts: int


@dataclass(frozen=True)
class RecomputePlan:
    request: RecomputeRequest
    windows: tuple[str, ...]  # canonical order
    series: Mapping[str, SeriesId]  # by symbol
    batches: tuple[Batch, ...]  # by symbol (request order), then time
    config_rev: str

    @property
    def estimated_batches(self) -> int:
        return len(self.batches)


@dataclass(frozen=True)
class Progress:
    """Reported after each finished batch; counts are cumulative for the task (a resumed task
    counts what its earlier runs did too). `config_rev` is the rev the signals are written under."""

    batches_done: int
    batches_total: int
    signals_written: int
    signals_skipped: int = 0
    config_rev: str | None = None


@dataclass(frozen=True)
class Resume:
    """Where a task stopped: its first `batches_done` batches are written and are not run again;
    the counts carry on from there."""

    batches_done: int = 0
    signals_written: int = 0
    signals_skipped: int = 0
    config_rev: str | None = None  # the rev the earlier run wrote under (None: not known)


@dataclass(frozen=True)
class RecomputeResult:
    task_id: str
    batches_done: int
    batches_total: int
    signals_written: int
    signals_skipped: int  # already stored under the same config_rev (force = False)
    interrupted: bool  # `stop` was set before every batch was done
    event_id: str


def _day_batches(symbol: str, from_ts: int, to_ts: int) -> list[Batch]:
    batches = []
    start = from_ts
    while start <= to_ts:
        day_end = (start // DAY_MS + 1) * DAY_MS - 1
        end = min(day_end, to_ts)
        batches.append(Batch(symbol, start, end))
        start = end + 1
    return batches


def plan(
    request: RecomputeRequest,
    lake: BarLake,
    bundle: ConfigBundle,
    series: Mapping[str, SeriesId] | None = None,
) -> RecomputePlan:
    """The batches of a request. Every symbol must be in the lake; windows must suit the
    bundle's base interval. `series` gives the venue and market of a symbol's snapshots (those
    of the live service, so the documents are the same); others get FALLBACK_VENUE/MARKET."""
    known = set(lake.symbols())
    missing = [s for s in request.symbols if s not in known]
    if missing:
        raise RecomputeError(f"symbols: not in the lake: {', '.join(missing)}")
    try:
        windows = validate_windows(request.windows, bundle.base_ms)
    except ValueError as exc:
        raise RecomputeError(f"windows: {exc}") from None
    given = series or {}
    resolved = {
        s: given.get(s) or SeriesId(FALLBACK_VENUE, FALLBACK_MARKET, s) for s in request.symbols
    }
    batches = [b for s in request.symbols for b in _day_batches(s, request.from_ts, request.to_ts)]
    return RecomputePlan(request, windows, resolved, tuple(batches), bundle.rev)


@dataclass
class _SymbolColumns:
    """The computed columns of one symbol, one per window, each from its own warm-up."""

    series: SeriesId
    columns: list[WindowColumns] = field(default_factory=list)


def _compute_symbol(
    lake: BarLake, series: SeriesId, windows: Sequence[str], req: RecomputeRequest, b: ConfigBundle
) -> _SymbolColumns:
    starts = {w: warmup_start(req.from_ts, w, b) for w in windows}
    bars = lake.read(series.symbol, from_open_time=min(starts.values()), to_close_time=req.to_ts)
    fx = _fx_bars(lake, series, windows, min(starts.values()), req.to_ts, b)
    out = _SymbolColumns(series)
    # Windows with the same warm-up start share one call: the base-level families are then
    # evaluated once for all of them (a value at t0 does not depend on the other t0s asked for).
    for start in sorted(set(starts.values())):
        same = [w for w in windows if starts[w] == start]
        first = int(np.searchsorted(bars.open_time, start, side="left"))
        out.columns.extend(compute_columns(bars.slice(first, len(bars)), series, same, b, fx))
    return out


def _fx_bars(
    lake: BarLake,
    series: SeriesId,
    windows: Sequence[str],
    from_open_time: int,
    to_ts: int,
    b: ConfigBundle,
) -> BarArrays | None:
    """The FX series' base bars for the correlation family (None for the FX series itself, or
    when the lake has none). Read one largest window past the range: a bar there only tells
    that an FX w-bar whose last base bar is missing is final, as it does live; every close read
    at t0 comes from bars closing by t0."""
    fx_symbol = b.rho.fx_symbol
    if series.symbol == fx_symbol or fx_symbol not in lake.symbols():
        return None
    past = max(interval_ms(w) for w in windows)
    return lake.read(fx_symbol, from_open_time=from_open_time, to_close_time=to_ts + past)


def _slice_columns(col: WindowColumns, from_ts: int, to_ts: int) -> WindowColumns:
    t0 = col.wbars.close_time
    lo = int(np.searchsorted(t0, from_ts, side="left"))
    hi = int(np.searchsorted(t0, to_ts, side="right"))
    values = {name: array[lo:hi] for name, array in col.values.items()}
    return WindowColumns(col.window, col.wbars.slice(lo, hi), col.inputs_until[lo:hi], values)


def _stored_revs(store: Store, batch: Batch) -> dict[str, Any]:
    """The stored rev of each signal of the batch; None for a live snapshot made without its FX
    w-bar (`fx_late`), which a recompute fills even without `force`."""
    docs = store.query_signals(batch.symbol, None, batch.from_ts, batch.to_ts)
    return {
        d["signal_id"]: None
        if FX_LATE in d.get("dqc", {}).get("reasons", ())
        else d.get("config_rev")
        for d in docs
    }


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a batch's rows are made. They are a few hundred
    thousand strings in lists and tuples, none of them in a cycle; each allocation of a tuple
    counts towards the next collection, and each collection walks the young lists of them again
    (profiled: a sixth of the task's CPU time). The pause is the whole process's (a task on a
    thread pauses it for the others too, for the milliseconds of a batch); collection is enabled
    again after, unless it was off before."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _now_ms() -> int:
    return int(time.time() * 1000)


def run_recompute(
    plan: RecomputePlan,
    store: Store,
    lake: BarLake,
    bundle: ConfigBundle,
    task_id: str,
    progress: Callable[[Progress], None] = lambda _: None,
    stop: threading.Event | None = None,
    now_ms: Callable[[], int] = _now_ms,
    resume: Resume | None = None,
) -> RecomputeResult:
    """Run a planned task to its end (or until `stop` is set, checked before each batch).

    `resume` skips the batches an earlier run of the same task finished (a plan is deterministic:
    the same request, lake and bundle give the same batches, and a batch's values do not depend
    on which batches ran before it, as each symbol is computed from its warm-up start).

    `bundle` must be the one the plan was made for (its `rev` is the plan's `config_rev`). Each
    batch is written in `Store.write_batch` calls of `WRITE_CHUNK_ROWS` signals, then
    `progress` is called. At the end, also
    when interrupted, the task's FEATURE_RECOMPUTE event is upserted (`recompute_event_id`).
    Store errors propagate; batches already written stay written (rewriting them is harmless).
    """
    if bundle.rev != plan.config_rev:
        raise RecomputeError(f"bundle rev {bundle.rev!r} is not the plan's {plan.config_rev!r}")
    req = plan.request
    total = plan.estimated_batches
    start = resume or Resume()
    if start.config_rev is not None and start.config_rev != plan.config_rev:
        # Finishing under another rev would leave the range half in each rev.
        raise ResumeRefusedError(
            f"the config rev changed from {start.config_rev} to {plan.config_rev} since the "
            "task started; submit it again to recompute the whole range under the new rev"
        )
    if not 0 <= start.batches_done <= total:
        raise ResumeRefusedError(
            f"the task had finished {start.batches_done} batches, but it now plans {total}"
        )
    done, written, skipped = start.batches_done, start.signals_written, start.signals_skipped
    computed: _SymbolColumns | None = None
    for batch in plan.batches[done:]:
        if stop is not None and stop.is_set():
            break
        if done > start.batches_done:
            # Between batches: let the other threads (the consumer loop) take the interpreter.
            time.sleep(0)
        series = plan.series[batch.symbol]
        if computed is None or computed.series != series:
            computed = _compute_symbol(lake, series, plan.windows, req, bundle)
        columns = [_slice_columns(c, batch.from_ts, batch.to_ts) for c in computed.columns]
        with _cyclic_gc_paused():
            rows = signal_rows(columns, series, bundle, MODE, now_ms())  # what routing stores
        if not req.force and rows:
            revs = _stored_revs(store, batch)
            fresh = [r for r in rows if revs.get(r.signal_id) != plan.config_rev]
            skipped += len(rows) - len(fresh)
            rows = fresh
        for start_row in range(0, len(rows), WRITE_CHUNK_ROWS):
            # Short transactions: the service loop's writes to the same database wait at most
            # one chunk's write, never a whole day's (1,752 rows for 1m,5m,1h). No yield after
            # each one: sqlite3 lets go of the interpreter lock at every row it writes, and a
            # `sleep(0)` gives the CPU away, which cost seconds on a busy machine.
            store.write_batch(rows[start_row : start_row + WRITE_CHUNK_ROWS], [])
        written += len(rows)
        done += 1
        progress(Progress(done, total, written, skipped, plan.config_rev))
    interrupted = done < total
    event = _task_event(plan, task_id, written, skipped, done, interrupted, now_ms())
    store.write_batch([], [event])
    return RecomputeResult(
        task_id, done, total, written, skipped, interrupted, str(event["event_id"])
    )


def _task_event(
    plan: RecomputePlan,
    task_id: str,
    written: int,
    skipped: int,
    done: int,
    interrupted: bool,
    ts: int,
) -> dict[str, Any]:
    req = plan.request
    symbols = list(req.symbols)
    return {
        "event_id": recompute_event_id(task_id),
        "kind": "FEATURE_RECOMPUTE",
        "symbol": symbols[0] if len(symbols) == 1 else None,
        "ts": ts,
        "task_id": task_id,
        "scope": {
            "symbols": symbols,
            "windows": list(plan.windows),
            "from_ts": req.from_ts,
            "to_ts": req.to_ts,
            "force": req.force,
        },
        "config_rev": plan.config_rev,
        "signals_written": written,
        "signals_skipped": skipped,
        "batches_done": done,
        "batches_total": plan.estimated_batches,
        "interrupted": interrupted,
    }
