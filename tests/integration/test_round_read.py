"""The round read and the idle wait (`streams/round_read.py`) against a real redis-server: the
packed command is redis-py's byte for byte, they give the batches and lost-reply verdicts of
the ordinary calls, and when their fast path fails (script cache flushed, connection lost, a
reply lost to a timeout) the ordinary call reads instead, with nothing lost or read twice."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from s2feature.domain import SeriesId
from s2feature.streams.redis_io import StreamIO, first_pending_after, read_new_of_any
from s2feature.streams.round_read import RoundCommand, RoundRead, RoundWait
from tests.support import service_checks as checks
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.redis

SERIES = [SeriesId("binance", "fut", s) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")]


def fill(client: redis.Redis, series: SeriesId, n: int, seed: int) -> list[str]:
    bars = checks.input_bars(series, n, seed=seed)
    entries = checks.input_entries(series, bars, seed=seed)[:n]
    added: list[Any] = [client.xadd(series.stream_key, f) for f in entries]  # type: ignore[arg-type]
    return [entry_id.decode() for entry_id in added]


def groups(client: redis.Redis, *names: str) -> None:
    for series in SERIES:
        for name in names:
            client.xgroup_create(series.stream_key, name, id="0", mkstream=True)


def in_use(client: redis.Redis) -> int:
    return len(client.connection_pool._in_use_connections)


def test_the_packed_command_is_redis_pys() -> None:
    packer: Any = redis.Connection()  # packs without connecting
    command = RoundCommand("f" * 40, "s2-feature", "pod-0")
    for keys, ids, count in [
        (["mkt:events:a", "mkt:events:b"], ["0-0", "17-3"], 10),
        (["mkt:events:a", "mkt:events:b"], ["1700000000000-0", "17-4"], 10),  # same prefix
        (["mkt:events:b"], ["99-1"], 40),  # another scope
        ([f"mkt:events:s{i}" for i in range(100)], [f"{i}-{i}" for i in range(100)], 10),
    ]:
        expected = b"".join(
            packer.pack_command(
                "EVALSHA", "f" * 40, len(keys), *keys, "s2-feature", "pod-0", count, *ids
            )
        )
        assert command.pack(keys, ids, count) == expected
    with pytest.raises(ValueError, match="one applied ID per stream"):
        command.pack(["mkt:events:a"], [], 10)


@pytest.mark.parametrize("protocol", [None, 2], ids=["default", "resp2"])
def test_rounds_give_the_batches_of_the_ordinary_checked_reads(
    redis_server: RedisServer, protocol: int | None
) -> None:
    client = redis_server.client(protocol=protocol)
    groups(client, "round", "ordinary")
    for seed, series in enumerate(SERIES):
        fill(client, series, 7 + 5 * seed, seed)  # 7, 12 and 17 entries
    read = RoundRead(client, "round", "c1")
    ordinary = {s.stream_key: StreamIO(client, s, "ordinary", "c1", lease=None) for s in SERIES}  # type: ignore[arg-type]
    keys = [s.stream_key for s in SERIES]
    applied = dict.fromkeys(keys, "0-0")
    rounds = 0
    while True:
        got = read(keys, [applied[k] for k in keys], 5)
        expected = {k: io.read_new_checked(5, applied[k]) for k, io in ordinary.items()}
        assert got == {k: batch for k, batch in expected.items() if batch[0]}
        assert in_use(client) == 0
        if not got:
            break
        rounds += 1
        for key, (entries, lost) in got.items():
            assert not lost
            applied[key] = entries[-1][0]
    assert rounds == 4  # 5 + 5 + 5 + 2 entries of the longest stream


def test_entries_delivered_to_an_unseen_reply_are_reported_as_lost(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    groups(client, "s2")
    ids = fill(client, SERIES[0], 12, seed=1)
    read = RoundRead(client, "s2", "c1")
    keys = [SERIES[0].stream_key]
    first, _ = read(keys, ["0-0"], 5)[keys[0]]
    read(keys, [first[-1][0]], 5)  # entries 6-10 delivered; the caller never saw them
    entries, lost = read(keys, [first[-1][0]], 5)[keys[0]]
    assert [entry_id for entry_id, _ in entries] == ids[10:12]
    assert lost  # the caller drains its pending entries first


def test_a_flushed_script_cache_is_read_through_the_ordinary_call(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    groups(client, "s2")
    ids = fill(client, SERIES[0], 6, seed=2)
    read = RoundRead(client, "s2", "c1")
    keys = [SERIES[0].stream_key]
    client.script_flush()
    entries, lost = read(keys, ["0-0"], 4)[keys[0]]
    assert [entry_id for entry_id, _ in entries] == ids[:4]
    assert not lost
    assert client.script_exists(read._script.sha) == [True]  # loaded again
    entries, _ = read(keys, [ids[3]], 4)[keys[0]]
    assert [entry_id for entry_id, _ in entries] == ids[4:]
    assert in_use(client) == 0


class FailsOnce:
    """A connection method that raises `error` once, after (`after`) or instead of the call."""

    def __init__(self, method: Any, error: Exception, after: bool) -> None:
        self.failed = 0

        def wrapper(connection: Any, *args: Any, **kwargs: Any) -> Any:
            if self.failed:
                return method(connection, *args, **kwargs)
            self.failed += 1
            if after:
                method(connection, *args, **kwargs)
            raise error

        self.wrapper = wrapper


def test_a_connection_lost_before_the_send_is_read_through_the_ordinary_call(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis_server.client()
    groups(client, "s2")
    ids = fill(client, SERIES[0], 6, seed=4)
    read = RoundRead(client, "s2", "c1")
    keys = [SERIES[0].stream_key]
    assert read(keys, ["0-0"], 3)[keys[0]][0][-1][0] == ids[2]
    connection_type: Any = client.connection_pool.connection_class
    fails = FailsOnce(connection_type.send_packed_command, redis.ConnectionError("gone"), False)
    monkeypatch.setattr(connection_type, "send_packed_command", fails.wrapper)
    entries, lost = read(keys, [ids[2]], 3)[keys[0]]
    assert fails.failed == 1
    assert [entry_id for entry_id, _ in entries] == ids[3:]
    assert not lost
    assert in_use(client) == 0


def test_a_reply_lost_to_a_timeout_is_reported_as_lost(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis_server.client()
    groups(client, "s2")
    ids = fill(client, SERIES[0], 9, seed=5)
    read = RoundRead(client, "s2", "c1")
    keys = [SERIES[0].stream_key]
    assert read(keys, ["0-0"], 3)[keys[0]][0][-1][0] == ids[2]
    connection_type: Any = client.connection_pool.connection_class
    # The script runs (entries 4-6 delivered), its reply is lost to a timeout, and the ordinary
    # call sends it again: entries 7-9, with the verdict that others came before them.
    fails = FailsOnce(connection_type.read_response, redis.TimeoutError("slow"), True)
    monkeypatch.setattr(connection_type, "read_response", fails.wrapper)
    entries, lost = read(keys, [ids[2]], 3)[keys[0]]
    assert fails.failed == 1
    assert [entry_id for entry_id, _ in entries] == ids[6:9]
    assert lost
    assert in_use(client) == 0
    assert client.script_exists(read._script.sha) == [True]


@pytest.mark.parametrize("protocol", [None, 2], ids=["default", "resp2"])
def test_waits_give_the_entries_and_checks_of_the_ordinary_calls(
    redis_server: RedisServer, protocol: int | None
) -> None:
    client = redis_server.client(protocol=protocol)
    groups(client, "wait", "ordinary")
    for seed, series in enumerate(SERIES[:2]):
        fill(client, series, 4 + 4 * seed, seed)  # 4 and 8 entries; the third stream has none
    wait = RoundWait(client, "wait", "c1")
    keys = [s.stream_key for s in SERIES]
    while True:
        got = wait.read(keys, 3, 10)
        expected = read_new_of_any(client, "ordinary", "c1", keys, 3, 10)
        assert got == expected
        assert in_use(client) == 0
        if not got:
            break
    ios = [StreamIO(client, s, "wait", "c1", lease=None) for s in SERIES]  # type: ignore[arg-type]
    checks = [(ios[0], "0-0"), (ios[1], "0-0"), (ios[2], "0-0"), (ios[1], "99999999999999-0")]
    firsts = wait.first_pending_after(checks)
    assert firsts == first_pending_after(client, checks)
    assert firsts[0] is not None
    assert firsts[1] is not None
    assert firsts[2:] == [None, None]
    assert in_use(client) == 0


def test_a_wait_whose_reply_is_lost_leaves_its_entries_to_the_pending_check(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis_server.client()
    groups(client, "s2")
    ids = fill(client, SERIES[0], 6, seed=6)
    wait = RoundWait(client, "s2", "c1")
    keys = [SERIES[0].stream_key]
    first = wait.read(keys, 3, 10)
    assert [entry_id for entry_id, _ in first[keys[0]]] == ids[:3]
    connection_type: Any = client.connection_pool.connection_class
    # Entries 1-3 went to the read above; 4-6 are delivered and their reply lost: the ordinary
    # read that follows finds nothing new, and the check finds the lost ones pending.
    fails = FailsOnce(connection_type.read_response, redis.TimeoutError("slow"), True)
    monkeypatch.setattr(connection_type, "read_response", fails.wrapper)
    assert wait.read(keys, 3, 10) == {}
    assert fails.failed == 1
    io = StreamIO(client, SERIES[0], "s2", "c1", lease=None)  # type: ignore[arg-type]
    assert wait.first_pending_after([(io, ids[2])]) == [ids[3]]
    assert in_use(client) == 0


def test_a_wait_on_a_lost_connection_is_read_through_the_ordinary_call(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis_server.client()
    groups(client, "s2")
    ids = fill(client, SERIES[0], 2, seed=7)
    wait = RoundWait(client, "s2", "c1")
    keys = [SERIES[0].stream_key]
    connection_type: Any = client.connection_pool.connection_class
    fails = FailsOnce(connection_type.send_packed_command, redis.ConnectionError("gone"), False)
    monkeypatch.setattr(connection_type, "send_packed_command", fails.wrapper)
    got = wait.read(keys, 3, 10)
    assert fails.failed == 1
    assert [entry_id for entry_id, _ in got[keys[0]]] == ids
    assert in_use(client) == 0
