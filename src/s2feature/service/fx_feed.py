"""The FX leg of the service: the FX series' bars to every other symbol's correlation family.

One `FxLeg` per service, when a stream of `S2_SYMBOLS` has the bundle's `rho.fx_symbol`:

- `FxFeed`: this instance's copy of the FX series' final base bars, as w-bar closes per window
  (`compute.fx_closes.LiveFxCloses`). The FX owner's worker adds its new bars in memory when it
  computes them and publishes them to `feat:fxbars:<fx symbol>` when it commits them (explicit
  IDs `<close_time>-0`, so a replay is skipped and the stream holds each bar once, in order).
  Every instance loads the recent part of that stream at start, and one that does not own the
  FX stream reads it with a plain `XREAD` after its `known_until` while a snapshot waits.
- one `FxGate` per other symbol (`service.fx_barrier`), which holds its bars until the feed
  knows their close time or their deadline passed.

The loop (`service.runner`) asks the leg which streams may be read (not those holding bars: a
symbol that runs ahead of the FX leaves its input in Redis), how long an idle wait may block
(not past the next deadline), and, after each round, to release what became ready.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, cast

import redis

from s2feature.compute.fx_closes import FxWindowCloses, LiveFxCloses
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import Bar, SeriesId, interval_ms
from s2feature.lake.parquet import BarLake
from s2feature.service.fx_barrier import FxGate
from s2feature.streams.client import AnyRedis
from s2feature.streams.keys import fx_bars_key

log = logging.getLogger("s2feature.service")

FX_BARS_MAXLEN: Final = 100_000  # about 69 days of one-minute bars
READ_PAGE: Final = 5_000
# Poll period of the published FX bars while a snapshot waits and the FX stream is owned
# elsewhere: the longest the wait outlasts the FX bar it waits for.
REMOTE_POLL_MS: Final = 20
PRUNE_S: Final = 10.0


def _id_of(bar_close_time: int) -> str:
    return f"{bar_close_time}-0"


class FxFeed:
    """The FX series' base bars as seen by this instance (see the module docstring)."""

    def __init__(
        self,
        client: AnyRedis,
        fx: SeriesId,
        windows: Sequence[str],
        bundle: ConfigBundle,
        lake: BarLake | None = None,
    ) -> None:
        self.client = client
        self.lake = lake
        self.series = fx
        self.key = fx_bars_key(fx.symbol)
        # A snapshot at t0 reads FX closes back to t0 - (rho_period + rho_z_period - 1) w (its
        # z-score's oldest rho): this span of the largest window, one period more, covers it.
        periods = bundle.windows.rho_period + bundle.windows.rho_z_period + 1
        windows_ms = [interval_ms(w) for w in windows]
        self.closes = LiveFxCloses(windows_ms)
        self.span_ms = periods * max(windows_ms)
        self.history_bars = self.span_ms // bundle.base_ms
        self.views: dict[str, FxWindowCloses] = {
            w: self.closes.view(interval_ms(w)) for w in windows
        }

    @property
    def known_until(self) -> int:
        return self.closes.known_until

    def add_bars(self, bars: Iterable[Bar]) -> None:
        """The FX owner's new bars, as it computes them (bars already seen are skipped)."""
        add = self.closes.add
        for bar in bars:
            add(bar.open_time, bar.close_time, bar.close)

    def _add_entries(self, rows: Iterable[tuple[bytes, Mapping[bytes, bytes]]]) -> int:
        added = 0
        for entry_id, fields in rows:
            close_time = int(entry_id.split(b"-")[0])
            open_time = int(fields[b"open_time"])
            added += self.closes.add(open_time, close_time, float(fields[b"close"]))
        return added

    def load(self) -> int:
        """At start: the recent published bars (the span the correlation reads), oldest first."""
        rows = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            self.client.xrevrange(self.key, count=self.history_bars),
        )
        return self._add_entries(reversed(rows))

    def cover(self, until: int) -> None:
        """Make sure the closes a symbol whose bars reach `until` reads are held: read the older
        published bars when the feed starts later (a symbol behind the FX, taken over or
        catching up), and, before the first of them, the FX series' lake partition (a stream
        that lost its data)."""
        start = max(until - self.span_ms, 0)
        covered = self.closes.covered_from
        if covered is not None and start >= covered:
            return
        rows: list[tuple[int, int, float]] = []
        low, high = f"{start}", "+" if covered is None else f"{covered - 1}"
        while True:
            page = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                self.client.xrange(self.key, min=low, max=high, count=READ_PAGE),
            )
            for entry_id, fields in page:
                close_time = int(entry_id.split(b"-")[0])
                rows.append((int(fields[b"open_time"]), close_time, float(fields[b"close"])))
            if len(page) < READ_PAGE:
                break
            low = f"({page[-1][0].decode()}"
        if self.lake is not None:
            first = rows[0][1] if rows else covered
            older = self.lake.read(
                self.series.symbol,
                from_open_time=start,
                to_close_time=None if first is None else first - 1,
            )
            lake_rows = zip(
                older.open_time.tolist(),
                older.close_time.tolist(),
                older.close.tolist(),
                strict=True,
            )
            rows = [*lake_rows, *rows]
        if covered is None:
            for open_time, close_time, close in rows:
                self.closes.add(open_time, close_time, close)
        else:
            self.closes.backfill(rows)

    def poll(self) -> int:
        """Read the bars published after `known_until` (an instance that does not own the FX
        stream). Returns how many were new."""
        added = 0
        while True:
            start = _id_of(max(self.known_until, 0))
            reply: Any = self.client.xread({self.key: start}, count=READ_PAGE)
            rows = reply[0][1] if reply else []
            added += self._add_entries(rows)
            if len(rows) < READ_PAGE:
                return added

    def publish(self, bars: Sequence[Bar]) -> None:
        """Publish the FX owner's committed bars; IDs Redis already holds (a replay) are skipped.
        Called in the commit, before the entries can be checkpointed and acked."""
        if not bars:
            return
        pipe = self.client.pipeline(transaction=False)
        for bar in bars:
            fields = {"open_time": bar.open_time, "close": repr(bar.close)}
            pipe.xadd(
                self.key,
                fields,  # type: ignore[arg-type]
                id=_id_of(bar.close_time),
                maxlen=FX_BARS_MAXLEN,
                approximate=True,
            )
        for result in pipe.execute(raise_on_error=False):
            if isinstance(result, redis.ResponseError) and "equal or smaller" not in str(result):
                raise result
            if isinstance(result, Exception) and not isinstance(result, redis.ResponseError):
                raise result


