"""Redis side of the service: consumer-group reads, outputs, checkpoints.

Every call here is one Redis round trip (or a pipeline of them); `streams.client.is_retryable`
tells the service loop which failures to retry with backoff. Writes are idempotent:
output entries have explicit IDs `<t0>-<k>`, so a replayed emit is rejected by Redis and counted as
already emitted; the dead-letter stream reuses the input entry ID for the same reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import redis
from redis.cluster import RedisCluster

from s2feature import strict_json
from s2feature.domain import SeriesId, window_index
from s2feature.streams.client import AnyRedis
from s2feature.streams.keys import cache_key, dead_letter_key, events_key, last_key
from s2feature.streams.lease import StreamLease
from s2feature.streams.replicas import wait_for_replicas

Fields = dict[bytes | str, bytes | str]
Entry = tuple[str, Fields]  # (entry id, fields)
CheckedRead = tuple[list[Entry], bool]  # new entries, and whether a lost reply preceded them
ACK_SLICE: Final = 10_000  # entry IDs per XACK
T = TypeVar("T")


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


@dataclass(frozen=True)
class ReadFailure:
    """Reads of a stream failing without a success in between: since when (`time.monotonic()`),
    the last error, and the node the stream's slot was mapped to at that error."""

    since: float
    last_error: str
    node: str


@dataclass(frozen=True)
class _Emitted:
    """One emit call, kept until replicas confirmed it (`S2_REDIS_MIN_REPLICAS`)."""

    keys: tuple[str, ...]
    args: tuple[Any, ...]
    last: bytes | None
    last_ttl_s: int


