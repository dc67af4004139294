"""Redis side of the service: consumer-group reads, outputs, checkpoints.

Every call here is one Redis round trip (or a pipeline of them); `streams.client.is_retryable`
tells the service loop which failures to retry with backoff. Writes are idempotent:
output entries have explicit IDs `<t0>-<k>`, so a replayed emit is rejected by Redis and counted as
already emitted; the dead-letter stream reuses the input entry ID for the same reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import redis
from redis.cluster import RedisCluster

from s2feature import strict_json
from s2feature.domain import SeriesId, window_index
from s2feature.streams.client import AnyRedis
from s2feature.streams.keys import cache_key, dead_letter_key, events_key, last_key
from s2feature.streams.lease import StreamLease

Fields = dict[bytes | str, bytes | str]
Entry = tuple[str, Fields]  # (entry id, fields)
ACK_SLICE: Final = 10_000  # entry IDs per XACK


# KEYS: feat:events:<symbol> [, feat:last:<symbol>]; ARGV: maxlen, last document, its TTL in s,
# then (entry ID, data) pairs. An ID at or below the stream's newest is a replay: skipped and not
# counted. Any other error ends the script before `feat:last` is set.
_EMIT: Final = """
local new = 0
for i = 4, #ARGV, 2 do
  local reply = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ARGV[i], 'data', ARGV[i + 1])
  if type(reply) == 'table' and reply.err then
    if not string.find(reply.err, 'equal or smaller', 1, true) then
      return reply
    end
  else
    new = new + 1
  end
