"""Commands sent ahead (`streams/ahead.py`) against a real redis-server: reads give the batches
and lost-reply verdicts of the ordinary read, emit scripts the emits of the ordinary publish, and
a service whose reads or emit scripts lose their replies still processes and emits every entry
once, in order."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from s2feature.domain import SeriesId
from s2feature.lake.parquet import BarLake
from s2feature.service import reads
from s2feature.service import worker as worker_module
from s2feature.service.runner import Service
from s2feature.service.settings import load_settings
from s2feature.store.sqlite import SqliteStore
from s2feature.streams.ahead import PublishAhead, PublishRound, ReadAhead
from s2feature.streams.keys import events_key, last_key
from s2feature.streams.redis_io import StreamIO
from s2feature.streams.round_read import RoundRead, RoundReply
from tests.support import service_checks as checks
from tests.support.redis_servers import RedisServer, wait_for

pytestmark = pytest.mark.redis

SERIES = SeriesId("binance", "fut", "BTCUSDT")


def stream_io(client: redis.Redis, group: str) -> StreamIO:
    client.xgroup_create(SERIES.stream_key, group, id="0", mkstream=True)
    return StreamIO(client, SERIES, group, "c1", lease=None)  # type: ignore[arg-type]


def fill(client: redis.Redis, n: int) -> list[str]:
    entries = checks.input_entries(SERIES, checks.input_bars(SERIES, n, seed=3), seed=3)[:n]
    added: list[Any] = [client.xadd(SERIES.stream_key, f) for f in entries]  # type: ignore[arg-type]
    return [entry_id.decode() for entry_id in added]


def service_env(server: RedisServer, tmp_path: Path, symbols: str) -> dict[str, str]:
    return {
        "S2_REDIS_ADDRESSES": f"127.0.0.1:{server.port}",
        "S2_SYMBOLS": symbols,
        "S2_WINDOWS": "1m,5m,1h",
        "S2_CONSUMER_NAME": "test-consumer",
        "S2_BATCH_SIZE": "50",
        "S2_DB_SQLITE_PATH": str(tmp_path / "s2.db"),
        "S2_LAKE_DIR": str(tmp_path / "lake"),
    }


def in_use(client: redis.Redis) -> int:
    return len(client.connection_pool._in_use_connections)


# The service's client speaks RESP3 (redis-py's default); RESP2 replies have another shape.
@pytest.mark.parametrize("protocol", [None, 2], ids=["default", "resp2"])
def test_a_read_ahead_gives_the_batches_of_the_ordinary_read(
    redis_server: RedisServer, protocol: int | None
) -> None:
    client = redis_server.client(protocol=protocol)
    ids = fill(client, 25)
    ordinary, ahead = stream_io(client, "ordinary"), stream_io(client, "ahead")
    applied = "0-0"
    for _ in range(4):  # 10, 10, 5, then nothing
        expected = ordinary.read_new_checked(10, applied)
        got = ReadAhead(ahead, 10, applied).result()
        assert got == expected
        assert in_use(client) == 0
        if got[0]:
            applied = got[0][-1][0]
    assert applied == ids[-1]
    assert got == ([], False)


def test_entries_of_a_discarded_read_are_reported_as_lost(redis_server: RedisServer) -> None:
    client = redis_server.client()
    ids = fill(client, 30)
    io = stream_io(client, "s2")
    first, _ = ReadAhead(io, 10, "0-0").result()
    ReadAhead(io, 10, first[-1][0]).discard()  # Redis delivered entries 11-20; nobody saw them
    assert in_use(client) == 0
    entries, lost = ReadAhead(io, 10, first[-1][0]).result()
    assert [entry_id for entry_id, _ in entries] == ids[20:30]
    assert lost  # the caller processes the pending entries first
    assert io.read_new_checked(10, first[-1][0]) == ([], True)


def test_a_result_is_taken_once(redis_server: RedisServer) -> None:
    client = redis_server.client()
    fill(client, 3)
    read = ReadAhead(stream_io(client, "s2"), 10, "0-0")
    assert len(read.result()[0]) == 3
    with pytest.raises(RuntimeError):
        read.result()
    read.discard()  # harmless once the result is taken


class LosesEveryThirdReply(ReadAhead):
    """A read ahead whose reply is lost after Redis executed it, every third time (a socket
    timeout during a stall): its entries are delivered to the consumer but never seen."""

    reads = 0
    lost_entries = 0

    def result(self) -> tuple[list[Any], bool]:
        entries, lost = super().result()
        type(self).reads += 1
        if type(self).reads % 3 == 0:
            type(self).lost_entries += len(entries)
            raise redis.TimeoutError("Timeout reading from socket (injected)")
        return entries, lost


def run_over_streams(
    redis_server: RedisServer, tmp_path: Path, series_list: tuple[SeriesId, ...], n_bars: int = 700
) -> Service:
    """A service over a backlog of `n_bars` bars of each series; asserts every entry was
    processed and emitted once, in order."""
    client = redis_server.client()
    inputs = {}
    for index, series in enumerate(series_list):
        bars = checks.input_bars(series, n_bars, seed=40 + index)
        entries = checks.input_entries(series, bars, seed=40 + index)
        checks.add_entries(client, series, entries)
        inputs[series] = (bars, entries)
    names = ",".join(f"{s.venue}:{s.market}:{s.symbol}" for s in series_list)
    env = service_env(redis_server, tmp_path, names)
    settings = load_settings(env)
    store = SqliteStore(tmp_path / "s2.db")
    service = Service(settings, redis_server.client(), store, BarLake(tmp_path / "lake"))
    service.run(idle_exit_s=0.3)
    store.close()
    for series, (bars, entries) in inputs.items():
        checks.assert_run_complete(client, series, env, bars, entries)
    return service


def test_a_service_whose_reads_ahead_lose_replies_processes_every_entry_once(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two streams: read stream by stream, the next read sent ahead (from `ROUND_MIN_STREAMS`
    # streams on, a standalone server's are read in rounds, below).
    monkeypatch.setattr(reads, "ReadAhead", LosesEveryThirdReply)
    run_over_streams(redis_server, tmp_path, (SERIES, SeriesId("binance", "fut", "ETHUSDT")))
    assert LosesEveryThirdReply.lost_entries > 0  # the fault really swallowed entries


class ResendsEveryThirdRoundRead(RoundRead):
    """`RoundRead` (a round's read, blocking or not) whose reply is lost every third time and
    the read silently sent again, as redis-py does after a socket timeout: the first read's
    entries are delivered to the consumer but never seen, the second returns the entries after
    them, and its reply is not whole (only the ordinary call sends a read twice)."""

    reads = 0
    lost_entries = 0
    losing = True

    def read(self, keys: Any, count: int, block_ms: int | None) -> RoundReply:
        got = super().read(keys, count, block_ms)
        type(self).reads += 1
        if type(self).losing and type(self).reads % 3 == 0 and got.batches:
            type(self).lost_entries += sum(len(entries) for entries in got.batches.values())
            return RoundReply(super().read(keys, count, block_ms).batches, whole=False)
        return got


class CountsChecks(RoundRead):
    """`RoundRead` counting the streams it checks for entries of lost replies."""

    checked = 0

    def first_pending_after(self, checks: Any) -> list[str | None]:
        type(self).checked += len(checks)
        return super().first_pending_after(checks)


class ResendsAndCounts(ResendsEveryThirdRoundRead, CountsChecks):
    pass


@pytest.mark.parametrize("reader", [CountsChecks, ResendsAndCounts], ids=["whole", "resent"])
def test_only_streams_of_a_reply_that_was_not_whole_are_checked(
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reader: type[CountsChecks],
) -> None:
    monkeypatch.setattr(reads, "ROUND_MIN_STREAMS", 2)  # two streams make a round
    monkeypatch.setattr(reads, "RoundRead", reader)
    for counter in ("checked", "reads", "lost_entries"):
        monkeypatch.setattr(reader, counter, 0, raising=False)
    other = SeriesId("binance", "fut", "ETHUSDT")
    run_over_streams(redis_server, tmp_path, (SERIES, other), n_bars=300)
    if reader is CountsChecks:
        assert reader.checked == 0  # every reply came whole: nothing to check
    else:
        assert getattr(reader, "lost_entries") > 0  # noqa: B009 - set on the subclass by `read`
        assert reader.checked > 0


def test_a_service_whose_round_reads_lose_replies_processes_every_entry_once(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reads, "ROUND_MIN_STREAMS", 2)  # two streams make a round
    monkeypatch.setattr(reads, "RoundRead", ResendsEveryThirdRoundRead)
    ResendsEveryThirdRoundRead.reads = ResendsEveryThirdRoundRead.lost_entries = 0
    other = SeriesId("binance", "fut", "ETHUSDT")
    run_over_streams(redis_server, tmp_path, (SERIES, other))
    assert ResendsEveryThirdRoundRead.lost_entries > 0  # the fault swallowed entries


def test_a_service_whose_idle_waits_lose_replies_processes_every_entry_once(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reads, "ROUND_MIN_STREAMS", 2)  # two streams make a round
    monkeypatch.setattr(reads, "RoundRead", ResendsEveryThirdRoundRead)
    ResendsEveryThirdRoundRead.reads = ResendsEveryThirdRoundRead.lost_entries = 0
    monkeypatch.setattr(ResendsEveryThirdRoundRead, "losing", True)
    client = redis_server.client()
    series_list = (SERIES, SeriesId("binance", "fut", "ETHUSDT"))
    inputs = {}
    for index, series in enumerate(series_list):
        bars = checks.input_bars(series, 150, seed=60 + index)
        inputs[series] = (bars, checks.input_entries(series, bars, seed=60 + index))
    env = service_env(redis_server, tmp_path, "binance:fut:BTCUSDT,binance:fut:ETHUSDT")
    store = SqliteStore(tmp_path / "s2.db")
    service = Service(load_settings(env), redis_server.client(), store, BarLake(tmp_path / "lake"))
    runner = threading.Thread(target=service.run)
    runner.start()
    try:
        # A trickle, so the service goes idle between entries and the idle wait delivers them.
        for start in range(0, 450, 5):
            if start == 440:
                # Entries a lost reply delivered are found by the next read that returns new
                # entries of their stream: the last ones come after the faults stop.
                ResendsEveryThirdRoundRead.losing = False
            for series, (_, entries) in inputs.items():
                checks.add_entries(client, series, entries[start : start + 5])
            time.sleep(0.01)
        last = {series.stream_key: entries[-1] for series, (_, entries) in inputs.items()}
        wait_for(
            lambda: all(
                reads.applied_id(service.workers[key]) == checks.input_entry_id(fields)
                for key, fields in last.items()
            ),
            timeout_s=60,
            what="every entry applied",
        )
    finally:
        service.stop.set()
        runner.join(timeout=60)
        store.close()
    assert ResendsEveryThirdRoundRead.lost_entries > 0  # the fault swallowed entries
    for series, (bars, entries) in inputs.items():
        checks.assert_run_complete(client, series, env, bars, entries)


# -- emits sent ahead ----------------------------------------------------------------------


def emit_items(t0s: range) -> list[tuple[int, str, str]]:
    return [(t0, "1m", f'{{"t0":{t0}}}') for t0 in t0s]


def test_a_publish_ahead_emits_like_the_ordinary_publish(redis_server: RedisServer) -> None:
    client = redis_server.client()
    io = stream_io(client, "s2")
    keys, args = io.emit_request(emit_items(range(59_999, 600_000, 60_000)), 1000, b"{}", 60)
    assert PublishAhead(io, keys, args).result() == 10
    assert in_use(client) == 0
    assert PublishAhead(io, keys, args).result() == 0  # replays are skipped, not counted
    assert client.xlen(events_key(SERIES.symbol)) == 10
    assert client.get(last_key(SERIES.symbol)) == b"{}"
    client.script_flush()  # a restarted server has no scripts: the ordinary call loads it
    keys, args = io.emit_request(emit_items(range(659_999, 660_000, 60_000)), 1000, b"{}", 60)
    assert PublishAhead(io, keys, args).result() == 1
    assert client.xlen(events_key(SERIES.symbol)) == 11


class LosesEveryThirdPublishReply(PublishAhead):
    """An emit script whose reply is lost after Redis ran it, every third time."""

    replies = 0
    lost = 0

    def result(self) -> int:
        new = super().result()
        type(self).replies += 1
        if type(self).replies % 3 == 0:
            type(self).lost += 1
            raise redis.ConnectionError("Connection closed by server (injected)")
        return new


def test_a_service_whose_emit_replies_are_lost_emits_everything_once(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "PublishAhead", LosesEveryThirdPublishReply)
    client = redis_server.client()
    bars = checks.input_bars(SERIES, 1600, seed=44)  # emits start after a day
    entries = checks.input_entries(SERIES, bars, seed=44)
    checks.add_entries(client, SERIES, entries)
    env = service_env(redis_server, tmp_path, "binance:fut:BTCUSDT")
    store = SqliteStore(tmp_path / "s2.db")
    service = Service(load_settings(env), client, store, BarLake(tmp_path / "lake"))
    service.run(idle_exit_s=0.3)
    store.close()
    assert LosesEveryThirdPublishReply.lost > 0
    checks.assert_run_complete(client, SERIES, env, bars, entries)  # each emit once, in order
    # Emits whose reply was lost are counted as replays by the retry: never more than landed.
    assert 0 < service.emitted <= client.xlen(events_key(SERIES.symbol))


class LosesEveryThirdRoundReply(PublishRound):
    """A round of emit scripts whose replies are lost after Redis ran them, every third
    round."""

    rounds = 0
    lost = 0

    def __init__(self, requests: Any) -> None:
        super().__init__(requests)
        type(self).rounds += 1
        self.loses = type(self).rounds % 3 == 0

    def result_of(self, index: int) -> int:
        new = super().result_of(index)
        if self.loses:
            type(self).lost += 1
            raise redis.ConnectionError("Connection closed by server (injected)")
        return new


def test_a_service_whose_round_emit_replies_are_lost_emits_everything_once(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reads, "ROUND_MIN_STREAMS", 2)  # two streams make a round
    monkeypatch.setattr(worker_module, "PublishRound", LosesEveryThirdRoundReply)
    other = SeriesId("binance", "fut", "ETHUSDT")
    service = run_over_streams(redis_server, tmp_path, (SERIES, other), n_bars=1600)
    assert LosesEveryThirdRoundReply.lost > 0
    client = redis_server.client()
    landed = sum(client.xlen(events_key(s.symbol)) for s in (SERIES, other))
    assert 0 < service.emitted <= landed
