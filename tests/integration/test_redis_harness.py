"""The Redis test harness itself: real servers that can be killed, restarted and re-sharded."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import cast

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from tests.support.redis_cluster import RedisClusterHarness, even_slot_ranges
from tests.support.redis_servers import (
    SHARED_PORT,
    RedisBinaryNotFoundError,
    RedisServer,
    RedisServerFactory,
    locate_redis_server,
    pid_exists,
    wait_for,
)

pytestmark = pytest.mark.redis

StreamEntry = tuple[bytes, dict[bytes, bytes]]


def _stream_entries(client: redis.Redis, key: str) -> list[StreamEntry]:
    """All entries of a stream, read with `XRANGE` (bytes replies)."""
    return cast(list[StreamEntry], client.xrange(key))


# -- standalone server ------------------------------------------------------------------------


def test_server_answers_on_its_own_port(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.set("greeting", "hello")

    assert redis_server.port != SHARED_PORT
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    with redis.Redis.from_url(redis_server.url) as by_url:
        assert by_url.get("greeting") == b"hello"


def test_kill_and_restart_keeps_acknowledged_writes_with_appendonly(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    ids = [client.xadd("mkt:events:x:spot:BTCUSDT", {"seq": i}) for i in range(50)]
    client.set("last", "49")
    port, old_pid = redis_server.port, redis_server.pid

    redis_server.kill()

    assert not redis_server.is_running
    assert old_pid is not None
    assert not pid_exists(old_pid)
    with pytest.raises(redis.ConnectionError):
        redis_server.client(socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)).ping()

    redis_server.restart()

    assert redis_server.port == port
    reader = redis_server.client()
    entries = _stream_entries(reader, "mkt:events:x:spot:BTCUSDT")
    assert [entry_id for entry_id, _ in entries] == ids
    assert [int(fields[b"seq"]) for _, fields in entries] == list(range(50))
    assert reader.get("last") == b"49"


def test_kill_and_restart_loses_data_without_appendonly(
    redis_server_factory: RedisServerFactory,
) -> None:
    server = redis_server_factory(appendonly=False)
    server.client().set("volatile", "1")

    server.kill()
    server.restart()

    # --save "" and no AOF: nothing was persisted, so the restarted server is empty.
    assert server.client().dbsize() == 0


def test_graceful_stop_and_restart_keeps_data_with_appendonly(redis_server: RedisServer) -> None:
    redis_server.client().hset("h", mapping={"a": "1", "b": "2"})

    redis_server.stop()
    redis_server.restart()

    assert redis_server.client().hgetall("h") == {b"a": b"1", b"b": b"2"}


def _fail_while_running(server: RedisServer, seen_pids: list[int | None]) -> None:
    with server:
        seen_pids.append(server.pid)
        raise RuntimeError("test body failed")


def test_context_exit_on_error_leaves_no_process(redis_server_bin: Path, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", binary=redis_server_bin)
    seen_pids: list[int | None] = []

    with pytest.raises(RuntimeError, match="test body failed"):
        _fail_while_running(server, seen_pids)

    [pid] = seen_pids
    assert pid is not None
    assert not pid_exists(pid)
    assert not server.is_running


def test_close_is_idempotent_and_stops_the_process(redis_server_bin: Path, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", binary=redis_server_bin).start()
    pid = server.pid

    server.close()
    server.close()

    assert pid is not None
    assert not pid_exists(pid)


def test_locate_redis_server_fails_clearly_without_binary(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(RedisBinaryNotFoundError, match=r"redis-server.*not found on PATH"):
        locate_redis_server()


# -- cluster ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("masters", "expected"),
    [
        # 16384 / 3 = 5461.33: boundaries round(0), round(5461.33), round(10922.67), 16384.
        (3, [(0, 5460), (5461, 10922), (10923, 16383)]),
        (2, [(0, 8191), (8192, 16383)]),
        (1, [(0, 16383)]),
    ],
    ids=["three-masters-like-redis-cli", "two-masters", "one-master"],
)
def test_even_slot_ranges_cover_all_slots(masters: int, expected: list[tuple[int, int]]) -> None:
    assert even_slot_ranges(masters) == expected


def test_cluster_reaches_ok_with_every_slot_on_its_home_node(
    redis_cluster: RedisClusterHarness,
) -> None:
    for index in range(3):
        info = redis_cluster.cluster_info(index)
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_assigned"] == "16384"
        assert info["cluster_known_nodes"] == "3"
        assert info["cluster_size"] == "3"
    assert [redis_cluster.node_for_slot(s) for s in (0, 5460, 5461, 10922, 10923, 16383)] == [
        0, 0, 1, 1, 2, 2,
    ]  # fmt: skip
    assert len(set(redis_cluster.node_ids)) == 3
    assert all(node.port != SHARED_PORT for node in redis_cluster.nodes)


@pytest.mark.parametrize(
    "key",
    ["plain", "{user1000}.following", "{user1000}.followers", "foo{}{bar}", "foo{{bar}}zap", "{"],
    ids=["no-tag", "tag-a", "tag-b", "empty-tag-ignored", "nested-braces", "lone-brace"],
)
def test_key_slot_matches_the_server(redis_cluster: RedisClusterHarness, key: str) -> None:
    assert redis_cluster.key_slot(key) == redis_cluster.nodes[0].execute("CLUSTER", "KEYSLOT", key)


def test_cluster_client_routes_keys_to_every_node(redis_cluster: RedisClusterHarness) -> None:
    client = redis_cluster.client()
    keys = [f"k{i}" for i in range(60)]
    for key in keys:
        client.set(key, key)

    counts = [node.client().dbsize() for node in redis_cluster.nodes]

    assert sum(counts) == 60
    assert all(count > 0 for count in counts)
    assert [client.get(key) for key in keys] == [key.encode() for key in keys]


def test_migrate_slot_moves_every_key_and_the_ownership(
    redis_cluster: RedisClusterHarness,
) -> None:
    client = redis_cluster.client()
    slot = redis_cluster.key_slot("{moving}")
    source = redis_cluster.node_for_slot(slot)
    target = (source + 1) % 3
    for i in range(250):
        client.set(f"{{moving}}:{i}", i)
    batches: list[int] = []

    redis_cluster.migrate_slot(slot, target, batch=100, after_batch=batches.append)

    # 250 keys in batches of 100: 100, 200, then the last 50.
    assert batches == [100, 200, 250]
    assert redis_cluster.node_for_slot(slot) == target
    assert all(slot not in redis_cluster.claimed_slots(i) for i in range(3) if i != target)
    assert redis_cluster.nodes[source].execute("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    assert redis_cluster.nodes[target].execute("CLUSTER", "COUNTKEYSINSLOT", slot) == 250
    assert [client.get(f"{{moving}}:{i}") for i in range(250)] == [
        str(i).encode() for i in range(250)
    ]


def test_reset_empties_the_cluster_and_brings_slots_home(
    redis_cluster: RedisClusterHarness,
) -> None:
    slot = redis_cluster.key_slot("{away}")
    home = redis_cluster.node_for_slot(slot)
    redis_cluster.client().set("{away}:k", "v")
    redis_cluster.migrate_slot(slot, (home + 1) % 3)
    redis_cluster.nodes[2].kill()

    redis_cluster.reset()

    assert redis_cluster.is_ok()
    assert redis_cluster.node_for_slot(slot) == home
    assert [node.client().dbsize() for node in redis_cluster.nodes] == [0, 0, 0]


class _StreamWriter(threading.Thread):
    """XADDs `seq = 0, 1, 2, ...` to one stream through a shared `RedisCluster` client until
    stopped, remembering each returned entry ID and any error."""

    def __init__(self, client: RedisCluster, stream: str) -> None:
        super().__init__(name="stream-writer", daemon=True)
        self._client = client
        self._stream = stream
        self._stop_requested = threading.Event()
        self.returned_ids: list[bytes] = []
        self.error: BaseException | None = None

    @property
    def written(self) -> int:
        return len(self.returned_ids)

    def run(self) -> None:
        try:
            while not self._stop_requested.is_set():
                entry_id = self._client.xadd(self._stream, {"seq": self.written})
                assert isinstance(entry_id, bytes)
                self.returned_ids.append(entry_id)
        except BaseException as error:  # reported by the test thread
            self.error = error

    def stop(self) -> None:
        self._stop_requested.set()
        self.join(timeout=30)

    def wait_for_more(self, count: int) -> None:
        """Block until `count` more entries were written (or the writer failed)."""
        goal = self.written + count
        wait_for(
            lambda: self.written >= goal or self.error is not None or not self.is_alive(),
            what=f"{goal} writes",
        )
        assert self.error is None, f"writer failed: {self.error!r}"


def test_stream_written_during_slot_migration_keeps_every_entry_once(
    redis_cluster: RedisClusterHarness,
) -> None:
    stream = "{s2-migration}:stream"
    slot = redis_cluster.key_slot(stream)
    source = redis_cluster.node_for_slot(slot)
    target = (source + 1) % 3
    client = redis_cluster.client()
    # Other keys in the same slot make the migration take several batches, so the writer keeps
    # writing while the slot is MIGRATING: to the source before the stream moves, through
    # ASK + ASKING to the target after.
    client.mset({f"{{s2-migration}}:filler:{i}": i for i in range(400)})
    writer = _StreamWriter(client, stream)
    writer.start()
    try:
        writer.wait_for_more(50)
        redis_cluster.migrate_slot(
            slot, target, batch=50, after_batch=lambda _moved: writer.wait_for_more(20)
        )
        writer.wait_for_more(50)  # after SETSLOT NODE: MOVED, slot-cache refresh
    finally:
        writer.stop()

    assert writer.error is None, f"writer failed: {writer.error!r}"
    assert not writer.is_alive()
    # Read back from the node that now owns the slot, not through the client that wrote.
    assert redis_cluster.node_for_slot(slot) == target
    owner = redis_cluster.nodes[target].client()
    entries = _stream_entries(owner, stream)
    seqs = [int(fields[b"seq"]) for _, fields in entries]
    assert seqs == list(range(writer.written)), "every written entry exactly once, in order"
    assert [entry_id for entry_id, _ in entries] == writer.returned_ids
    # 401 keys in batches of 50 = 9 batches with 20+ writes after each: the writes overlapped
    # the migration.
    assert writer.written >= 50 + 9 * 20 + 50
    assert redis_cluster.nodes[source].execute("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    assert redis_cluster.nodes[target].execute("CLUSTER", "COUNTKEYSINSLOT", slot) == 401