end
if KEYS[2] then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
end
return new
"""


def entry_id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def lost_before(entries: Sequence[Entry], first_pending_id: str | None) -> bool:
    """Whether a batch of new entries was preceded by entries delivered to a lost reply, given
    the first entry this consumer holds pending after the last applied one (read right after
    the batch, so the batch itself is pending too: only an older pending entry was lost)."""
    if first_pending_id is None:
        return False
    return not entries or first_pending_id != entries[0][0]


class StreamIO:
    """Consumer-group reads and the outputs of one series."""

    def __init__(
        self, client: AnyRedis, series: SeriesId, group: str, consumer: str, lease: StreamLease
    ) -> None:
        self.client = client
        self.series = series
        self.key = series.stream_key
        self.group = group
        self.consumer = consumer
        self.lease = lease
        self._emit = client.register_script(_EMIT)

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def claim_all_pending(self, min_idle_ms: int) -> int:
        """Take over entries other consumers of the group left pending (called once the stream's
        lease is ours, so their consumers are dead or gone).

        XPENDING + XCLAIM JUSTID rather than XAUTOCLAIM: a claim must not count as a delivery,
        or a few restarts would push healthy entries over the dead-letter threshold, and
        redis-py's `xautoclaim(justid=True)` returns the claimed IDs without the cursor, so a
        pending list longer than one page could not be walked.
        """
        claimed, start = 0, "-"
        while True:
            rows: Any = self.client.xpending_range(
                self.key, self.group, min=start, max="+", count=200, idle=min_idle_ms
            )
            others = [r["message_id"] for r in rows if _decode(r["consumer"]) != self.consumer]
            if others:
                self.client.xclaim(
                    self.key, self.group, self.consumer, min_idle_ms, others, justid=True
                )
                claimed += len(others)
            if len(rows) < 200:
                return claimed
            start = "(" + _decode(rows[-1]["message_id"])  # exclusive: continue after it

    def read_new(self, count: int, block_ms: int | None) -> list[Entry]:
        """New entries, waiting up to `block_ms` for some (None: not at all)."""
        return self._read(">", count, block_ms)

    def read_new_checked(self, count: int, applied_id: str) -> tuple[list[Entry], bool]:
        """New entries (no blocking), and whether this consumer also holds entries after
        `applied_id` that came before them: delivered by an earlier read whose reply was lost
        (see the service loop). One round trip: the XPENDING runs right after the read.

        Not for blocking reads: a pipeline prefixes the error of each failed command ("Command
        # 1 (...) of pipeline caused error: UNBLOCKED ..."), and `is_retryable` recognises the
        UNBLOCKED of a blocked read whose key migrated by how its message starts."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xreadgroup(self.group, self.consumer, {self.key: ">"}, count=count)
        pipe.xpending_range(
            self.key,
            self.group,
            min=f"({applied_id}",
            max="+",
            count=1,
            consumername=self.consumer,
        )
        reply, pending = pipe.execute()
        entries = _entries_by_stream(reply).get(self.key, [])
        first_pending = _decode(pending[0]["message_id"]) if pending else None
        return entries, lost_before(entries, first_pending)

    def read_pending(self, count: int, after_id: str = "0") -> list[Entry]:
        """Entries delivered to this consumer and not acked yet, with IDs above `after_id`, oldest
        first. Page through them by passing the last ID of the previous page: entries stay pending
        until a checkpoint acks them, so reading from "0" again would return the same page."""
        return self._read(after_id, count, None)

    def has_pending_between(self, after_id: str, before_id: str | None) -> bool:
        """Whether this consumer holds a pending entry with `after_id < ID < before_id` (no upper
        bound when `before_id` is None)."""
        rows: Any = self.client.xpending_range(
            self.key,
            self.group,
            min=f"({after_id}",
            max="+" if before_id is None else f"({before_id}",
            count=1,
            consumername=self.consumer,
        )
        return bool(rows)

    def _read(self, from_id: str, count: int, block_ms: int | None) -> list[Entry]:
        reply: Any = self.client.xreadgroup(
            self.group, self.consumer, {self.key: from_id}, count=count, block=block_ms
        )
        return _entries_by_stream(reply).get(self.key, [])

    def delivery_counts(self, ids: Sequence[str]) -> dict[str, int]:
        if not ids:
            return {}
        rows: Any = self.client.xpending_range(
            self.key, self.group, min=ids[0], max=ids[-1], count=len(ids) + 1000
        )
        return {_decode(r["message_id"]): int(r["times_delivered"]) for r in rows}

    def ack(self, ids: Sequence[str]) -> None:
        # In slices: a checkpoint after a long catch-up can cover 100,000 entries or more, and
        # one command that size would hold Redis (single-threaded) for every other client.
        for start in range(0, len(ids), ACK_SLICE):
            self.client.xack(self.key, self.group, *ids[start : start + ACK_SLICE])

    def dead_letter(self, entry_id: str, fields: Fields, reasons: Sequence[str]) -> None:
        payload: Fields = {
            **fields,
            "s2_reasons": json.dumps(list(reasons)),
            "s2_source_stream": self.key,
        }
        try:
            self.client.xadd(dead_letter_key(self.series.symbol), payload, id=entry_id)  # type: ignore[arg-type]
        except redis.ResponseError as exc:
            if "equal or smaller" not in str(exc):
                raise

    def publish(
        self,
        items: Sequence[tuple[int, str, str | bytes]],
        maxlen: int,
        last: bytes | None,
        last_ttl_s: int,
    ) -> int:
        """Emit `(t0, window, data)` items — `data` the payload's JSON text, as stored — as
        `feat:events` entries with the explicit ID `<t0>-<k>`, then set `feat:last` to `last`.
        Returns how many entries were new: an ID Redis already has is a replay, rejected by
        Redis and counted as already emitted. Any other error fails the whole call, which the
        caller retries (what landed is then rejected as a replay, and `feat:last` set again).

        One script call does the emits and then `feat:last` (one round trip where a pipeline of
        XADDs cost several times the client's CPU). On a cluster the two keys live in different
        slots, so `feat:last` is a second call there, made only once the script has succeeded.
        """
        if not items:
            return 0
        keys, args = self.emit_request(items, maxlen, last, last_ttl_s)
        new = self.run_emit_script(keys, args)
        if last is not None and len(keys) == 1:
            self.client.set(last_key(self.series.symbol), last, ex=last_ttl_s)
        return new

    def emit_request(
        self,
        items: Sequence[tuple[int, str, str | bytes]],
        maxlen: int,
        last: bytes | None,
        last_ttl_s: int,
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the emit script for `publish`; `feat:last` is among the keys when
        the script can set it (there is one, and the client is not a cluster's)."""
        keys = [events_key(self.series.symbol)]
        args: list[Any] = [maxlen, last or b"", last_ttl_s]
        for t0, window, data in items:
            args += (f"{t0}-{window_index(window)}", data)
        if last is not None and not isinstance(self.client, RedisCluster):
            keys.append(last_key(self.series.symbol))
        return keys, args

    def run_emit_script(self, keys: Sequence[str], args: Sequence[Any]) -> int:
        """Run the emit script (loading it when the server does not have it); new emits."""
        return int(self._emit(keys=keys, args=args))

    @property
    def emit_sha(self) -> str:
        """SHA1 of the emit script, for `EVALSHA` sent by other means (`streams/ahead.py`)."""
        return str(self._emit.sha)

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Write the checkpoint while this consumer owns the stream; raises `LeaseLost` (and
        writes nothing) when another one has taken it over."""
        self.lease.fenced_set(cache_key(self.series.symbol), strict_json.encode(state))

    def load_checkpoint(self) -> dict[str, Any] | None:
        raw: Any = self.client.get(cache_key(self.series.symbol))
        return None if raw is None else dict(json.loads(raw))


def read_new_of_any(
    client: redis.Redis, group: str, consumer: str, keys: Sequence[str], count: int, block_ms: int
) -> dict[str, list[Entry]]:
    """One blocking `XREADGROUP` over several streams of one standalone server: returns as soon
    as any of them has new entries (at most `count` per stream), keyed by stream."""
    reply: Any = client.xreadgroup(
        group, consumer, dict.fromkeys(keys, ">"), count=count, block=block_ms
    )
    return _entries_by_stream(reply)


def _entries_by_stream(reply: Any) -> dict[str, list[Entry]]:
    out: dict[str, list[Entry]] = {}
    for stream, entries in reply or []:
        out[_decode(stream)] = [
            # No fields: trimmed away while pending, nothing left to process.
            (_decode(entry_id), {} if fields is None else fields)
            for entry_id, fields in entries
        ]
    return out


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
