"""Commands sent now and their replies collected later (standalone Redis).

The service waits on Redis twice per batch: for the read of new entries (an `XREADGROUP` of 200
entries is about half a millisecond of server time) and for the emit script (about a quarter of
a millisecond for 50 emits). Sent ahead, Redis does that work while this process computes, which
took about 6% off the service benchmark's burst run (old and new code alternating):

- `ReadAhead`: the service sends the next stream's read before processing the current batch.
  It is `StreamIO.read_new_checked`: `XREADGROUP` and, right behind it, the `XPENDING` that shows
  whether an earlier read's reply was lost.
- `PublishAhead`: a worker sends its batch's emit script (`StreamIO.publish`) and collects the
  reply before its next commit or checkpoint, the batch counting as written only then.

Each goes out on a connection taken from the client's pool for it alone and returned once its
replies are in, so no other command comes between a request and its reply. A failure (connection,
timeout) is not retried here: the caller falls back to the ordinary call, which retries, and whose
own checks cover what the failed one did (the lost-reply check finds entries a lost read
delivered; emits that landed are replays the script skips).

A Redis Cluster client has no such connection to lend (the node depends on the key's slot), so
there the service waits for each reply as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import redis

from s2feature.streams.redis_io import Entry, StreamIO, lost_before


def sends_ahead(client: object) -> bool:
    """Whether commands can be sent ahead on this client: a standalone server's, not a
    cluster's (whose node depends on the key's slot)."""
    return isinstance(client, redis.Redis)


class _Sent:
    """Commands written to a connection of their own; `_replies` reads theirs, once."""

    def __init__(self, client: Any, commands: Sequence[tuple[Any, ...]]) -> None:
        if not sends_ahead(client):
            raise TypeError("commands sent ahead need a standalone Redis client")
        self._pool = client.connection_pool
        self._connection: Any = self._pool.get_connection()
        self._count = len(commands)
        try:
            packed = self._connection.pack_commands(commands)
            self._connection.send_packed_command(packed)
        except BaseException:
            self.discard()
            raise

    def _replies(self) -> list[Any]:
        """The replies, in order; an error reply is raised (after every reply was read)."""
        replies = self._read_all()
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    def _read_all(self) -> list[Any]:
        """The replies, in order, an error reply in its place as a `redis.ResponseError`."""
        connection, self._connection = self._connection, None
        if connection is None:
            raise RuntimeError("the replies were already taken or discarded")
        replies: list[Any] = []
        try:
            for _ in range(self._count):
                try:
                    replies.append(connection.read_response())
                except redis.ResponseError as error:  # the connection is still in step
                    replies.append(error)
        except BaseException:
            connection.disconnect()  # its replies are out of step with its requests now
            raise
        finally:
            self._pool.release(connection)
        return replies

    def discard(self) -> None:
        """Give the connection back unread (its replies are dropped with it). Harmless after
        the replies were taken."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()
            self._pool.release(connection)


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


class ReadAhead(_Sent):
    """`io.read_new_checked(count, applied_id)`, sent now; `result()` collects it. A read never
    collected (`discard`) leaves its entries pending for this consumer, as a lost reply does."""

    def __init__(self, io: StreamIO, count: int, applied_id: str) -> None:
        group, consumer, key = io.group, io.consumer, io.key
        read = ("XREADGROUP", "GROUP", group, consumer, "COUNT", count, "STREAMS", key, ">")
        pending = ("XPENDING", key, group, f"({applied_id}", "+", 1, consumer)
        super().__init__(io.client, [read, pending])

    def result(self) -> tuple[list[Entry], bool]:
        """The new entries, and whether entries delivered by a lost reply precede them."""
        reply, pending = self._replies()
        entries = _entries(reply)
        first_pending = pending[0][0].decode() if pending else None
        return entries, lost_before(entries, first_pending)


class PublishAhead(_Sent):
    """`io.publish(...)` on a standalone server, sent now; `result()` collects it."""

    def __init__(self, io: StreamIO, keys: Sequence[str], args: Sequence[Any]) -> None:
        self._io, self._keys, self._args = io, keys, args
        last = bytes(args[1]) if len(keys) > 1 else None  # the script sets `feat:last` itself
        io.written(keys, args, last, int(args[2]))
        super().__init__(io.client, [("EVALSHA", io.emit_sha, len(keys), *keys, *args)])

    def result(self) -> int:
        """How many emits were new (replays are not counted)."""
        try:
            (new,) = self._replies()
        except redis.exceptions.NoScriptError:
            # The server lost its script cache (a restart): the ordinary call loads the script.
            return self._io.run_emit_script(self._keys, self._args)
        return int(new)


class SentEmits(Protocol):
    """An emit script sent ahead: `PublishAhead`, or one stream's part of a `PublishRound`."""

    def result(self) -> int: ...

    def discard(self) -> None: ...


class PublishRound(_Sent):
    """The emit scripts of several streams' batches (`PublishAhead`'s each), sent now in one
    write on one connection: a round of batches across streams pays one send and one wait for
    all of them. `part(i)` is the i-th request's `SentEmits`; the first part collected reads
    every reply, each part then returns its own or raises its own error."""

    def __init__(self, requests: Sequence[tuple[StreamIO, Sequence[str], Sequence[Any]]]) -> None:
        self._requests = requests
        self._outcomes: list[Any] | None = None
        self._failure: BaseException | None = None
        commands = []
        for io, keys, args in requests:
            last = bytes(args[1]) if len(keys) > 1 else None  # the script sets `feat:last`
            io.written(keys, args, last, int(args[2]))
            commands.append(("EVALSHA", io.emit_sha, len(keys), *keys, *args))
        super().__init__(requests[0][0].client, commands)

    def part(self, index: int) -> SentEmits:
        return _RoundPart(self, index)

    def result_of(self, index: int) -> int:
        """How many emits of request `index` were new (replays are not counted)."""
        if self._outcomes is None:
            if self._failure is not None:
                raise self._failure  # every part of a lost reply fails alike: each publishes
            try:
                self._outcomes = self._read_all()
            except RuntimeError:  # discarded unread
                self._failure = redis.ConnectionError("emit replies discarded unread")
                raise self._failure from None
            except BaseException as exc:
                self._failure = exc
                raise
        outcome = self._outcomes[index]
        if isinstance(outcome, redis.exceptions.NoScriptError):
            # The server lost its script cache (a restart): the ordinary call loads the script.
            io, keys, args = self._requests[index]
            return io.run_emit_script(keys, args)
        if isinstance(outcome, redis.ResponseError):
            raise outcome
        return int(outcome)


class _RoundPart:
    def __init__(self, sent: PublishRound, index: int) -> None:
        self._sent, self._index = sent, index

    def result(self) -> int:
        return self._sent.result_of(self._index)

    def discard(self) -> None:
        """Drop the connection when its replies were not read yet: the other parts' results
        then fail, and their streams publish again the ordinary way (replays skipped)."""
        self._sent.discard()
