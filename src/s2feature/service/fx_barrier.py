"""The FX barrier: a symbol's base bars wait for the FX w-bars closing with them.

A snapshot at t0 reads FX closes up to t0 only, and live must equal a recompute, so the FX
w-bar closing at t0 must be final before the symbol's snapshot at t0 is made. `FxGate` holds a
symbol's new base bars, in order, before the engine sees them, and lets each one through once the
FX feed's `known_until` reaches its close time (every w-bar the bar finalises closes by then), or
once `S2_FX_MAX_WAIT_MS` of wall time passed since the bar was ingested. A bar let through by its
deadline gives snapshots whose t0 the FX feed had not reached: their `rho_*` are null (the FX
close at t0 is not readable yet) and their DQC says `fx_late`.

Held bars are part of the worker's checkpoint (`snapshot`/`restore`): the entries that produced
them are acked with it, and a restarted service waits for them again with a fresh deadline.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any, Final

from s2feature.compute.correlation import CORRELATION_FEATURES
from s2feature.compute.fx_closes import LiveFxCloses
from s2feature.domain import Bar, Snapshot
from s2feature.dqc.verdict import FX_LATE

log = logging.getLogger("s2feature.service")

FX_LATE_NOTE: Final = "fx_late: the FX w-bar closing at t0 was not known within S2_FX_MAX_WAIT_MS"


def mark_fx_late(snap: Snapshot) -> Snapshot:
    """The snapshot with `rho_*` null and `fx_late` in its DQC reasons and note. The verdict
    itself is unchanged: a null rho counts as missing only when the bundle requires it, and
    the assembly has already judged the null value."""
    features = dict(snap.features)
    for name in CORRELATION_FEATURES:
        if name in features:
            features[name] = None
    snap.features = features
    dqc = snap.dqc
    note = f"{dqc.note}; {FX_LATE_NOTE}" if dqc.note else FX_LATE_NOTE
    snap.dqc = replace(dqc, reasons=(*dqc.reasons, FX_LATE), note=note)
    return snap


class FxGate:
    """The held base bars of one symbol, oldest first, each with its deadline (monotonic s)."""

    def __init__(self, closes: LiveFxCloses, max_wait_s: float) -> None:
        self.closes = closes
        self.max_wait_s = max_wait_s
        self.held: deque[tuple[Bar, float]] = deque()
        self.late = 0  # snapshots made with `fx_late`
        self.held_bars = 0  # bars that had to wait (in time or not)

    @property
    def waiting(self) -> bool:
        return bool(self.held)

    def next_deadline(self) -> float | None:
        return self.held[0][1] if self.held else None

    def ready(self, now: float) -> bool:
        """Whether the oldest held bar can go through now."""
        if not self.held:
            return False
        bar, deadline = self.held[0]
        return bar.close_time <= self.closes.known_until or now >= deadline

    def feed(
        self, on_base_bar: Callable[[Bar], list[Snapshot]], bars: Sequence[Bar], now: float
    ) -> list[Snapshot]:
        """Hold `bars` (just ingested) behind the bars already held; feed the engine
        (`on_base_bar`) every held bar that may go through now, in order, and return their
        snapshots."""
        held = self.held
        known = self.closes.known_until
        if not held and (not bars or bars[-1].close_time <= known):
            # The common case: the FX feed is ahead (or nothing waits): no bookkeeping.
            return [snap for bar in bars for snap in on_base_bar(bar)]
        deadline = now + self.max_wait_s
        held.extend((bar, deadline) for bar in bars)
        self.held_bars += sum(bar.close_time > known for bar in bars)
        out: list[Snapshot] = []
        while held:
            bar, due = held[0]
            in_time = bar.close_time <= known
            if not in_time and now < due:
                break
            held.popleft()
            snaps = on_base_bar(bar)
            if not in_time:
                snaps = [self._late(s) if s.t0 > known else s for s in snaps]
            out.extend(snaps)
        return out

    def _late(self, snap: Snapshot) -> Snapshot:
        if not any(name in snap.features for name in CORRELATION_FEATURES):
            return snap  # the bundle computes no rho: nothing was missed
        self.late += 1
        log.warning(
            "%s %s t0=%d: FX not known within the wait; rho_* null (fx_late)",
            snap.series.symbol,
            snap.window,
            snap.t0,
            extra={
                "event": "fx_late",
                "symbol": snap.series.symbol,
                "window": snap.window,
                "t0": snap.t0,
                "fx_known_until": self.closes.known_until,
            },
        )
        return mark_fx_late(snap)

    # -- checkpoint --------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """The held bars, for the checkpoint (deadlines are wall-clock facts of this process)."""
        return [asdict(bar) for bar, _ in self.held]

    def restore(self, state: Iterable[Mapping[str, Any]] | None, now: float) -> None:
        """Hold the bars of a checkpoint again, each with a fresh deadline."""
        deadline = now + self.max_wait_s
        self.held = deque((Bar(**bar), deadline) for bar in state or ())

    def clear(self) -> None:
        self.held.clear()
