"""A read of a stream's new entries sent now and collected later (standalone Redis).

The service reads its streams in turn. Sending the next stream's read before processing the
current batch lets Redis prepare that reply (an `XREADGROUP` of 200 entries is about half a
millisecond of server time) while this process computes, instead of waiting for it: about 4% of
the service benchmark's burst run.

The read is the same as `StreamIO.read_new_checked`: `XREADGROUP` of new entries and, right
behind it, the `XPENDING` that shows whether an earlier read's reply was lost. Both go out on a
connection taken from the client's pool for this read alone and returned once both replies are
in, so no other command can come between the request and its reply. A read that fails (connection,
timeout) is not retried here: the caller falls back to the ordinary read, whose lost-reply check
finds whatever this one may have delivered.

A Redis Cluster client has no such connection to lend (the node depends on the key's slot), so
there the service reads as before.
"""

from __future__ import annotations

from typing import Any

import redis

from s2feature.streams.redis_io import Entry, StreamIO, lost_before


def _entries(reply: Any) -> list[Entry]:
    """The entries of a raw single-stream `XREADGROUP` reply (RESP3: a map by stream; RESP2: a
    list of [stream, entries]), fields as a dict, as `StreamIO`'s reads return them."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (entries for _, entries in reply)
    out: list[Entry] = []
    for entries in streams:
        for entry_id, flat in entries:
            # No fields: trimmed away while pending, nothing left to process.
            pairs = iter(flat or ())
            out.append((entry_id.decode(), dict(zip(pairs, pairs, strict=False))))
    return out


class ReadAhead:
    """`io.read_new_checked(count, applied_id)`, sent now; `result()` collects it."""

    def __init__(self, io: StreamIO, count: int, applied_id: str) -> None:
        if not isinstance(io.client, redis.Redis):
            raise TypeError("reads ahead need a standalone Redis client")
        self._pool = io.client.connection_pool
        self._connection: Any = self._pool.get_connection()
        commands = [
            ("XREADGROUP", "GROUP", io.group, io.consumer, "COUNT", count, "STREAMS", io.key, ">"),
            ("XPENDING", io.key, io.group, f"({applied_id}", "+", 1, io.consumer),
        ]
        try:
            packed = self._connection.pack_commands(commands)  # type: ignore[no-untyped-call]
            self._connection.send_packed_command(packed)  # type: ignore[no-untyped-call]
        except BaseException:
            self.discard()
            raise

    def result(self) -> tuple[list[Entry], bool]:
        """The new entries, and whether entries delivered by a lost reply precede them."""
        connection, self._connection = self._connection, None
        if connection is None:
            raise RuntimeError("the read's result was already taken or discarded")
        try:
            reply = connection.read_response()
            pending = connection.read_response()
        except BaseException:
            connection.disconnect()  # its replies are out of step with its requests now
            raise
        finally:
            self._pool.release(connection)
        entries = _entries(reply)
        first_pending = pending[0][0].decode() if pending else None
        return entries, lost_before(entries, first_pending)

    def discard(self) -> None:
        """Give the connection back unread (its replies are dropped with it). Entries the read
        delivered stay pending for this consumer, as after a lost reply."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()
            self._pool.release(connection)
