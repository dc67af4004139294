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
    """A Redis Cluster of `masters` master nodes, each with `replicas` replicas, in `base_dir`,
    built like `redis-cli --cluster create` does it but without redis-cli: distinct config
    epochs, `CLUSTER ADDSLOTSRANGE` on each master, `CLUSTER MEET`, `CLUSTER REPLICATE` on each
    replica, then wait for `cluster_state:ok` (and every replica's link up).

    Nodes are addressed by index (`nodes[i]`): the masters first, then replica `r` of master
    `m` at `masters + m * replicas + r`. `migrate_slot` re-shards one slot live; `failover`,
    `kill` and the role queries serve failover tests (roles change then: ask, don't assume).
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        masters: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 2000,
        binary: Path | str = "redis-server",
        ready_timeout_s: float = 60.0,
    ) -> None:
        if masters < 1:
            raise ValueError(f"a cluster needs at least one master, got {masters}")
        if replicas < 0:
            raise ValueError(f"replicas must not be negative, got {replicas}")
        self.base_dir = Path(base_dir)
        self.ready_timeout_s = ready_timeout_s
        self.masters = masters
        self.replicas = replicas
        self.nodes: tuple[RedisServer, ...] = tuple(
            RedisServer(
                self.base_dir / f"node{i}",
                binary=binary,
                cluster_node_timeout_ms=node_timeout_ms,
            )
            for i in range(masters * (1 + replicas))
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
                # A replica's full sync starts at once instead of 5 s later (the default delay
                # lets more replicas share one transfer).
                node.execute("CONFIG", "SET", "repl-diskless-sync-delay", "0")
            self._node_ids = tuple(node.execute("CLUSTER", "MYID").decode() for node in self.nodes)
            for epoch, (node, (first, last)) in enumerate(
                zip(self.nodes[: self.masters], self.home_ranges, strict=True), start=1
            ):
                # Distinct epochs up front, so slot ownership never has to be settled by the
                # epoch-collision rule later.
                node.execute("CLUSTER", "SET-CONFIG-EPOCH", epoch)
                node.execute("CLUSTER", "ADDSLOTSRANGE", first, last)
            for node in self.nodes[1:]:
                self.nodes[0].execute("CLUSTER", "MEET", HOST, node.port)
            for index in range(self.masters, len(self.nodes)):
                self._replicate(index, (index - self.masters) // self.replicas)
            self.wait_until_ok()
            self.wait_until_replicas_linked()
        except BaseException:
            self.close()
            raise
        return self

    def _replicate(self, index: int, master: int) -> None:
        """`CLUSTER REPLICATE` once node `index` has learnt of the master (gossip)."""
        master_id = self._node_ids[master]
        wait_until(
            lambda: master_id in self.nodes[index].execute("CLUSTER", "NODES").decode(),
            self.ready_timeout_s,
            f"node{index} to learn of node{master}",
        )
        self.nodes[index].execute("CLUSTER", "REPLICATE", master_id)

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

    def is_ok(self, running_only: bool = False) -> bool:
        """Every node runs, knows every other node and sees all slots served (`state:ok`).
        With `running_only`, nodes that are down are left out (after a kill)."""
        for index, node in enumerate(self.nodes):
            if not node.is_running:
                if running_only:
                    continue
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

    def wait_until_ok(self, timeout_s: float | None = None, running_only: bool = False) -> None:
        """Block until `is_ok(running_only)`, or raise with every node's view after the
        timeout."""
        deadline = time.monotonic() + (self.ready_timeout_s if timeout_s is None else timeout_s)
        while not self.is_ok(running_only):
            if time.monotonic() > deadline:
                views = []
                for i in range(len(self.nodes)):
                    if not self.nodes[i].is_running:
                        views.append(f"node{i}: down")
                        continue
                    try:
                        view: object = self.cluster_info(i)
                    except redis.RedisError as error:
                        view = error
                    views.append(f"node{i}: {view}")
                raise RedisServerError("cluster not ok:\n" + "\n".join(views))
            time.sleep(0.05)

    # -- roles and failover ---------------------------------------------------------------------

    def replication(self, index: int) -> dict[str, str]:
        """`INFO replication` of one node as a dict of strings."""
        info: Any = self.nodes[index].execute("INFO", "replication")
        return {str(k): str(v) for k, v in info.items()}

    def role(self, index: int) -> str:
        """ "master" or "slave", as the node itself says."""
        return self.replication(index)["role"]

    def master_of(self, index: int) -> int:
        """Index of the master a replica follows (by its configured address)."""
        port = int(self.replication(index)["master_port"])
        return next(i for i, node in enumerate(self.nodes) if node.port == port)

    def replicas_of(self, master: int) -> list[int]:
        """Indexes of the running replicas following node `master`."""
        return [
            i
            for i, node in enumerate(self.nodes)
            if i != master and node.is_running and self.role(i) == "slave"
            and self.master_of(i) == master
        ]  # fmt: skip

    def replicas_linked(self) -> bool:
        """Every running replica's link to its master is up and caught up to the last sync."""
        for index, node in enumerate(self.nodes):
            if not node.is_running:
                continue
            try:
                info = self.replication(index)
            except redis.RedisError:
                return False
            if info["role"] == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def wait_until_replicas_linked(self, timeout_s: float | None = None) -> None:
        wait_until(
            self.replicas_linked,
            self.ready_timeout_s if timeout_s is None else timeout_s,
            "every replica's link to be up",
        )

    def caught_up(self, replica: int) -> bool:
        """The replica has processed everything its master wrote so far (replication offsets)."""
        master = self.replication(self.master_of(replica))["master_repl_offset"]
        return int(self.replication(replica)["slave_repl_offset"]) >= int(master)

    def failover(self, replica: int) -> None:
        """`CLUSTER FAILOVER` on a replica (the coordinated switch): returns once it is master."""
        self.nodes[replica].execute("CLUSTER", "FAILOVER")
        wait_until(
            lambda: self.role(replica) == "master", self.ready_timeout_s, f"node{replica} master"
        )

    def wait_for_promotion(self, replica: int, timeout_s: float | None = None) -> float:
        """Block until node `replica` is a master serving slots; its `time.monotonic()` then
        (to within one poll)."""

        def promoted() -> bool:
            return self.role(replica) == "master" and bool(self.claimed_slots(replica))

        wait_until(promoted, self.ready_timeout_s if timeout_s is None else timeout_s, "promotion")
        return time.monotonic()

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
        owners = [
            i
            for i in range(len(self.nodes))
            if self.nodes[i].is_running and slot in self.claimed_slots(i)
        ]
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
        if self.replicas:
            # The replicas would have to follow each step; no test needs it, so it is refused.
            raise RedisServerError("slot migration is not supported on a cluster with replicas")
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
        """Bring the cluster (of masters only) back to its freshly created state: all nodes up,
        no slot migrating or importing, every slot on its home node, no keys.

        Used between tests by the module-scoped fixture; raises when that is not possible.
        """
        if self.replicas:
            # A killed master's replica may have been promoted: roles cannot be restored in place.
            raise RedisServerError("a cluster with replicas cannot be reset: start a new one")
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


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` (a Redis error counts as not yet) until true; raise after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RedisServerError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
