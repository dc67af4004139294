"""The Redis connection of the service: its settings, the client, and which failures heal.

`connect` gives a standalone client for one address and a cluster client for several;
`is_retryable` tells the service loop which failures to retry with backoff.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.cluster import ClusterNode, RedisCluster

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


def connect(settings: RedisSettings) -> AnyRedis:
    if settings.is_cluster:
        nodes = [ClusterNode(host, port) for host, port in settings.addresses]  # type: ignore[no-untyped-call]
        return RedisCluster(
            startup_nodes=nodes,
            username=settings.username,
            password=settings.password,
            socket_timeout=settings.socket_timeout_s,
            socket_connect_timeout=2.0,
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
