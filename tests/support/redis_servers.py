"""Real `redis-server` processes for tests: a standalone server and a small Redis Cluster.

Tests start their own servers on free ports (never the shared 6379), so they are isolated and may
kill, restart or re-shard them. Every process is tracked: `stop()`/`close()`, the context managers,
the pytest fixtures and, as a last resort, an `atexit` hook terminate it, so a failing test leaves
no orphan behind.

Ports are drawn from a range below the kernel's ephemeral range (32768-60999 by default): client
sockets take their local port from that range, and one of them could otherwise grab the port of a
killed server before `restart()` binds it again. A cluster node also needs `port + 10000` for its
bus, which stays below 32768 too.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Protocol, Self

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS
from redis.crc import key_slot as _crc_key_slot
from redis.retry import Retry

HOST: Final = "127.0.0.1"
SHARED_PORT: Final = 6379
CLUSTER_BUS_OFFSET: Final = 10_000
_PORT_RANGE: Final = (15_000, 22_000)
_START_ATTEMPTS: Final = 8
_POLL_S: Final = 0.02

AppendFsync = Literal["always", "everysec", "no"]


class RedisServerError(RuntimeError):
    """A test Redis server could not be started, stopped or configured."""


class RedisBinaryNotFoundError(RedisServerError):
    """No usable `redis-server` binary was found."""


def locate_redis_server(name: str = "redis-server") -> Path:
    """Path of the `redis-server` binary on PATH, or a clear error saying how to get one."""
    found = shutil.which(name)
    if found is None:
        raise RedisBinaryNotFoundError(
            f"{name!r} was not found on PATH. The Redis tests start their own servers; install "
            "Redis 7 or newer (`make setup` runs scripts/ensure-redis.sh, which installs "
            "Debian's redis-server package)."
        )
    return Path(found)


def redis_server_version(binary: Path) -> tuple[int, int, int]:
    """`(major, minor, patch)` of a `redis-server` binary, from `redis-server --version`."""
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    # "Redis server v=7.0.15 sha=... malloc=... bits=64 build=..."
    for token in out.split():
        if token.startswith("v="):
            major, minor, patch = (int(part) for part in token[2:].split(".")[:3])
            return major, minor, patch
    raise RedisServerError(f"cannot read a version from {out!r}")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_free_port(*, with_bus_port: bool = False) -> int:
    """A port that is free now (and `port + 10000` too when `with_bus_port`).

    Free *now* only: another process may take it before the server binds it, which is why
    `RedisServer.start()` retries with a new port when the bind fails.
    """
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randrange(*_PORT_RANGE)
        if port == SHARED_PORT or not _port_is_free(port):
            continue
        if with_bus_port and not _port_is_free(port + CLUSTER_BUS_OFFSET):
            continue
        return port
    raise RedisServerError(f"no free port found in {_PORT_RANGE}")


# Every live server process, so that interpreter exit can still terminate the ones a crashed
# fixture never stopped.
_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


def _terminate_everything_left() -> None:
    with _LIVE_LOCK:
        left = list(_LIVE)
        _LIVE.clear()
    for process in left:
        if process.poll() is None:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


atexit.register(_terminate_everything_left)


class RedisServer:
    """One `redis-server` process bound to 127.0.0.1 on a free port, with its files in `directory`.

    `appendonly=True` makes acknowledged writes survive `kill()` + `restart()`; `appendfsync`
    defaults to `always` so that survival does not depend on the timing of a background fsync.
    RDB snapshots are off (`--save ""`). `cluster_node_timeout_ms` turns the server into a Redis
    Cluster node (used by `RedisClusterHarness`).
    """

    def __init__(
        self,
        directory: Path,
        *,
        appendonly: bool = False,
        appendfsync: AppendFsync = "always",
        port: int | None = None,
        binary: Path | str = "redis-server",
        cluster_node_timeout_ms: int | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.directory = Path(directory)
        self.appendonly = appendonly
        self.appendfsync: AppendFsync = appendfsync
        self.binary = str(binary)
        self.cluster_node_timeout_ms = cluster_node_timeout_ms
        self.start_timeout_s = start_timeout_s
        self._port: int | None = port
        self._process: subprocess.Popen[bytes] | None = None
        self._clients: list[redis.Redis] = []

    # -- identity -------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        """The port the server listens on; fixed after the first successful start."""
        if self._port is None:
            raise RedisServerError("the server has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:<port>/0`."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, None when it is not running."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server log and console output, for error messages."""
        chunks = []
        for path in (self.log_path, self.directory / "console.out"):
            if path.exists():
                chunks.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(chunks)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and wait until it answers PING. Picks a free port on first start."""
        if self.is_running:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        # A port chosen here may be taken by someone else before the server binds it: retry with
        # a new one. A fixed port (given, or kept for a restart) gets one attempt.
        attempts = 1 if self._port is not None else _START_ATTEMPTS
        for _ in range(attempts):
            port = self._port
            if port is None:
                port = pick_free_port(with_bus_port=self.cluster_node_timeout_ms is not None)
            if self._launch(port):
                self._port = port
                return self
        raise RedisServerError(
            f"redis-server did not start in {self.directory}:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop gracefully (`SHUTDOWN NOSAVE`, which still flushes the AOF), then by signal."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                with _admin_client(self.port, timeout_s=5) as admin:
                    admin.shutdown(nosave=True)
            except redis.RedisError:
                process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self._forget(process)

    def kill(self) -> None:
        """SIGKILL the server: no shutdown, no final flush (a crash)."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        self._forget(process)

    def restart(self) -> None:
        """Stop (if running) and start again on the same port and directory."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Close the clients handed out and stop the server. Safe to call more than once."""
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- clients --------------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> redis.Redis:
        """A `redis.Redis` client to this server; `close()` closes it. kwargs go to `Redis`."""
        kwargs.setdefault("socket_timeout", 10)
        client = redis.Redis(host=HOST, port=self.port, **kwargs)
        self._clients.append(client)
        return client

    def execute(self, *args: Any) -> Any:
        """Run one raw command on a short-lived connection (bytes replies, no parsing)."""
        with _admin_client(self.port, timeout_s=10) as admin:
            return admin.execute_command(*args)

    # -- internals ------------------------------------------------------------------------------

    def _command(self, port: int) -> list[str]:
        command = [
            self.binary,
            "--port", str(port),
            "--bind", HOST,
            "--daemonize", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
        ]  # fmt: skip
        if self.cluster_node_timeout_ms is not None:
            command += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.cluster_node_timeout_ms),
                # Otherwise a master emptied by a migration may turn into a replica.
                "--cluster-allow-replica-migration", "no",
            ]  # fmt: skip
        return command

    def _launch(self, port: int) -> bool:
        """Start the process; True once it answers PING, False when it exited (e.g. port taken)."""
        with open(self.directory / "console.out", "ab") as console:
            process = subprocess.Popen(
                self._command(port),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
            )
        with _LIVE_LOCK:
            _LIVE.add(process)
        self._process = process
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._forget(process)
                return False
            if _answers_ping(port):
                return True
            time.sleep(_POLL_S)
        process.kill()
        process.wait(timeout=10)
        self._forget(process)
        raise RedisServerError(
            f"redis-server on port {port} did not answer PING within {self.start_timeout_s} s:\n"
            f"{self.log_tail()}"
        )

    def _forget(self, process: subprocess.Popen[bytes]) -> None:
        with _LIVE_LOCK:
            _LIVE.discard(process)
        if self._process is process:
            self._process = None


