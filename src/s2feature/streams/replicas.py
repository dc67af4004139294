"""Waiting until replicas hold the service's writes (`S2_REDIS_MIN_REPLICAS`).

Redis replicates asynchronously: a master acknowledges a write before any replica has it, and a
replica promoted after the master's death lacks what it had not received. `WAIT numreplicas
timeout` blocks until that many replicas acknowledged every write *of the connection it is sent
on*. The service's writes go over several pooled connections (and, on a cluster, to several
nodes), so `wait_for_replicas` sends, on one connection to each node concerned, a small marker
write and `WAIT` right behind it: replication is in order, so replicas that acknowledged the
marker hold every write the node took before it, including every write already replied to.

The marker is `feat:wait:{<slot tag>}` (the written key's hash tag, or the key itself), in the
written key's slot so that it lands on the same cluster node; it expires after a minute.
`WAIT` on a master with fewer live replicas than required times out: the service then stops
acking until enough replicas are back (after a failover, the promoted master has none until
another node joins it).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable
from typing import Any, Final

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from s2feature.streams.client import AnyRedis, refresh_topology

MARKER_TTL_MS: Final = 60_000


class ReplicasBehind(redis.TimeoutError):
    """Fewer replicas than required acknowledged the writes in time; a transient failure (a
    `redis.TimeoutError`, so the service retries it with backoff)."""


def slot_tag(key: str) -> str:
    """The part of `key` its cluster hash slot is computed from: the first non-empty `{...}`,
    else the whole key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def marker_key(key: str) -> str:
    """A key in the same hash slot as `key`, written right before `WAIT`."""
    tag = slot_tag(key)
    if "{" in tag or "}" in tag:  # not usable as a tag: a short one of the same slot instead
        tag = _tag_of_slot(key_slot(key.encode()))
    return f"feat:wait:{{{tag}}}"


@functools.cache
def _tag_of_slot(slot: int) -> str:
    return next(str(n) for n in itertools.count() if key_slot(str(n).encode()) == slot)


def wait_for_replicas(
    client: AnyRedis, keys: Iterable[str], min_replicas: int, timeout_ms: int, token: str
) -> None:
    """Return once `min_replicas` replicas of each node holding one of `keys` acknowledged
    every write that node took so far; raise `ReplicasBehind` when one did not within
    `timeout_ms` (the nodes are asked in turn, each with the whole timeout). Does nothing when
    `min_replicas` is 0."""
    if min_replicas <= 0:
        return
    markers = sorted({marker_key(key) for key in keys})
    if isinstance(client, RedisCluster):
        by_node: dict[str, tuple[redis.Redis, list[str]]] = {}
        for marker in markers:
            node = client.get_node_from_key(marker)  # type: ignore[no-untyped-call]
            connection = client.get_redis_connection(node)
            by_node.setdefault(node.name, (connection, []))[1].append(marker)
        targets = list(by_node.items())
    else:
        targets = [("server", (client, markers))]
    for name, (connection, node_markers) in targets:
        try:
            acked = _marker_and_wait(connection, node_markers, min_replicas, timeout_ms, token)
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.MovedError):
            if isinstance(client, RedisCluster):
                refresh_topology(client)  # these calls bypass the client's own refresh path
            raise
        if acked < min_replicas:
            raise ReplicasBehind(
                f"{acked} of {min_replicas} replica(s) of {name} acknowledged the writes "
                f"within {timeout_ms} ms"
            )


def _marker_and_wait(
    connection: redis.Redis, markers: list[str], min_replicas: int, timeout_ms: int, token: str
) -> int:
    """Write the markers and `WAIT` on one connection (a pipeline keeps them on it)."""
    pipe: Any = connection.pipeline(transaction=False)
    for marker in markers:
        pipe.set(marker, token, px=MARKER_TTL_MS)
    pipe.execute_command("WAIT", min_replicas, timeout_ms)
    replies = pipe.execute()
    return int(replies[-1])
