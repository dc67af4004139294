"""One input stream's ingest: decode -> time-order gate -> jump check -> base-bar assembly.

Pure and restartable: `snapshot()` after any entry, `restore()` into a fresh ingestor, and the
next entries give exactly what an uninterrupted ingestor would. A dropped entry changes no state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from s2feature.config.bundle import ConfigBundle
from s2feature.domain import Bar, Kline, MarketEvent, SeriesId
from s2feature.dqc.events import EventGate, JumpDetector, Rejected
from s2feature.ingest.assembler import BaseBarAssembler
from s2feature.ingest.decode import decode_entry


@dataclass(slots=True)  # not frozen: one is made per entry, and a frozen init costs 3x more
class IngestOutcome:
    """What one entry did: the base bars it finalised, or why it was dropped.

    `event` is the decoded event when the entry was readable (also when the gate dropped it, so
    the caller can log it). `duplicate` says the entry repeated the previous accepted event
    exactly and was absorbed without any effect.
    """

    bars: list[Bar] = field(default_factory=list)
    rejected: Rejected | None = None
    jumped: bool = False
    event: MarketEvent | None = None
    duplicate: bool = False

    @property
    def accepted(self) -> bool:
        return self.rejected is None


class StreamIngestor:
    """Decode, gate, jump-check and assemble the entries of one stream, in order."""

    def __init__(self, series: SeriesId, bundle: ConfigBundle) -> None:
        self.series = series
        dqc = bundle.dqc
        self._gate = EventGate(series.symbol, bundle.base_ms)
        self._jumps = JumpDetector(dqc.jump_lookback, dqc.jump_mad_multiplier, dqc.mad_floor_ratio)
        self._assembler = BaseBarAssembler(bundle.base_ms)
        self._last_event: MarketEvent | None = None

    def on_entry(self, fields: Mapping[bytes | str, bytes | str]) -> IngestOutcome:
        """Process one raw stream entry; never raises for bad input."""
        return self.on_decoded(decode_entry(fields))

    def on_decoded(self, decoded: MarketEvent | Rejected) -> IngestOutcome:
        """Process what `decode_entry` made of the next entry (decoding is pure, so a caller may
        decode a whole batch first)."""
        if isinstance(decoded, Rejected):
            return IngestOutcome(rejected=decoded)
        return self.on_event(decoded)

    def on_event(self, event: MarketEvent) -> IngestOutcome:
        """Process one decoded event (the entry path after decoding)."""
        last = self._last_event
        # (`ts` first: the full comparison builds two tuples of every field)
        if last is not None and event.ts == last.ts and event == last:
            # A repeated publication of the same observation: taking it again would double its
            # weight in the jump window and its jump count, so it is absorbed (idempotent).
            return IngestOutcome(event=event, duplicate=True)
        rejected = self._gate.admit(event)
        if rejected is not None:
            return IngestOutcome(rejected=rejected, event=event)
        jumped = self._jumps.check_and_add(event.mid)
        bars = self._assembler.on_event(event, jumped)
        self._last_event = event
        return IngestOutcome(bars, None, jumped, event)

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state of the whole stream."""
        return {
            "gate": self._gate.snapshot(),
            "jumps": self._jumps.snapshot(),
            "assembler": self._assembler.snapshot(),
            "last_event": None if self._last_event is None else asdict(self._last_event),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self._gate.restore(state["gate"])
        self._jumps.restore(state["jumps"])
        self._assembler.restore(state["assembler"])
        last = state["last_event"]
        self._last_event = None if last is None else _event_from_state(last)


def _event_from_state(state: Mapping[str, Any]) -> MarketEvent:
    values = dict(state)
    values["kline"] = Kline(**values["kline"])
    return MarketEvent(**values)
