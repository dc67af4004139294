"""No secret ever reaches the output: whole `s2-feature run` processes, logging at DEBUG, with a
Redis password, an API token, a config URL and a store URI with credentials, and a store password;
their whole stdout and stderr are searched for each secret."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from s2feature.config.bundle import ConfigBundle
from s2feature.domain import SeriesId
from tests.support import service_checks as checks
from tests.support.config_server import ConfigServer
from tests.support.redis_servers import RedisServer, wait_for

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parents[2]
SERIES = SeriesId("binance", "fut", "BTCUSDT")
REDIS_PASSWORD = "redis-Secret-4711"
API_TOKEN = "api-Token-0815"
CONFIG_PASSWORD = "config-Secret-2718"
ARANGO_PASSWORD = "arango-Secret-3141"
URI_PASSWORD = "uri-Secret-1618"
SECRETS = (REDIS_PASSWORD, API_TOKEN, CONFIG_PASSWORD, ARANGO_PASSWORD, URI_PASSWORD)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def base_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S2_", "OTEL_"))}
    return {
        **env,
        "S2_SYMBOLS": "binance:fut:BTCUSDT",
        "S2_WINDOWS": "1m,5m,1h",
        "S2_API_PORT": "0",
        "S2_API_TOKEN": API_TOKEN,
        "S2_LOG_LEVEL": "DEBUG",
        "S2_LAKE_DIR": str(tmp / "lake"),
        "S2_DB_ARANGO_PASSWORD": ARANGO_PASSWORD,
        "S2_CONFIG_CACHE": str(tmp / "config-cache.json"),
        **extra,
    }


def assert_no_secret(output: str) -> None:
    assert output.strip()
    for secret in SECRETS:
        assert secret not in output, f"{secret} appears in the output"


@pytest.mark.timeout(300)
def test_a_whole_run_prints_no_secret(redis_server: RedisServer, tmp_path: Path) -> None:
    redis_server.execute("CONFIG", "SET", "requirepass", REDIS_PASSWORD)
    client = redis_server.client(password=REDIS_PASSWORD)
    entries = checks.input_entries(SERIES, checks.input_bars(SERIES, 200, 5), 5)
    checks.add_entries(client, SERIES, entries)
    config = ConfigServer(ConfigBundle().model_dump(mode="json")).start()
    try:
        config_url = config.url.replace("http://", f"http://s2:{CONFIG_PASSWORD}@")
        env = base_env(
            tmp_path,
            S2_REDIS_ADDRESSES=f"127.0.0.1:{redis_server.port}",
            S2_REDIS_PASSWORD=REDIS_PASSWORD,
            S2_DB_SQLITE_PATH=str(tmp_path / "s2.db"),
            S2_CONFIG_URL=config_url,
        )
        done = subprocess.run(
            [sys.executable, "-m", "s2feature.cli", "run", "--burst", "1"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert config.requests  # the credentials were used
        assert config.requests[0].authorization is not None
    finally:
        config.stop()
        client.config_set("requirepass", "")  # the harness stops the server without a password
    assert done.returncode == 0, done.stderr[-3000:]
    events = {json.loads(line).get("event") for line in done.stderr.splitlines()}
    # the run did the work whose lines could leak: per-snapshot lines, checkpoints, config
    assert {"start", "config_applied", "lease_taken", "checkpoint"} <= events
    assert {"compute_ok", "dqc_fail"} & events
    assert_no_secret(done.stdout + done.stderr)


@pytest.mark.timeout(120)
def test_a_store_uri_with_credentials_is_not_printed_while_retried(tmp_path: Path) -> None:
    env = base_env(
        tmp_path,
        S2_DB_BACKEND="arango",
        S2_DB_ARANGO_URI=f"http://s2:{URI_PASSWORD}@127.0.0.1:{closed_port()}",
        S2_REDIS_ADDRESSES=f"127.0.0.1:{closed_port()}",
        S2_REDIS_PASSWORD=REDIS_PASSWORD,
    )
    log_path = tmp_path / "stderr.log"
    with log_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "s2feature.cli", "run"],
            env=env,
            cwd=ROOT,
            stderr=err,
            stdout=err,
        )
        try:

            def retried() -> bool:
                return log_path.read_text().count('"what": "open store"') >= 2

            wait_for(retried, timeout_s=90, what="two retries of the store")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert_no_secret(log_path.read_text())
