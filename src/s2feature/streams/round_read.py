"""The read of a round of streams of one standalone server, in one round trip.

A service that owns a venue's streams reads them all once per round of its loop, most of them
with nothing new: the read is on the path of every entry, and at a hundred streams its cost
was mostly the client's (packing some two hundred arguments and redis-py's call machinery:
about 0.22 ms of CPU of a 0.4 ms round trip, against 0.16 ms for a `PING`). So the round's
`XREADGROUP` over every stream (blocking or not) is packed once while the streams, the count
and the block time stay the same, and written to a pooled connection directly. Anything
unusual on that path (a connection error, a timeout, an error reply) gives the read to the
ordinary call (`redis_io.read_new_of_any`), and the lost-reply `XPENDING`s go the same way
(`redis_io.first_pending_after`).

A read tells whether its reply came whole from the one command it wrote (`RoundReply.whole`):
then it lost nothing. Only a read that may have lost a reply (an error, a timeout, or the
ordinary call, which redis-py may send twice) needs the pending check (`service/reads.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import redis

from s2feature.streams.redis_io import (
    Entry,
    StreamIO,
    first_pending_after,
    read_new_of_any,
)


def bulk(value: bytes) -> bytes:
    """One argument in the Redis protocol (RESP bulk string)."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def packed(*args: str) -> bytes:
    """A command in the Redis protocol, as redis-py packs it (a test compares the two)."""
    return b"*%d\r\n" % len(args) + b"".join(bulk(a.encode()) for a in args)


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


class RoundReply(NamedTuple):
    """What a round read: the new entries by stream key (only streams with some), and whether
    the reply came whole from the one command written (`whole`): no entry it delivered went
    unseen. Not whole: the read went through the ordinary call, which may have sent it twice
    and lost the first reply, so entries delivered to this consumer may precede these."""

    batches: dict[str, list[Entry]]
    whole: bool


class RoundRead:
    """The read of a round of streams of one standalone server: one `XREADGROUP` of new
    entries of all of them (blocking until any has some, or not), and the lost-reply check
    of those that need one."""

    def __init__(self, client: redis.Redis, group: str, consumer: str) -> None:
        self._client = client
        self._direct = Direct(client)
        self._group, self._consumer = group, consumer
        self._for: tuple[tuple[str, ...], int, int | None] | None = None
        self._read = b""

    def read(self, keys: Sequence[str], count: int, block_ms: int | None) -> RoundReply:
        """`redis_io.read_new_of_any(...)`: the new entries (at most `count` each) of the
        streams that have some, by key: at once when some have, else once any has or
        `block_ms` passed (None: at once)."""
        scope = (tuple(keys), count, block_ms)
        if scope != self._for:
            args = ["XREADGROUP", "GROUP", self._group, self._consumer, "COUNT", str(count)]
            if block_ms is not None:
                args += ["BLOCK", str(block_ms)]
            self._read = packed(*args, "STREAMS", *keys, *([">"] * len(keys)))
            self._for = scope
        replies = self._direct.call(self._read)
        if replies is None:
            client, group, consumer = self._client, self._group, self._consumer
            batches = read_new_of_any(client, group, consumer, keys, count, block_ms)
            return RoundReply(batches, whole=False)
        reply = replies[0]
        if not reply:
            return RoundReply({}, whole=True)
        # RESP3: a map by stream; RESP2: a list of [stream, entries].
        streams = reply.items() if isinstance(reply, dict) else reply
        return RoundReply({_decode(key): _entries(rows) for key, rows in streams}, whole=True)

    def first_pending_after(self, checks: Sequence[tuple[StreamIO, str]]) -> list[str | None]:
        """`redis_io.first_pending_after(client, checks)`: for each (stream, applied ID), the
        first entry after it this consumer holds pending, all written together."""
        commands = b"".join(
            packed("XPENDING", io.key, io.group, f"({applied}", "+", "1", io.consumer)
            for io, applied in checks
        )
        replies = self._direct.call(commands, len(checks))
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
