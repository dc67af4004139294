"""A small Redis Cluster of real `redis-server` processes for tests (`RedisClusterHarness`).

Built from `redis_servers.RedisServer` nodes on free ports, like `redis-cli --cluster create`
but without redis-cli; the harness can migrate slots and restore an even layout between tests.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS
from redis.crc import key_slot as _crc_key_slot

from tests.support.redis_servers import HOST, Harness, RedisServer, RedisServerError


def key_slot(key: str | bytes) -> int:
    """Cluster hash slot of a key (CRC16 of the hash tag, or of the whole key, mod 16384)."""
    return _crc_key_slot(key.encode() if isinstance(key, str) else key)


def even_slot_ranges(masters: int) -> list[tuple[int, int]]:
    """Inclusive slot ranges splitting 0..16383 evenly, as `redis-cli --cluster create` does."""
    bounds = [round(i * REDIS_CLUSTER_HASH_SLOTS / masters) for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


def _claimed_slots(nodes_line: str) -> Iterator[int]:
    # `<id> <addr> <flags> <master> <ping> <pong> <epoch> <link> <slot> <slot>-<slot> [..->-..]`;
    # bracketed entries are migration states, not ownership.
    for field in nodes_line.split()[8:]:
        if field.startswith("["):
            continue
        first, _, last = field.partition("-")
        yield from range(int(first), int(last or first) + 1)


class RedisClusterHarness(Harness):
    """A Redis Cluster of `masters` master nodes (no replicas) in `base_dir`, built like
    `redis-cli --cluster create` does it but without redis-cli: distinct config epochs,
    `CLUSTER ADDSLOTSRANGE` on each node, `CLUSTER MEET`, then wait for `cluster_state:ok`.

    Nodes are addressed by index (`nodes[i]`); `migrate_slot` re-shards one slot live.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        masters: int = 3,
        node_timeout_ms: int = 2000,
        binary: Path | str = "redis-server",
        ready_timeout_s: float = 60.0,
    ) -> None:
        if masters < 1:
            raise ValueError(f"a cluster needs at least one master, got {masters}")
        self.base_dir = Path(base_dir)
        self.ready_timeout_s = ready_timeout_s
        self.nodes: tuple[RedisServer, ...] = tuple(
            RedisServer(
                self.base_dir / f"node{i}",
                binary=binary,
                cluster_node_timeout_ms=node_timeout_ms,
            )
            for i in range(masters)
        )
        self.home_ranges: tuple[tuple[int, int], ...] = tuple(even_slot_ranges(masters))
        self._node_ids: tuple[str, ...] = ()
        self._clients: list[RedisCluster] = []

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the nodes, form the cluster and wait until every node reports it ok."""
        try:
            for node in self.nodes:
                node.start()
            self._node_ids = tuple(node.execute("CLUSTER", "MYID").decode() for node in self.nodes)
            for epoch, (node, (first, last)) in enumerate(
                zip(self.nodes, self.home_ranges, strict=True), start=1
            ):
                # Distinct epochs up front, so slot ownership never has to be settled by the
                # epoch-collision rule later.
                node.execute("CLUSTER", "SET-CONFIG-EPOCH", epoch)
                node.execute("CLUSTER", "ADDSLOTSRANGE", first, last)
            for node in self.nodes[1:]:
                self.nodes[0].execute("CLUSTER", "MEET", HOST, node.port)
            self.wait_until_ok()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close the cluster clients handed out and stop every node."""
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        for node in self.nodes:
            node.close()

    def cluster_info(self, index: int) -> dict[str, str]:
        """`CLUSTER INFO` of one node as a dict."""
        text = self.nodes[index].execute("CLUSTER", "INFO").decode()
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {pair[0]: pair[1] for pair in pairs}

    def is_ok(self) -> bool:
        """Every node runs, knows every other node and sees all slots served (`state:ok`)."""
        for index, node in enumerate(self.nodes):
            if not node.is_running:
                return False
            try:
                info = self.cluster_info(index)
            except redis.RedisError:
                return False
            if (
                info.get("cluster_state") != "ok"
                or info.get("cluster_known_nodes") != str(len(self.nodes))
                or info.get("cluster_slots_ok") != str(REDIS_CLUSTER_HASH_SLOTS)
            ):
                return False
        return True

    def wait_until_ok(self, timeout_s: float | None = None) -> None:
        """Block until `is_ok()`, or raise with every node's view after the timeout."""
        deadline = time.monotonic() + (self.ready_timeout_s if timeout_s is None else timeout_s)
        while not self.is_ok():
            if time.monotonic() > deadline:
                views = []
                for i in range(len(self.nodes)):
                    try:
                        view: object = self.cluster_info(i)
                    except redis.RedisError as error:
                        view = error
                    views.append(f"node{i}: {view}")
                raise RedisServerError("cluster not ok:\n" + "\n".join(views))
            time.sleep(0.05)

    # -- addressing -----------------------------------------------------------------------------

    @property
    def node_ids(self) -> tuple[str, ...]:
        """Cluster node id of each node, by index."""
        return self._node_ids

    @property
    def startup_nodes(self) -> list[ClusterNode]:
        # redis-py leaves ClusterNode.__init__ unannotated.
        return [ClusterNode(HOST, node.port) for node in self.nodes]  # type: ignore[no-untyped-call]

    def client(self, **kwargs: Any) -> RedisCluster:
        """A sync `RedisCluster` client; `close()` closes it. kwargs go to `RedisCluster`."""
        kwargs.setdefault("socket_timeout", 10)
        client = RedisCluster(startup_nodes=self.startup_nodes, **kwargs)
        self._clients.append(client)
        return client

    @staticmethod
    def key_slot(key: str | bytes) -> int:
        """Hash slot of a key (see `key_slot`)."""
        return key_slot(key)

    def home_node_for_slot(self, slot: int) -> int:
        """Index of the node that owned `slot` when the cluster was created."""
        for index, (first, last) in enumerate(self.home_ranges):
            if first <= slot <= last:
                return index
        raise ValueError(f"slot {slot} is outside 0..{REDIS_CLUSTER_HASH_SLOTS - 1}")

    def claimed_slots(self, index: int) -> set[int]:
        """The slots node `index` says it owns (its own `myself` line of `CLUSTER NODES`)."""
        text = self.nodes[index].execute("CLUSTER", "NODES").decode()
        for line in text.splitlines():
            if "myself" in line.split()[2]:
                return set(_claimed_slots(line))
        raise RedisServerError(f"node{index} has no 'myself' line in CLUSTER NODES")

    def node_for_slot(self, slot: int) -> int:
        """Index of the node owning `slot`, asked of the nodes themselves.

        Raises when no node or more than one node claims it (only transiently possible while a
        migration's final `SETSLOT NODE` is being sent).
        """
        owners = [i for i in range(len(self.nodes)) if slot in self.claimed_slots(i)]
        if len(owners) != 1:
            raise RedisServerError(f"slot {slot} is claimed by nodes {owners}, expected one")
        return owners[0]

    # -- re-sharding ----------------------------------------------------------------------------

    def migrate_slot(
        self,
        slot: int,
        target_node_index: int,
        batch: int = 100,
        *,
        after_batch: Callable[[int], None] | None = None,
        migrate_timeout_ms: int = 10_000,
    ) -> None:
        """Move `slot` and its keys to node `target_node_index` while clients keep running.

        The standard live re-sharding: `SETSLOT IMPORTING` on the target, `SETSLOT MIGRATING` on
        the source, then `CLUSTER GETKEYSINSLOT` + `MIGRATE ... KEYS` in batches of `batch`
        until the slot is empty on the source, and finally `SETSLOT NODE` on every master
        (target first, then source, as the cluster spec advises). `after_batch(moved_so_far)`
        runs after each batch, while the slot is still migrating: tests use it to let
        concurrent clients hit the ASK window at a known point.
        """
        source_index = self.node_for_slot(slot)
        if source_index == target_node_index:
            return
        source, target = self.nodes[source_index], self.nodes[target_node_index]
        source_id, target_id = self._node_ids[source_index], self._node_ids[target_node_index]
        target.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while keys := source.execute("CLUSTER", "GETKEYSINSLOT", slot, batch):
            # An empty key name and `KEYS` is MIGRATE's multi-key form; db 0 is the only one in
            # cluster mode.
            source.execute("MIGRATE", HOST, target.port, "", 0, migrate_timeout_ms, "KEYS", *keys)
            moved += len(keys)
            if after_batch is not None:
                after_batch(moved)
        order = [target_node_index, source_index] + [
            i for i in range(len(self.nodes)) if i not in (target_node_index, source_index)
        ]
        for index in order:
            self.nodes[index].execute("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def reset(self) -> None:
        """Bring the cluster back to its freshly created state: all nodes up, no slot migrating
        or importing, every slot on its home node, no keys.

        Used between tests by the module-scoped fixture; raises when that is not possible.
        """
        for node in self.nodes:
            if not node.is_running:
                node.restart()  # rejoins with its nodes.conf
        self.wait_until_ok()
        for node in self.nodes:
            for line in node.execute("CLUSTER", "NODES").decode().splitlines():
                if "myself" not in line.split()[2]:
                    continue
                for field in line.split()[8:]:
                    if field.startswith("["):
                        # `[<slot>->-<id>]` or `[<slot>-<-<id>]`: abandon the half-done move.
                        node.execute("CLUSTER", "SETSLOT", int(field[1:].split("-")[0]), "STABLE")
        for node in self.nodes:
            node.execute("FLUSHALL")
        for index in range(len(self.nodes)):
            for slot in sorted(self.claimed_slots(index)):
                home = self.home_node_for_slot(slot)
                if home != index:
                    self.migrate_slot(slot, home)
        self.wait_until_ok()