class FxLeg:
    """The FX series, its feed and the gates of the other symbols of one service."""

    def __init__(self, feed: FxFeed, max_wait_ms: int) -> None:
        self.feed = feed
        self.max_wait_s = max_wait_ms / 1000
        self.gates: dict[str, FxGate] = {}  # stream key -> gate of a symbol that uses FX
        self.fx_stream = feed.series.stream_key
        self._pruned_at = time.monotonic()

    @classmethod
    def of(
        cls,
        client: AnyRedis,
        series: Sequence[SeriesId],
        windows: Sequence[str],
        bundle: ConfigBundle,
        max_wait_ms: int,
        lake: BarLake | None = None,
    ) -> FxLeg | None:
        """The leg of the series named by `rho.fx_symbol`; None when no stream has it."""
        fx = next((s for s in series if s.symbol == bundle.rho.fx_symbol), None)
        if fx is None:
            return None
        return cls(FxFeed(client, fx, windows, bundle, lake), max_wait_ms)

    def cover(self, seen_until: int | None, bars_until: int) -> None:
        """A symbol's state was restored (its engine has seen bars up to `seen_until`, its
        ingestor up to `bars_until`): hold the FX closes its next snapshots read."""
        until = bars_until if seen_until is None or seen_until < 0 else seen_until
        if until >= 0:
            self.feed.cover(until)

    def prune(self, progress: Iterable[int | None]) -> None:
        """Drop the FX closes no owned symbol reads any more: those older than the span before
        the slowest one's newest bar (`progress`: each symbol engine's `seen_until`), at most
        every PRUNE_S seconds."""
        now = time.monotonic()
        if now - self._pruned_at < PRUNE_S:
            return
        self._pruned_at = now
        feed = self.feed
        floor = min((p for p in progress if p is not None and p >= 0), default=feed.known_until)
        feed.closes.prune(min(floor, feed.known_until) - feed.span_ms)

    def gate_for(self, series: SeriesId) -> FxGate | None:
        """A new gate for a symbol's worker; None for the FX series itself."""
        if series.stream_key == self.fx_stream:
            return None
        gate = FxGate(self.feed.closes, self.max_wait_s)
        self.gates[series.stream_key] = gate
        return gate

    def views_for(self, series: SeriesId) -> Mapping[str, FxWindowCloses] | None:
        return None if series.stream_key == self.fx_stream else self.feed.views

    def readable(self, keys: Iterable[str]) -> set[str]:
        """The streams that may be read now: not those whose gate holds bars."""
        gates = self.gates
        return {k for k in keys if k not in gates or not gates[k].waiting}

    def waiting(self, keys: Iterable[str]) -> list[str]:
        gates = self.gates
        return [k for k in keys if k in gates and gates[k].waiting]

    def block_ms(self, block_ms: int, owned: Iterable[str]) -> int:
        """The idle wait's block time: never past the next deadline, and short while a
        snapshot waits for bars another instance publishes."""
        waiting = self.waiting(owned)
        if not waiting:
            return block_ms
        now = time.monotonic()
        deadlines = [d for k in waiting if (d := self.gates[k].next_deadline()) is not None]
        until = min(deadlines) - now if deadlines else block_ms / 1000
        cap = block_ms if self.fx_stream in owned else min(block_ms, REMOTE_POLL_MS)
        return max(1, min(cap, int(until * 1000) + 1))

    def release(self, owned: Sequence[str], commit: Callable[[str], None]) -> int:
        """After a round: read the published FX bars when they come from elsewhere, then let
        `commit` release every waiting stream whose oldest bar may go through. Returns the
        number of streams released."""
        waiting = self.waiting(owned)
        if not waiting:
            return 0
        if self.fx_stream not in owned:
            try:
                self.feed.poll()
            except redis.RedisError as exc:  # the deadline bounds the wait; retried next round
                log.warning("FX bars not read (%s)", exc)
        now = time.monotonic()
        released = 0
        for key in waiting:
            if self.gates[key].ready(now):
                commit(key)
                released += 1
        return released
