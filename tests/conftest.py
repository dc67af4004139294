"""Shared fixtures: real Redis servers started by the tests themselves, and Hypothesis profiles.

Tests that use `redis_server`, `redis_cluster` or `redis_server_bin` are marked `redis`
automatically, so `pytest -m "not redis"` runs everything that needs no Redis binary.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.support.redis_cluster import RedisClusterHarness
from tests.support.redis_servers import (
    RedisBinaryNotFoundError,
    RedisServer,
    RedisServerFactory,
    locate_redis_server,
    redis_server_version,
)

# Deadlines are timing assertions, and machines are noisy: none. `ci` is derandomised so that a
# CI run is reproducible; select it with HYPOTHESIS_PROFILE=ci.
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Every `s2-feature run` a test starts (with the test process's environment) serves `/health`
# on a free port, never on the default 8080: instances run side by side, and the machine may
# already use that port.
os.environ["S2_API_PORT"] = "0"

REDIS_FIXTURES = frozenset(
    {"redis_server_bin", "redis_server", "redis_server_factory", "redis_cluster"}
)
MIN_REDIS_VERSION = (7, 0, 0)  # CLUSTER ADDSLOTSRANGE and multi-part AOF


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REDIS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)


@pytest.fixture(scope="session")
def redis_server_bin() -> Path:
    """Path of a `redis-server` >= 7.0; fails (never skips) the test when there is none."""
    try:
        binary = locate_redis_server()
    except RedisBinaryNotFoundError as missing:
        pytest.fail(str(missing), pytrace=False)
    version = redis_server_version(binary)
    if version < MIN_REDIS_VERSION:
        pytest.fail(
            f"{binary} is Redis {'.'.join(map(str, version))}; the tests need "
            f"{'.'.join(map(str, MIN_REDIS_VERSION))} or newer",
            pytrace=False,
        )
    return binary


@pytest.fixture
def redis_server(redis_server_bin: Path, tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh standalone server on a free port, stopped after the test whatever its outcome.

    Append-only with `appendfsync always`, so every acknowledged write survives `kill()` +
    `restart()`; tests that need more write throughput than that use `redis_server_factory`.
    """
    with RedisServer(tmp_path / "redis", appendonly=True, binary=redis_server_bin) as server:
        yield server


@pytest.fixture
def redis_server_factory(redis_server_bin: Path, tmp_path: Path) -> Iterator[RedisServerFactory]:
    """Start any number of servers with chosen options; all are stopped after the test."""
    count = 0
    with contextlib.ExitStack() as stack:  # closes every server even when one close fails

        def start(**options: Any) -> RedisServer:
            nonlocal count
            count += 1
            options.setdefault("binary", redis_server_bin)
            server = RedisServer(tmp_path / f"redis-{count}", **options)
            stack.callback(server.close)
            return server.start()

        yield start


class _ModuleCluster:
    """One cluster per test module, reset between tests and rebuilt when a reset fails."""

    def __init__(self, base_dir: Path, binary: Path) -> None:
        self._base_dir = base_dir
        self._binary = binary
        self._generation = 0
        self._harness: RedisClusterHarness | None = None

    def clean(self) -> RedisClusterHarness:
        if self._harness is not None:
            try:
                self._harness.reset()
            except Exception:
                # A test left it beyond repair (e.g. a node's files removed): start over.
                self.close()
        if self._harness is None:
            self._generation += 1
            self._harness = RedisClusterHarness(
                self._base_dir / f"cluster{self._generation}", binary=self._binary
            ).start()
        return self._harness

    def close(self) -> None:
        if self._harness is not None:
            self._harness.close()
            self._harness = None


@pytest.fixture(scope="module")
def _module_cluster(
    redis_server_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[_ModuleCluster]:
    holder = _ModuleCluster(tmp_path_factory.mktemp("redis-cluster"), redis_server_bin)
    try:
        yield holder
    finally:
        holder.close()


@pytest.fixture
def redis_cluster(_module_cluster: _ModuleCluster) -> RedisClusterHarness:
    """A 3-master Redis Cluster, empty and with every slot on its home node at test start.

    Shared by the tests of one module (forming a cluster takes a few seconds); tests may kill,
    restart or re-shard it, and the next test gets it reset. Tests must not hold on to it.
    """
    return _module_cluster.clean()


@pytest.fixture(scope="session")
def promtool() -> Path:
    """Path of a `promtool` (scripts/ensure-promtool.sh extracts Debian's when there is none, the
    way scripts/ensure-redis.sh installs redis-server): a missing tool fails the test, never
    skips it."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [str(root / "scripts" / "ensure-promtool.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"no promtool: {done.stderr.strip()}", pytrace=False)
    path = Path(done.stdout.strip().splitlines()[-1])
    return path if path.is_absolute() else root / path
