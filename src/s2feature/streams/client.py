"""The Redis connection of the service: its settings, the client, and which failures heal.

`connect` gives a standalone client for one address and a cluster client for several;
`is_retryable` tells the service loop which failures to retry with backoff.

The cluster client routes a command by the hash slot of its keys. For a command whose keys
are not at fixed positions (`XREADGROUP`, `XREAD`: the keys follow `STREAMS`), redis-py asks
the client's *default node* (the first master, owner of slot 0) with `COMMAND GETKEYS`, and
does so before its own retry and topology-refresh path. When that node dies, every such call
fails with a connection error to it, nothing refreshes the slot map or replaces the default
node, and the reads stall for good, whichever node holds the stream. `connect` therefore
gives the cluster client a key parser that finds the keys of stream reads itself (no round
trip), and that refreshes the topology and replaces the default node when `COMMAND GETKEYS`
fails for any other command (see docs/service.md, "Master failure").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis._parsers import CommandsParser
from redis.cluster import ClusterNode, RedisCluster

log = logging.getLogger("s2feature.streams")

AnyRedis = redis.Redis | RedisCluster


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is and how to talk to it.

    `min_replicas` > 0 makes the service wait (`WAIT`, at most `wait_ms`) until that many
    replicas hold a batch's writes before its input is acked; 0 acks once the master replied.
    """

    addresses: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    socket_timeout_s: float = 5.0  # longer than the blocking read, or idle reads time out
    min_replicas: int = 0
    wait_ms: int = 1000

    @property
    def is_cluster(self) -> bool:
        return len(self.addresses) > 1


RETRYABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    # ClusterError covers CLUSTERDOWN, MASTERDOWN and the cluster client's "TTL exhausted" after
    # too many redirects in a row, all of which a settled topology fixes.
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MovedError,
    redis.exceptions.AskError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    # Not a RedisError: the client's slot map had no node for the key (a topology refresh caught
    # mid-migration or mid-failover).
    redis.exceptions.SlotNotCoveredError,
)


def is_retryable(exc: BaseException) -> bool:
    """Whether retrying the same call later can succeed (connection, topology, loading)."""
    if isinstance(exc, redis.AuthenticationError):
        return False  # a ConnectionError subclass, but a wrong password does not heal itself
    if isinstance(exc, RETRYABLE):
        return True
    # A blocked XREADGROUP whose key migrates fails with "UNBLOCKED ... no longer exists".
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(("UNBLOCKED", "LOADING"))


def stream_read_keys(args: Sequence[Any]) -> list[Any] | None:
    """The keys of an `XREADGROUP` or `XREAD` command given as its arguments (name first), or
    None when it is another command or has options this parser does not know."""
    name = _text(args[0]).upper() if args else ""
    if name == "XREADGROUP":
        if len(args) < 4 or _text(args[1]).upper() != "GROUP":
            return None
        index = 4  # after GROUP <group> <consumer>
    elif name == "XREAD":
        index = 1
    else:
        return None
    while index < len(args):
        option = _text(args[index]).upper()
        if option in ("COUNT", "BLOCK"):
            index += 2
        elif option == "NOACK":
            index += 1
        elif option == "STREAMS":
            rest = args[index + 1 :]
            if not rest or len(rest) % 2:
                return None
            return list(rest[: len(rest) // 2])
        else:
            return None
    return None


def refresh_topology(client: RedisCluster) -> None:
    """Reload the slot map from the nodes that answer and move the default node off a node
    that failed. A refresh that fails is left to the next failure (the caller retries)."""
    failed = client.nodes_manager.default_node
    try:
        client.nodes_manager.initialize()
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        log.warning("cluster topology refresh failed: %s", exc)
    if client.nodes_manager.default_node in (None, failed):
        client.replace_default_node()
    log.warning(
        "default cluster node %s failed; now %s",
        getattr(failed, "name", None),
        getattr(client.nodes_manager.default_node, "name", None),
    )


class _RecoveringKeyParser(CommandsParser):
    """The cluster client's key parser: stream reads parsed locally, and a failed
    `COMMAND GETKEYS` (its node is down) followed by a topology refresh before it is raised."""

    def __init__(self, cluster: RedisCluster, commands: dict[str, Any]) -> None:
        # Not CommandsParser.__init__, which would fetch the command table again: the one the
        # client's own parser loaded is reused.
        self.commands = commands
        self.redis_connection = cluster
        self._cluster = cluster

    def _get_moveable_keys(self, redis_conn: Any, *args: Any) -> Any:
        keys = stream_read_keys(args)
        if keys is not None:
            return keys
        try:
            return super()._get_moveable_keys(redis_conn, *args)  # type: ignore[no-untyped-call]
        except (redis.ConnectionError, redis.TimeoutError):
            refresh_topology(self._cluster)
            raise


def recovering_cluster(cluster: RedisCluster) -> RedisCluster:
    """Give `cluster` (and the pipelines it makes) the recovering key parser; returns it."""
    cluster.commands_parser = _RecoveringKeyParser(cluster, cluster.commands_parser.commands)
    return cluster


def connect(settings: RedisSettings) -> AnyRedis:
    """A client for `settings`: a cluster client (with the recovering key parser) for several
    addresses, a standalone one for one."""
    if settings.is_cluster:
        nodes = [ClusterNode(host, port) for host, port in settings.addresses]  # type: ignore[no-untyped-call]
        return recovering_cluster(
            RedisCluster(
                startup_nodes=nodes,
                username=settings.username,
                password=settings.password,
                socket_timeout=settings.socket_timeout_s,
                socket_connect_timeout=2.0,
            )
        )
    host, port = settings.addresses[0]
    return redis.Redis(
        host=host,
        port=port,
        username=settings.username,
        password=settings.password,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=2.0,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
