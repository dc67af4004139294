"""Real `redis-server` processes for tests (a small Redis Cluster of them: `redis_cluster.py`).

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
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Protocol, Self

import redis
from redis.backoff import NoBackoff
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


class Harness(ABC):
    """`with` starts it and closes it on exit (whatever happened inside)."""

    @abstractmethod
    def start(self) -> Self: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class RedisServer(Harness):
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


class RedisServerFactory(Protocol):
    """Starts extra servers; keyword arguments go to `RedisServer` (e.g. `appendonly=False`).

    The type of the `redis_server_factory` fixture.
    """

    def __call__(self, **options: Any) -> RedisServer: ...


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