def _admin_client(port: int, *, timeout_s: float) -> redis.Redis:
    # No retries: redis-py retries connection errors with a backoff of seconds by default, which
    # would turn every expected "connection closed" (SHUTDOWN, a probe while starting) into a
    # multi-second wait.
    return redis.Redis(
        host=HOST,
        port=port,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def _answers_ping(port: int) -> bool:
    try:
        with _admin_client(port, timeout_s=1) as probe:
            return bool(probe.ping())
    except redis.RedisError:
        # Refused while starting, or LOADING while the AOF is replayed.
        return False


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


class RedisServerFactory(Protocol):
    """Starts extra servers; keyword arguments go to `RedisServer` (e.g. `appendonly=False`).

    The type of the `redis_server_factory` fixture.
    """

    def __call__(self, **options: Any) -> RedisServer: ...


class RedisClusterHarness:
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

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


def blocked_readers(node: RedisServer) -> list[str]:
    """Client IDs of the connections a server holds blocked in XREADGROUP."""
    ids = []
    for line in node.execute("CLIENT", "LIST").decode().splitlines():
        fields = dict(item.split("=", 1) for item in line.split())
        if "b" in fields["flags"] and fields["cmd"] == "xreadgroup":
            ids.append(fields["id"])
    return ids


def wait_for(
    condition: Callable[[], bool], *, timeout_s: float = 30.0, what: str = "condition"
) -> None:
    """Poll `condition` until true; raise `TimeoutError` naming `what` after `timeout_s`.

    The timeout is a safety net against a hung test, never a performance assertion.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(_POLL_S)


def pid_exists(pid: int) -> bool:
    """Whether a process with this id exists (a server process we waited for no longer does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
