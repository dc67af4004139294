"""Checkpoints whose lake parts are written off the loop thread: the loop goes on while a part is
written, and the order lake part -> checkpoint -> ack holds (a real redis-server, a lake whose
appends the test holds back or fails)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis

from s2feature.config.bundle import ConfigBundle
from s2feature.domain import Bar, SeriesId
from s2feature.lake.parquet import BarLake
from s2feature.service.runner import Service
from s2feature.service.settings import load_settings
from s2feature.store.sqlite import SqliteStore
from s2feature.streams.keys import cache_key
from tests.support import service_checks as checks
from tests.support.redis_servers import RedisServer, wait_for

pytestmark = pytest.mark.redis
SERIES = SeriesId("binance", "fut", "BTCUSDT")


class HeldLake(BarLake):
    """A lake whose appends wait until `release` is set, or fail with `failure`."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.release = threading.Event()
        self.failure: OSError | None = None
        self.started = threading.Event()
        self.appender: str | None = None  # the thread that ran the last append

    def append(self, symbol: str, bars: Sequence[Bar]) -> None:
        self.appender = threading.current_thread().name
        self.started.set()
        assert self.release.wait(30), "the test never released the append"
        if self.failure is not None:
            raise self.failure
        super().append(symbol, bars)


# Three entries a bar; the tests add at most 200 at a time, which one read (S2_BATCH_SIZE) takes.
ENTRIES = checks.input_entries(SERIES, checks.input_bars(SERIES, 100, seed=71), seed=71)


def add_entries(client: redis.Redis, start: int, stop: int) -> None:
    for fields in ENTRIES[start:stop]:
        client.xadd(SERIES.stream_key, fields)  # type: ignore[arg-type]


@pytest.fixture
def setup(
    redis_server: RedisServer, tmp_path: Path
) -> tuple[Service, HeldLake, SqliteStore, redis.Redis, dict[str, str]]:
    env = {
        "S2_REDIS_ADDRESSES": f"127.0.0.1:{redis_server.port}",
        "S2_SYMBOLS": "binance:fut:BTCUSDT",
        "S2_WINDOWS": "1m,5m,1h",
        "S2_CONSUMER_NAME": "host-a",
        "S2_DB_SQLITE_PATH": str(tmp_path / "s2.db"),
        "S2_LAKE_DIR": str(tmp_path / "lake"),
        "S2_CHECKPOINT_MS": "1",
        "S2_LOG_LEVEL": "WARNING",
    }
    client = redis_server.client()
    lake = HeldLake(tmp_path / "lake")
    store = SqliteStore(tmp_path / "s2.db")
    service = Service(load_settings(env), redis_server.client(), store, lake)
    return service, lake, store, client, env


def test_the_loop_goes_on_while_a_lake_part_is_written_and_acks_only_after_it(
    setup: tuple[Service, HeldLake, SqliteStore, redis.Redis, dict[str, str]],
) -> None:
    service, lake, store, client, env = setup
    add_entries(client, 0, 200)
    service.start()
    service.run_once()  # a batch committed, its checkpoint started: the part is being written
    assert lake.started.wait(10)
    assert lake.appender is not None
    assert lake.appender.startswith("lake-writer")
    first_batches, first_applied = service.batches, service.workers[SERIES.stream_key].applied
    assert checks.pending_count(client, SERIES) == 200  # nothing acked before the part is durable
    assert client.get(cache_key(SERIES.symbol)) is None  # nor checkpointed

    add_entries(client, 200, 300)
    service.run_once()  # the next batch is computed and committed meanwhile
    assert service.batches > first_batches
    assert service.workers[SERIES.stream_key].applied > first_applied
    assert checks.pending_count(client, SERIES) == 300

    lake.release.set()
    worker = service.workers[SERIES.stream_key]
    wait_for(lambda: worker.flush_ready, timeout_s=10, what="the lake part")
    service.finish_flushes()  # the checkpoint and the acks of the first part
    assert client.get(cache_key(SERIES.symbol)) is not None
    assert 0 < checks.pending_count(client, SERIES) < 300
    assert len(lake.read(SERIES.symbol)) > 0

    service.flush_all(force=True)
    service.lake_writer.close()
    assert checks.pending_count(client, SERIES) == 0
    checks.assert_outputs_match_recompute(client, SERIES, env, ConfigBundle())
    store.close()


def test_a_failed_lake_part_is_raised_and_nothing_of_it_is_acked_or_checkpointed(
    setup: tuple[Service, HeldLake, SqliteStore, redis.Redis, dict[str, str]],
) -> None:
    service, lake, store, client, _ = setup
    add_entries(client, 0, 200)
    lake.failure = OSError(28, "No space left on device")
    service.start()
    service.run_once()  # the checkpoint is started
    lake.release.set()  # and its part fails, on the lake writer's thread
    with pytest.raises(OSError, match="No space left"):
        service.flush_all(force=True)
    assert checks.pending_count(client, SERIES) == 200
    assert client.get(cache_key(SERIES.symbol)) is None
    store.close()


def test_a_stream_taken_over_drops_its_checkpoint_under_way(
    setup: tuple[Service, HeldLake, SqliteStore, redis.Redis, dict[str, str]],
) -> None:
    service, lake, store, client, _ = setup
    add_entries(client, 0, 200)
    service.start()
    service.run_once()
    assert lake.started.wait(10)
    worker = service.workers[SERIES.stream_key]
    threading.Timer(0.2, lake.release.set).start()
    service.ownership.lose(worker, "test")  # waits for the part, then drops the checkpoint
    assert lake.release.is_set()
    assert not worker.flush_ready
    assert worker.finish_flushing(wait=True) == 0
    assert checks.pending_count(client, SERIES) == 200  # left to the next owner
    assert client.get(cache_key(SERIES.symbol)) is None
    store.close()


def test_flush_due_says_when_an_idle_round_has_a_checkpoint_to_start_or_finish(
    setup: tuple[Service, HeldLake, SqliteStore, redis.Redis, dict[str, str]],
) -> None:
    service, lake, store, client, _ = setup
    worker = service.workers[SERIES.stream_key]
    worker._checkpoint_s = 3600.0  # not due for an hour after the last one
    add_entries(client, 0, 200)
    service.start()
    service.run_once()  # committed; no checkpoint yet
    now = time.monotonic()
    assert not worker.flush_due(now)
    service.flush_all(force=False)
    assert not lake.started.is_set()  # nothing started when nothing was due
    assert worker.flush_due(now + 3600.0)
    worker._checkpoint_s = 0.0
    service.flush_all(force=False)  # due: the checkpoint starts, its part is being written
    assert lake.started.wait(10)
    assert not worker.flush_due(time.monotonic())  # under way, its part not written yet
    lake.release.set()
    wait_for(lambda: worker.flush_ready, timeout_s=10, what="the lake part")
    assert worker.flush_due(time.monotonic())  # finishing it is due
    service.flush_all(force=False)
    assert client.get(cache_key(SERIES.symbol)) is not None
    assert checks.pending_count(client, SERIES) == 0
    service.lake_writer.close()
    store.close()
