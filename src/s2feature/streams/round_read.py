"""The checked read of a round of streams of one standalone server, in one round trip.

A service that owns a venue's streams reads them all once per round of its loop, most of them
with nothing new: the read is on the path of every entry, and at a hundred streams its cost
was mostly the client's (packing some two hundred arguments and redis-py's call machinery:
about 0.22 ms of CPU of a 0.4 ms round trip, against 0.16 ms for a `PING`). So the command is
packed from a prefix kept while the streams and the count stay the same (the script's SHA,
the keys, group, consumer, count) and the streams' applied IDs, and written to a pooled
connection directly. Anything unusual on that path (the script not loaded, a connection
error, a timeout, an error reply) gives the read to the ordinary script call, which loads the
script and retries as redis-py does: a read whose reply was lost is sent again, and the
script's pending check then finds what the lost one delivered (`redis_io.lost_before`).

The idle wait (`RoundWait`) goes the same way: one blocking `XREADGROUP` over every stream,
packed once while the streams stay the same, then the lost-reply `XPENDING` of each stream it
returned, written together; either falls back to the ordinary call (`redis_io.read_new_of_any`,
`redis_io.first_pending_after`) on anything unusual.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import redis

from s2feature.streams.redis_io import (
    CheckedRead,
    Entry,
    StreamIO,
    first_pending_after,
    lost_before,
    read_new_of_any,
)

# KEYS: the streams; ARGV: group, consumer, count, then each stream's last applied entry ID.
# One non-blocking XREADGROUP over every stream, then, for each stream it returned entries of, the
# first entry after the applied one this consumer holds pending (`lost_before`): the checked
# read of `StreamIO.read_new_checked` for a round of streams, in one round trip. Returns
# {key, entries, first pending ID or false} for the streams with new entries only.
READ_ROUND: Final = """
local group, consumer = ARGV[1], ARGV[2]
local read = {'XREADGROUP', 'GROUP', group, consumer, 'COUNT', ARGV[3], 'STREAMS'}
local applied = {}
for i = 1, #KEYS do
  read[#read + 1] = KEYS[i]
  applied[KEYS[i]] = ARGV[3 + i]
end
for i = 1, #KEYS do
  read[#read + 1] = '>'
end
local reply = redis.call(unpack(read))
local out = {}
if not reply then
  return out
end
for _, stream in ipairs(reply) do
  local key = stream[1]
  local pending = redis.call('XPENDING', key, group, '(' .. applied[key], '+', 1, consumer)
  local first = false
  if pending[1] then
    first = pending[1][1]
  end
  out[#out + 1] = {key, stream[2], first}
end
return out
"""


def bulk(value: bytes) -> bytes:
    """One argument in the Redis protocol (RESP bulk string)."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


class RoundCommand:
    """The `EVALSHA` of `READ_ROUND` in the Redis protocol, as redis-py would pack it (a test
    compares the two byte for byte). The part before the applied IDs is packed once per set
    of streams and count."""

    def __init__(self, sha: str, group: str, consumer: str) -> None:
        self._sha, self._group, self._consumer = sha, group, consumer
        self._for: tuple[tuple[str, ...], int] | None = None
        self._prefix = b""

    def pack(self, keys: Sequence[str], applied_ids: Sequence[str], count: int) -> bytes:
        if len(applied_ids) != len(keys):
            raise ValueError("one applied ID per stream")
        scope = (tuple(keys), count)
        if scope != self._for:
            head = ["EVALSHA", self._sha, str(len(keys)), *keys]
            head += [self._group, self._consumer, str(count)]
            count_of_args = len(head) + len(applied_ids)
            self._prefix = b"*%d\r\n" % count_of_args + b"".join(bulk(a.encode()) for a in head)
            self._for = scope
        # Entry IDs are ASCII digits and "-", so a character is a byte.
        ids = "".join([f"${len(i)}\r\n{i}\r\n" for i in applied_ids]).encode("ascii")
        return self._prefix + ids


class Direct:
    """Commands written to a pooled connection of a standalone server and their replies read,
    without redis-py's call machinery; on any error the caller makes the ordinary call."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool

    def call(self, packed: bytes, replies: int = 1) -> list[Any] | None:
        """The replies to `packed` (holding `replies` commands), or None on any error (the
        connection dropped unless a single error reply left it in step)."""
        connection: Any = self._pool.get_connection()
        try:
            connection.send_packed_command([packed])
            return [connection.read_response() for _ in range(replies)]
        except redis.ResponseError:  # an error reply: in step only if it was the last one
            if replies > 1:
                connection.disconnect()
            return None
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            connection.disconnect()
            return None
        except BaseException:
            connection.disconnect()
            raise
        finally:
            self._pool.release(connection)


class RoundRead:
    """The checked non-blocking read of several streams of one standalone server, in one
    round trip (see the module docstring for the fast path and its fallback)."""

    def __init__(self, client: redis.Redis, group: str, consumer: str) -> None:
        self._script = client.register_script(READ_ROUND)
        self._direct = Direct(client)
        self._group, self._consumer = group, consumer
        self._command = RoundCommand(self._script.sha, group, consumer)

    def __call__(
        self, keys: Sequence[str], applied_ids: Sequence[str], count: int
    ) -> dict[str, CheckedRead]:
        """By stream key, for the streams with new entries only: the entries (at most `count`
        each), and whether entries delivered by a lost reply precede them."""
        replies = self._direct.call(self._command.pack(keys, applied_ids, count))
        if replies is not None:
            reply = replies[0]
        else:
            args: list[str | int] = [self._group, self._consumer, count, *applied_ids]
            reply = self._script(keys=keys, args=args)
        out: dict[str, CheckedRead] = {}
        for key, rows, first_pending in reply:
            entries = _entries(rows)
            first = None if first_pending is None else _decode(first_pending)
            out[_decode(key)] = (entries, lost_before(entries, first))
        return out


class RoundWait:
    """The idle wait of a round of streams of one standalone server: a blocking read of new
    entries of any of them, then the lost-reply check of those it returned."""

    def __init__(self, client: redis.Redis, group: str, consumer: str) -> None:
        self._client = client
        self._direct = Direct(client)
        self._group, self._consumer = group, consumer
        self._for: tuple[tuple[str, ...], int, int] | None = None
        self._read = b""

    def read(self, keys: Sequence[str], count: int, block_ms: int) -> dict[str, list[Entry]]:
        """`redis_io.read_new_of_any(..., block_ms)`: the new entries (at most `count` each) of
        the streams that have some, by key, once any has or `block_ms` passed."""
        scope = (tuple(keys), count, block_ms)
        if scope != self._for:
            args = ["XREADGROUP", "GROUP", self._group, self._consumer, "COUNT", str(count)]
            args += ["BLOCK", str(block_ms), "STREAMS", *keys, *([">"] * len(keys))]
            self._read = b"*%d\r\n" % len(args) + b"".join(bulk(a.encode()) for a in args)
            self._for = scope
        replies = self._direct.call(self._read)
        if replies is None:
            client, group, consumer = self._client, self._group, self._consumer
            return read_new_of_any(client, group, consumer, keys, count, block_ms)
        reply = replies[0]
        if not reply:
            return {}
        # RESP3: a map by stream; RESP2: a list of [stream, entries].
        streams = reply.items() if isinstance(reply, dict) else reply
        return {_decode(key): _entries(rows) for key, rows in streams}

    def first_pending_after(self, checks: Sequence[tuple[StreamIO, str]]) -> list[str | None]:
        """`redis_io.first_pending_after(client, checks)`: for each (stream, applied ID), the
        first entry after it this consumer holds pending, all written together."""
        packed = b"".join(
            b"*7\r\n"
            + b"".join(
                bulk(a.encode())
                for a in ("XPENDING", io.key, io.group, f"({applied}", "+", "1", io.consumer)
            )
            for io, applied in checks
        )
        replies = self._direct.call(packed, len(checks))
        if replies is None:
            return first_pending_after(self._client, checks)
        return [_decode(rows[0][0]) if rows else None for rows in replies]


def _entries(rows: Any) -> list[Entry]:
    """A stream's entries of a raw reply, fields as a dict (`{}`: trimmed away while pending,
    nothing left to process), as the ordinary reads return them."""
    entries: list[Entry] = []
    for entry_id, flat in rows:
        pairs = iter(flat or ())
        entries.append((_decode(entry_id), dict(zip(pairs, pairs, strict=False))))
    return entries


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
