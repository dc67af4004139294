"""`s2-feature run` as a process: exit codes, log lines, a store that is not up yet, and leases
released on every way out."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from s2feature import cli
from s2feature.domain import SeriesId
from s2feature.lake.parquet import BarLake
from s2feature.service.runner import Service
from s2feature.service.settings import load_settings
from s2feature.store.base import StoreError
from s2feature.store.sqlite import SqliteStore
from s2feature.streams.lease import lease_key
from tests.support import service_checks as checks
from tests.support.redis_servers import RedisServer, wait_for

ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = "binance:fut:BTCUSDT"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("S2_")}
    return {**env, "S2_SYMBOLS": SYMBOLS, "S2_API_PORT": "0", **extra}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"S2_DB_BACKEND": "arango"}, "S2_DB_ARANGO_URI"),
        ({"S2_DB_BACKEND": "postgres"}, "S2_DB_BACKEND"),
        ({"S2_DB_ARANGO_URI": "http://127.0.0.1:8529"}, "S2_DB_BACKEND"),
        ({"S2_BATCH_SIZE": "500"}, "S2_BATCH_SIZE"),
        ({"S2_LOG_LEVEL": "LOUD"}, "S2_LOG_LEVEL"),
    ],
    ids=["arango-without-uri", "unknown-backend", "uri-without-backend", "batch-over-200", "level"],
)
def test_a_bad_setting_is_one_line_and_exit_2(extra: dict[str, str], named: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "s2feature.cli", "run"],
        env=child_env(**extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1, done.stderr
    assert named in err[0]
    assert err[0].startswith("s2-feature run: error:")


def test_an_unexpected_error_prints_its_traceback_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_: object, **__: object) -> int:
        raise KeyError("an engine invariant")

    import s2feature.launcher

    monkeypatch.setattr(s2feature.launcher, "run_service", broken)
    monkeypatch.setenv("S2_SYMBOLS", SYMBOLS)
    assert cli.main(["run"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "KeyError: 'an engine invariant'" in err


@pytest.mark.timeout(120)
def test_a_store_not_reachable_at_start_is_retried_until_stopped(tmp_path: Path) -> None:
    """ArangoDB not up yet: the process retries with backoff (JSON log lines say so) instead of
    crashing, and SIGTERM while it waits exits 0."""
    env = child_env(
        S2_DB_BACKEND="arango",
        S2_DB_ARANGO_URI=f"http://127.0.0.1:{closed_port()}",
        S2_REDIS_ADDRESSES=f"127.0.0.1:{closed_port()}",
        S2_LAKE_DIR=str(tmp_path / "lake"),
    )
    log_path = tmp_path / "stderr.log"
    with log_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "s2feature.cli", "run"], env=env, cwd=ROOT, stderr=err
        )
        try:

            def retries() -> list[dict[str, object]]:
                found = []
                for line in log_path.read_text().splitlines():
                    record = json.loads(line)  # every line is a JSON object
                    if record.get("event") == "retry" and record.get("what") == "open store":
                        found.append(record)
                return found

            wait_for(lambda: len(retries()) >= 2, timeout_s=90, what="two retries of the store")
            assert proc.poll() is None  # still waiting, not crashed
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert int(str(retries()[1]["attempt"])) == 2


class RefusingStore(SqliteStore):
    """A store that refuses every write for good (as a schema or permission error would)."""

    def write_batch(self, *_: object, **__: object) -> None:
        raise StoreError("refused: permission denied")


@pytest.mark.redis
@pytest.mark.timeout(120)  # a refusal is not transient: never retried
def test_the_lease_is_released_when_the_loop_fails(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis_server.client()
    series = SeriesId("binance", "fut", "BTCUSDT")
    for fields in checks.input_entries(series, checks.input_bars(series, 30, 5), 5):
        client.xadd(series.stream_key, fields)  # type: ignore[arg-type]
    settings = load_settings(
        {
            "S2_REDIS_ADDRESSES": f"127.0.0.1:{redis_server.port}",
            "S2_SYMBOLS": SYMBOLS,
            "S2_CONSUMER_NAME": "host-a",
        }
    )
    store = RefusingStore(tmp_path / "s2.db")
    conn = redis.Redis(host="127.0.0.1", port=redis_server.port)
    service = Service(settings, conn, store, BarLake(tmp_path / "lake"))
    with pytest.raises(StoreError, match="refused"):
        service.run(idle_exit_s=0.5)
    store.close()
    conn.close()
    assert client.get(lease_key("BTCUSDT")) is None
    assert client.xpending(series.stream_key, "s2")["pending"] > 0  # nothing was acked
