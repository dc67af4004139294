"""The round read (`streams/round_read.py`) against a real redis-server: the packed commands are
redis-py's byte for byte, blocking or not it gives the batches and lost-reply checks of the
ordinary calls, and when its fast path fails (connection lost, a reply lost to a timeout) the
ordinary call reads instead, with the reply marked not whole, so the pending check finds what
the lost one delivered."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from s2feature.domain import SeriesId
from s2feature.streams.redis_io import StreamIO, first_pending_after, read_new_of_any
from s2feature.streams.round_read import RoundRead, RoundReply, packed
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


def test_the_packed_commands_are_redis_pys() -> None:
    packer: Any = redis.Connection()  # packs without connecting
    keys = [f"mkt:events:s{i}" for i in range(100)]
    for args in [
        ("XREADGROUP", "GROUP", "s2-feature", "pod-0", "COUNT", "40", "STREAMS", *keys, *">" * 100),
        ("XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "BLOCK", "200", "STREAMS", "k", ">"),
        ("XPENDING", "mkt:events:a", "s2-feature", "(17-3", "+", "1", "pod-0"),
    ]:
        assert packed(*args) == b"".join(packer.pack_command(*args))


@pytest.mark.parametrize("protocol", [None, 2], ids=["default", "resp2"])
def test_non_blocking_rounds_give_the_batches_of_the_ordinary_read(
    redis_server: RedisServer, protocol: int | None
) -> None:
    client = redis_server.client(protocol=protocol)
    groups(client, "round", "ordinary")
    for seed, series in enumerate(SERIES):
        fill(client, series, 7 + 5 * seed, seed)  # 7, 12 and 17 entries
    read = RoundRead(client, "round", "c1")
    keys = [s.stream_key for s in SERIES]
    rounds = 0
    while True:
        got = read.read(keys, 5, None)
        expected = read_new_of_any(client, "ordinary", "c1", keys, 5, None)
        assert got == RoundReply(expected, whole=True)
        assert in_use(client) == 0
        if not expected:
            break
        rounds += 1
    assert rounds == 4  # 5 + 5 + 5 + 2 entries of the longest stream


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


@pytest.mark.parametrize("protocol", [None, 2], ids=["default", "resp2"])
def test_waits_give_the_entries_and_checks_of_the_ordinary_calls(
    redis_server: RedisServer, protocol: int | None
) -> None:
    client = redis_server.client(protocol=protocol)
    groups(client, "wait", "ordinary")
    for seed, series in enumerate(SERIES[:2]):
        fill(client, series, 4 + 4 * seed, seed)  # 4 and 8 entries; the third stream has none
    wait = RoundRead(client, "wait", "c1")
    keys = [s.stream_key for s in SERIES]
    while True:
        got = wait.read(keys, 3, 10)
        expected = read_new_of_any(client, "ordinary", "c1", keys, 3, 10)
        assert got == RoundReply(expected, whole=True)
        assert in_use(client) == 0
        if not expected:
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
    wait = RoundRead(client, "s2", "c1")
    keys = [SERIES[0].stream_key]
    first = wait.read(keys, 3, 10)
    assert first.whole
    assert [entry_id for entry_id, _ in first.batches[keys[0]]] == ids[:3]
    connection_type: Any = client.connection_pool.connection_class
    # Entries 1-3 went to the read above; 4-6 are delivered and their reply lost: the ordinary
    # read that follows finds nothing new, and the check finds the lost ones pending.
    fails = FailsOnce(connection_type.read_response, redis.TimeoutError("slow"), True)
    monkeypatch.setattr(connection_type, "read_response", fails.wrapper)
    assert wait.read(keys, 3, 10) == RoundReply({}, whole=False)  # the check must follow
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
    wait = RoundRead(client, "s2", "c1")
    keys = [SERIES[0].stream_key]
    connection_type: Any = client.connection_pool.connection_class
    fails = FailsOnce(connection_type.send_packed_command, redis.ConnectionError("gone"), False)
    monkeypatch.setattr(connection_type, "send_packed_command", fails.wrapper)
    got = wait.read(keys, 3, 10)
    assert fails.failed == 1
    assert [entry_id for entry_id, _ in got.batches[keys[0]]] == ids
    assert not got.whole
    assert in_use(client) == 0
