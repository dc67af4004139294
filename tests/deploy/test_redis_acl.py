"""`deploy/redis/users.acl`: the service runs as that user on a redis-server loaded with the file
(`--aclfile`), and the same user is refused what it must not do."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from s2feature.config.bundle import ConfigBundle
from s2feature.domain import SeriesId
from tests.support import service_checks as checks
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parents[2]
ACL_FILE = ROOT / "deploy" / "redis" / "users.acl"
USER, PASSWORD = "s2-feature", "test-only-password"
SERIES = SeriesId("binance", "fut", "BTCUSDT")


class AclRedisServer(RedisServer):
    """A server started with `--aclfile`; its `default` user (not in the file) stays the
    harness's administrator."""

    def __init__(self, directory: Path, acl_file: Path, **options: Any) -> None:
        super().__init__(directory, **options)
        self.acl_file = acl_file

    def _command(self, port: int) -> list[str]:
        return [*super()._command(port), "--aclfile", str(self.acl_file)]


@pytest.fixture
def acl_server(redis_server_bin: Path, tmp_path: Path) -> Iterator[RedisServer]:
    # The shipped file has no password (it cannot log in as shipped): give it one, as the
    # deployment does.
    digest = hashlib.sha256(PASSWORD.encode()).hexdigest()
    acl_file = tmp_path / "users.acl"
    acl_file.write_text(
        ACL_FILE.read_text().replace(f"user {USER} on ", f"user {USER} on #{digest} ", 1)
    )
    (tmp_path / "redis").mkdir()
    with AclRedisServer(tmp_path / "redis", acl_file, binary=redis_server_bin) as server:
        yield server


def as_user(server: RedisServer) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, username=USER, password=PASSWORD)


def test_the_shipped_user_has_no_password(acl_server: RedisServer) -> None:
    rules = ACL_FILE.read_text().split()
    assert not [rule for rule in rules if rule[0] in "#>" or rule == "nopass"]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl_server.port, username=USER, password="").ping()


def test_the_service_runs_as_the_acl_user(acl_server: RedisServer, tmp_path: Path) -> None:
    admin = acl_server.client()
    checks.add_entries(
        admin, SERIES, checks.input_entries(SERIES, checks.input_bars(SERIES, 1600, 7), 7)
    )
    env = {
        "S2_REDIS_ADDRESSES": f"127.0.0.1:{acl_server.port}",
        "S2_REDIS_USERNAME": USER,
        "S2_REDIS_PASSWORD": PASSWORD,
        "S2_SYMBOLS": "binance:fut:BTCUSDT",
        "S2_WINDOWS": "1m,5m,1h",
        "S2_CONSUMER_NAME": "acl-test",
        "S2_DB_SQLITE_PATH": str(tmp_path / "s2.db"),
        "S2_LAKE_DIR": str(tmp_path / "lake"),
        "S2_CONFIG_CACHE": str(tmp_path / "config-cache.json"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "s2feature.cli", "run", "--burst", "1"],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "NOPERM" not in done.stderr, done.stderr[-3000:]
    assert "no permissions" not in done.stderr.lower(), done.stderr[-3000:]
    checks.assert_outputs_match_recompute(admin, SERIES, env, ConfigBundle())
    # The lease was taken and released, and the checkpoint written, as the user.
    assert admin.exists("feat:{cache}:BTCUSDT")
    assert not admin.exists("feat:{cache}:BTCUSDT:owner")


@pytest.mark.parametrize(
    ("what", "attempt"),
    [
        ("XADD to an input stream", lambda c: c.xadd(SERIES.stream_key, {"x": "1"})),
        ("XTRIM an input stream", lambda c: c.xtrim(SERIES.stream_key, maxlen=0)),
        ("DEL an input stream", lambda c: c.delete(SERIES.stream_key)),
        ("read an unrelated key", lambda c: c.get("prod:orders:open")),
        ("write an unrelated key", lambda c: c.set("prod:orders:open", "x")),
        ("write cfg:events", lambda c: c.xadd("cfg:events", {"rev": "r9"})),
        ("list every key", lambda c: c.keys("*")),
        ("flush the database", lambda c: c.flushall()),
        ("change the configuration", lambda c: c.config_set("appendonly", "no")),
    ],
)
def test_the_user_is_refused(
    acl_server: RedisServer, what: str, attempt: Callable[[redis.Redis], Any]
) -> None:
    admin = acl_server.client()
    admin.xadd(SERIES.stream_key, {"x": "0"})
    admin.set("prod:orders:open", "secret")
    with pytest.raises(redis.exceptions.NoPermissionError):
        attempt(as_user(acl_server))
    assert admin.xlen(SERIES.stream_key) == 1, what
    assert admin.get("prod:orders:open") == b"secret", what


def test_the_user_may_do_what_the_service_and_its_jobs_need(acl_server: RedisServer) -> None:
    admin = acl_server.client()
    admin.xadd(SERIES.stream_key, {"x": "0"})
    admin.xadd("cfg:events", {"rev": "r1"})
    user = as_user(acl_server)
    user.xgroup_create(SERIES.stream_key, "s2", id="0")
    [[_, entries]] = user.xreadgroup("s2", "c1", {SERIES.stream_key: ">"})
    assert user.xack(SERIES.stream_key, "s2", entries[0][0]) == 1
    assert user.xread({"cfg:events": "0"})
    user.xadd("feat:events:BTCUSDT", {"data": "{}"})
    user.set("prod:regime:market:state", "{}")
    assert user.get("prod:regime:market:state") == b"{}"