class StreamIO:
    """Consumer-group reads and the outputs of one series.

    With `min_replicas` > 0, `confirm_outputs` and `save_checkpoint` return only once that many
    replicas hold the writes (see `streams/replicas.py`), waiting at most `wait_ms` per node.
    """

    def __init__(
        self,
        client: AnyRedis,
        series: SeriesId,
        group: str,
        consumer: str,
        lease: StreamLease,
        *,
        min_replicas: int = 0,
        wait_ms: int = 1000,
    ) -> None:
        self.client = client
        self.series = series
        self.key = series.stream_key
        self.group = group
        self.consumer = consumer
        self.lease = lease
        self.min_replicas = min_replicas
        self.wait_ms = wait_ms
        self._emit = client.register_script(_EMIT)
        # Reads failing since (None while they succeed), and the end of the last successful
        # read (`time.monotonic()`): for health reporting.
        self.read_failure: ReadFailure | None = None
        self.last_read_at: float | None = None
        # Writes not yet confirmed by replicas, in order, and the node of each key they wrote,
        # as the slot map had it then (see `confirm_outputs`).
        self._unconfirmed: list[_Emitted] = []
        self._dead_unconfirmed: list[tuple[str, Fields, tuple[str, ...]]] = []
        self._written_nodes: dict[str, str | None] = {}
        self._rewrite = False

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
        reply, pending = self._reading(pipe.execute)
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
        reply: Any = self._reading(
            lambda: self.client.xreadgroup(
                self.group, self.consumer, {self.key: from_id}, count=count, block=block_ms
            )
        )
        return _entries_by_stream(reply).get(self.key, [])

    def _reading(self, read: Callable[[], T]) -> T:
        """Run a read, keeping `read_failure` up to date."""
        try:
            result = read()
        except Exception as exc:
            self.read_failed(exc)
            raise
        self.read_succeeded()
        return result

    def read_failed(self, exc: Exception) -> None:
        """A read of this stream (alone or with others) failed: for health reporting."""
        since = time.monotonic() if self.read_failure is None else self.read_failure.since
        self.read_failure = ReadFailure(since, f"{type(exc).__name__}: {exc}", self.node())

    def read_succeeded(self) -> None:
        self.read_failure, self.last_read_at = None, time.monotonic()

    def node(self) -> str:
        """`host:port` of the node this stream's reads go to, as the client's map has it."""
        try:
            if isinstance(self.client, RedisCluster):
                return str(self.client.get_node_from_key(self.key).name)  # type: ignore[no-untyped-call]
            kwargs = self.client.connection_pool.connection_kwargs
            return f"{kwargs.get('host')}:{kwargs.get('port')}"
        except Exception as exc:  # a map caught mid-refresh: say so rather than fail the read
            return f"unknown ({type(exc).__name__})"

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
        self._before_write()
        if self.min_replicas > 0:
            self._dead_unconfirmed.append((entry_id, fields, tuple(reasons)))
            self._note_nodes([dead_letter_key(self.series.symbol)])
        self._unless_failed(lambda: self._dead_letter(entry_id, fields, reasons))

    def _dead_letter(self, entry_id: str, fields: Fields, reasons: Sequence[str]) -> None:
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
        self._before_write()
        self.written(keys, args, last, last_ttl_s)
        return self._unless_failed(lambda: self._publish(keys, args, last, last_ttl_s))

    def _publish(
        self, keys: Sequence[str], args: Sequence[Any], last: bytes | None, last_ttl_s: int
    ) -> int:
        new = self.run_emit_script(keys, args)
        if last is not None and len(keys) == 1:
            self.client.set(last_key(self.series.symbol), last, ex=last_ttl_s)
        return new

    # -- replicas (`min_replicas` > 0) -----------------------------------------------------------
    #
    # Writes not yet confirmed by replicas are kept, in order, until `confirm_outputs`. Output
    # streams take explicit, increasing IDs, so a write lost with a failed master can be put back
    # only before anything newer lands: whenever one may have been lost (a write or a wait
    # failed since, or the key's slot is served by another node than when it was written), all
    # of them are written again, in order, before the next write and before the next wait.

    def written(
        self, keys: Sequence[str], args: Sequence[Any], last: bytes | None, last_ttl_s: int
    ) -> None:
        """Note an emit request about to be sent (by `publish`, or ahead of its reply), so
        that `confirm_outputs` can wait for it and rewrite it."""
        if self.min_replicas > 0:
            self._unconfirmed.append(_Emitted(tuple(keys), tuple(args), last, last_ttl_s))
            self._note_nodes([*keys, last_key(self.series.symbol)] if last else keys)

    def confirm_outputs(self) -> None:
        """Return once `min_replicas` replicas hold every emit, `feat:last` and dead letter
        written since the last confirmation (at once when `min_replicas` is 0).

        Raises `ReplicasBehind` (retryable) when they do not within `wait_ms`; the next write
        or confirmation then first writes them again (replays are skipped where they landed),
        should the node have failed over to a replica that lacked them. Only once this returns
        may the entries they came from be checkpointed and acked.
        """
        if self.min_replicas <= 0 or not (self._unconfirmed or self._dead_unconfirmed):
            return
        self._before_write()
        self._unless_failed(lambda: self._wait_for_replicas(set(self._written_nodes)))
        self._unconfirmed, self._dead_unconfirmed, self._written_nodes = [], [], {}

    def _before_write(self) -> None:
        """Write the unconfirmed writes again, in order, when one of them may have been lost."""
        if self.min_replicas <= 0 or not (self._rewrite or self._moved()):
            return
        self._rewrite = True  # until every rewrite below has succeeded
        for entry_id, fields, reasons in self._dead_unconfirmed:
            self._dead_letter(entry_id, fields, reasons)
        for emitted in self._unconfirmed:
            self._publish(emitted.keys, emitted.args, emitted.last, emitted.last_ttl_s)
        self._written_nodes = {key: self._node_of(key) for key in self._written_nodes}
        self._rewrite = False

    def _unless_failed(self, write: Callable[[], T]) -> T:
        """Run a write (or a wait); when it fails, what it wrote may be lost: rewrite first."""
        try:
            return write()
        except Exception:
            self._rewrite = self.min_replicas > 0
            raise

    def _note_nodes(self, keys: Sequence[str]) -> None:
        for key in keys:
            if key not in self._written_nodes:
                self._written_nodes[key] = self._node_of(key)

    def _moved(self) -> bool:
        """Whether a key with unconfirmed writes is now served by another node (a failover
        seen by a refresh of the slot map, without a failure of ours)."""
        return any(self._node_of(key) != node for key, node in self._written_nodes.items())

    def _node_of(self, key: str) -> str | None:
        if not isinstance(self.client, RedisCluster):
            return "server"
        try:
            return str(self.client.get_node_from_key(key).name)  # type: ignore[no-untyped-call]
        except Exception:  # not in the slot map: unknown, so compared as a change
            return None

    def _wait_for_replicas(self, keys: set[str]) -> None:
        wait_for_replicas(self.client, keys, self.min_replicas, self.wait_ms, self.consumer)

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

    def save_checkpoint(self, state: Mapping[str, Any] | bytes) -> int:
        """Write the checkpoint (a state, or its JSON document) while this consumer owns the
        stream; raises `LeaseLost` (and writes nothing) when another one has taken it over. With
        `min_replicas` > 0, returns once that many replicas hold it, else raises
        `ReplicasBehind`. Returns its size in bytes."""
        document = state if isinstance(state, bytes) else strict_json.encode(state)
        self.lease.fenced_set(cache_key(self.series.symbol), document)
        self._wait_for_replicas({cache_key(self.series.symbol)})
        return len(document)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint, or None. Writes not confirmed by replicas are forgotten: the state is
        rebuilt from the checkpoint, and what they held is derived again from the entries."""
        self._unconfirmed, self._dead_unconfirmed, self._rewrite = [], [], False
        self._written_nodes = {}
        raw: Any = self.client.get(cache_key(self.series.symbol))
        return None if raw is None else dict(json.loads(raw))


def read_new_of_any(
    client: redis.Redis,
    group: str,
    consumer: str,
    keys: Sequence[str],
    count: int,
    block_ms: int | None,
) -> dict[str, list[Entry]]:
    """One `XREADGROUP` over several streams of one standalone server, keyed by stream (only
    those with new entries, at most `count` each): blocking until any of them has some, or
    (`block_ms` None) at once."""
    reply: Any = client.xreadgroup(
        group, consumer, dict.fromkeys(keys, ">"), count=count, block=block_ms
    )
    return _entries_by_stream(reply)


def first_pending_after(
    client: AnyRedis, checks: Sequence[tuple[StreamIO, str]]
) -> list[str | None]:
    """For each (stream, applied ID): the first entry after that ID this consumer holds
    pending (None when none), all in one pipeline: the lost-reply checks of a round of reads
    (`lost_before`)."""
    pipe = client.pipeline(transaction=False)
    for io, applied_id in checks:
        pipe.xpending_range(
            io.key, io.group, min=f"({applied_id}", max="+", count=1, consumername=io.consumer
        )
    replies: Any = pipe.execute()
    return [_decode(rows[0]["message_id"]) if rows else None for rows in replies]


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
