"""The streaming service on a 3-master Redis Cluster: keys spread over the masters, live slot
migrations while events flow, a service waiting on a stream that moves, two instances sharing a
consumer group name, and reads whose reply is lost.

Outputs are read back from the cluster, the store and the lake and compared with a recompute from
the lake and with the generated input (tests/support/service_checks.py).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from s2feature.domain import BarArrays, SeriesId
from s2feature.lake.parquet import BarLake
from s2feature.service.retry import Backoff
from s2feature.service.runner import Service
from s2feature.service.settings import load_settings
from s2feature.store.sqlite import SqliteStore
from s2feature.streams.client import AnyRedis, connect
from s2feature.streams.keys import cache_key, events_key
from tests.support.redis_cluster import RedisClusterHarness, key_slot
from tests.support.redis_servers import RedisServer, blocked_readers, wait_for
from tests.support.service_checks import (
    StreamProgress,
    add_entries,
    assert_run_complete,
    input_bars,
    input_entries,
)

ROOT = Path(__file__).resolve().parents[2]
BTC = SeriesId("binance", "fut", "BTCUSDT")
ETH = SeriesId("binance", "fut", "ETHUSDT")
GROUP = "s2"
# 1,600 one-minute bars: the snapshots after the first day (1,440 bars) pass DQC and are emitted.
N_BARS = 1600
CHUNK = 60  # entries the producer adds between two looks at the service's progress
MAX_LAG = 400  # entries the producer may run ahead of the service, so both keep going together
WINDOW_PROGRESS = 300  # entries that must flow through the service while a slot migrates
SAFETY_S = 120.0  # a hung run fails instead of blocking the suite; never a speed assertion


def name_of(series: SeriesId) -> str:
    return f"{series.venue}:{series.market}:{series.symbol}"


def cluster_env(
    cluster: RedisClusterHarness, tmp: Path, symbols: Sequence[SeriesId], consumer: str
) -> dict[str, str]:
    return {
        "S2_REDIS_ADDRESSES": ",".join(f"{node.host}:{node.port}" for node in cluster.nodes),
        "S2_SYMBOLS": ",".join(name_of(s) for s in symbols),
        "S2_CONSUMER_GROUP": GROUP,
        "S2_CONSUMER_NAME": consumer,
        "S2_DB_SQLITE_PATH": str(tmp / "s2.db"),
        "S2_LAKE_DIR": str(tmp / "lake"),
        "S2_LOG_LEVEL": "WARNING",
    }


def asking_calls(node: RedisServer) -> int:
    """How many ASKING commands (sent before a command redirected by ASK) a node has served."""
    stats: Any = node.execute("INFO", "commandstats")
    return int(stats.get("cmdstat_asking", {}).get("calls", 0))


class Background(threading.Thread):
    """A thread running `target`; `check()` re-raises in the test thread what it raised."""

    def __init__(self, name: str, target: Callable[[], object]) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:  # handed to the test thread by check()
            self.error = exc

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"{self.name} failed") from self.error

    def finish(self) -> None:
        self.join(timeout=SAFETY_S)
        assert not self.is_alive(), f"{self.name} did not finish"
        self.check()


def wait_while_running(condition: Callable[[], bool], what: str, *threads: Background) -> None:
    """Wait for `condition`, failing at once (with its error) when one of `threads` died."""

    def done() -> bool:
        for thread in threads:
            thread.check()
        return condition()

    wait_for(done, timeout_s=SAFETY_S, what=what)


def open_service(env: dict[str, str], client: AnyRedis | None = None) -> Service:
    settings = load_settings(env)
    return Service(
        settings,
        client if client is not None else connect(settings.redis),
        SqliteStore(Path(env["S2_DB_SQLITE_PATH"])),
        BarLake(Path(env["S2_LAKE_DIR"])),
    )


def close_service(service: Service) -> None:
    for worker in service.workers.values():
        worker.store.close()
    service.client.close()


class ServiceThreads:
    """In-process services on their own threads, stopped at the end of the test whatever its
    outcome (the `services` fixture)."""

    def __init__(self, cluster: RedisClusterHarness) -> None:
        self.cluster = cluster
        self.running: dict[int, tuple[Service, Background]] = {}

    def start(self, env: dict[str, str], client: AnyRedis | None = None) -> Background:
        service = open_service(env, client)
        thread = Background(f"service {env['S2_CONSUMER_NAME']}", service.run)
        self.running[id(thread)] = service, thread
        thread.start()
        return thread

    def stop(self, thread: Background) -> None:
        """Stop a service (its final flush acks what it committed), close it, re-raise its
        error."""
        service, _ = self.running.pop(id(thread))
        service.stop.set()

        def ended() -> bool:
            # A read parked in XREADGROUP BLOCK sees the stop flag only when it returns.
            for node in self.cluster.nodes:
                for client_id in blocked_readers(node):
                    node.execute("CLIENT", "UNBLOCK", client_id)
            return not thread.is_alive()

        wait_for(ended, timeout_s=SAFETY_S, what=f"{thread.name} to stop")
        close_service(service)
        thread.check()

    def stop_all(self) -> None:
        for _, thread in list(self.running.values()):
            self.stop(thread)


@pytest.fixture
def services(redis_cluster: RedisClusterHarness) -> Iterator[ServiceThreads]:
    threads = ServiceThreads(redis_cluster)
    yield threads
    threads.stop_all()


def run_cli(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "s2feature.cli", "run", "--burst", "1"],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def assert_cli_succeeded(process: subprocess.Popen[bytes]) -> None:
    _, stderr = process.communicate(timeout=SAFETY_S)
    assert process.returncode == 0, stderr.decode()[-2000:]


# -- spread over the masters ------------------------------------------------------------------


def test_two_symbols_on_different_masters_give_outputs_equal_to_a_recompute(
    redis_cluster: RedisClusterHarness, tmp_path: Path
) -> None:
    keys = (BTC.stream_key, events_key(BTC.symbol), ETH.stream_key, events_key(ETH.symbol))
    owners = {redis_cluster.node_for_slot(key_slot(k)) for k in keys}
    assert len({key_slot(k) for k in keys}) == 4
    assert owners == {0, 1, 2}  # every master holds a stream the service reads or writes
    client = redis_cluster.client()
    data: dict[SeriesId, tuple[BarArrays, list[dict[str, str]]]] = {}
    for seed, series in enumerate((BTC, ETH), start=11):
        bars = input_bars(series, N_BARS, seed)
        data[series] = bars, input_entries(series, bars, seed)
        add_entries(client, series, data[series][1])
    env = cluster_env(redis_cluster, tmp_path, (BTC, ETH), "node-a")

    assert_cli_succeeded(run_cli(env))

    for series, (bars, entries) in data.items():
        assert_run_complete(client, series, env, bars, entries)


# -- slot migration while events flow ---------------------------------------------------------


@pytest.mark.parametrize(
    "moved_key",
    [BTC.stream_key, events_key(BTC.symbol), cache_key(BTC.symbol)],
    ids=["input-stream", "output-stream", "checkpoint"],
)
def test_slot_migration_while_events_flow_loses_and_duplicates_nothing(
    redis_cluster: RedisClusterHarness, services: ServiceThreads, tmp_path: Path, moved_key: str
) -> None:
    bars = input_bars(BTC, 1800, seed=41)  # 5,400 entries; emits start after entry ~4,320
    entries = input_entries(BTC, bars, seed=41)
    env = cluster_env(redis_cluster, tmp_path, (BTC,), "svc-1")
    observer = redis_cluster.client()
    progress = StreamProgress(observer, BTC, entries)
    sent = [0]
    # The producer holds the last entries back until the slot is mid-migration, so input is
    # guaranteed to flow through the ASK window however fast the service drains the first part
    # (without the hold, a fast service had consumed everything before the key first existed).
    held_back_from = len(entries) - 3 * WINDOW_PROGRESS
    migrating = threading.Event()

    def produce() -> None:
        producer = redis_cluster.client()
        seen = StreamProgress(producer, BTC, entries)
        for start in range(0, len(entries), CHUNK):
            if start >= held_back_from:
                assert migrating.wait(SAFETY_S), "the migration never started"
            wait_for(
                partial(seen.delivered_at_least, start - MAX_LAG),
                timeout_s=SAFETY_S,
                what="the service to catch up",
            )
            add_entries(producer, BTC, entries[start : start + CHUNK])
            sent[0] = min(start + CHUNK, len(entries))

    serving = services.start(env)
    producing = Background("producer", produce)
    producing.start()
    out_key = events_key(BTC.symbol)
    # Move once the key exists and, for the output stream, emits are flowing into it.
    wait_while_running(
        lambda: (
            bool(observer.exists(moved_key))
            and (moved_key != out_key or observer.xlen(out_key) > 0)
        ),
        f"{moved_key} to be written",
        serving,
        producing,
    )
    slot = key_slot(moved_key)
    source = redis_cluster.node_for_slot(slot)
    target = (source + 1) % len(redis_cluster.nodes)
    in_window: list[tuple[int, int, int]] = []  # (acked, produced) during it, entries left before

    def keep_flowing(_moved: int) -> None:
        # The key is on the target and the slot still migrating: the source answers every
        # command on it with ASK. Entries keep arriving and the service must keep acking them
        # (and, for the output stream, emitting) before the migration is allowed to finish.
        migrating.set()
        acked, produced, emits = progress.acked(), sent[0], observer.xlen(out_key)
        want_acked = min(acked + WINDOW_PROGRESS, len(entries))
        want_sent = min(produced + WINDOW_PROGRESS, len(entries))
        wait_while_running(
            lambda: (
                progress.acked() >= want_acked
                and sent[0] >= want_sent
                and (moved_key != out_key or observer.xlen(out_key) > emits)
            ),
            "progress during the migration",
            serving,
            producing,
        )
        in_window.append((progress.acked() - acked, sent[0] - produced, len(entries) - produced))

    asked_before = asking_calls(redis_cluster.nodes[target])
    redis_cluster.migrate_slot(slot, target, batch=10, after_batch=keep_flowing)

    producing.finish()
    wait_while_running(
        lambda: progress.delivered_and_pending() == (len(entries), 0),
        "every entry consumed and acked",
        serving,
    )
    services.stop(serving)
    assert redis_cluster.node_for_slot(slot) == target
    assert redis_cluster.nodes[target].execute("EXISTS", moved_key) == 1
    assert in_window, "the migration moved no key while the service ran"
    assert in_window[0][2] >= 3 * WINDOW_PROGRESS  # the held-back input was still to come
    # Wherever input was left to send, it was sent and consumed during the ASK window.
    assert all(acked > 0 and produced > 0 for acked, produced, left in in_window if left > 0)
    assert asking_calls(redis_cluster.nodes[target]) > asked_before  # ASK redirects were followed
    assert_run_complete(observer, BTC, env, bars, entries)


def test_a_service_blocked_on_its_input_stream_follows_it_to_another_master(
    redis_cluster: RedisClusterHarness,
    services: ServiceThreads,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bars = input_bars(BTC, N_BARS, seed=43)
    entries = input_entries(BTC, bars, seed=43)
    # A 30 s block keeps the read parked on the source from the moment it is seen there until
    # its key has moved away under it; `services.stop` ends the last one with CLIENT UNBLOCK.
    env = {
        **cluster_env(redis_cluster, tmp_path, (BTC,), "svc-1"),
        "S2_BLOCK_MS": "30000",
        "S2_CLAIM_IDLE_MS": "120000",  # the stream lease must outlast the blocked read
    }
    slow_reads = RedisCluster(startup_nodes=redis_cluster.startup_nodes, socket_timeout=60)
    slot = key_slot(BTC.stream_key)
    source = redis_cluster.node_for_slot(slot)
    caplog.set_level(logging.WARNING, logger="s2feature.service")
    serving = services.start(env, slow_reads)
    wait_while_running(
        lambda: bool(blocked_readers(redis_cluster.nodes[source])),
        "the service to wait on its stream",
        serving,
    )

    redis_cluster.migrate_slot(slot, (source + 1) % len(redis_cluster.nodes))
    add_entries(redis_cluster.client(), BTC, entries)

    progress = StreamProgress(redis_cluster.client(), BTC, entries)
    wait_while_running(
        lambda: progress.delivered_and_pending() == (len(entries), 0), "entries acked", serving
    )
    services.stop(serving)
    # The parked read failed with UNBLOCKED when its key left, and was retried on the new owner.
    assert any("UNBLOCKED" in r.getMessage() for r in caplog.records)
    assert_run_complete(redis_cluster.client(), BTC, env, bars, entries)


# -- two instances --------------------------------------------------------------------------


def test_two_instances_with_disjoint_symbols_and_one_group_name_do_not_interfere(
    redis_cluster: RedisClusterHarness, tmp_path: Path
) -> None:
    client = redis_cluster.client()
    data: dict[SeriesId, tuple[BarArrays, list[dict[str, str]]]] = {}
    for seed, series in enumerate((BTC, ETH), start=21):
        bars = input_bars(series, N_BARS, seed)
        data[series] = bars, input_entries(series, bars, seed)
        add_entries(client, series, data[series][1])
    # One SQLite file and one lake directory for both, as on a single host.
    env_a = cluster_env(redis_cluster, tmp_path, (BTC,), "instance-a")
    env_b = cluster_env(redis_cluster, tmp_path, (ETH,), "instance-b")

    both = [run_cli(env_a), run_cli(env_b)]
    # Wait for both before asserting, so a failure of one does not leave the other running.
    stderrs = [process.communicate(timeout=SAFETY_S)[1] for process in both]
    for process, stderr in zip(both, stderrs, strict=True):
        assert process.returncode == 0, stderr.decode()[-2000:]

    for series, env, consumer in ((BTC, env_a, "instance-a"), (ETH, env_b, "instance-b")):
        groups: Any = client.xinfo_groups(series.stream_key)
        consumers: Any = client.xinfo_consumers(series.stream_key, GROUP)
        assert [g["name"].decode() for g in groups] == [GROUP]
        assert [c["name"].decode() for c in consumers] == [consumer]
        assert_run_complete(client, series, env, *data[series])
    store = SqliteStore(tmp_path / "s2.db")
    stored_symbols = {d["symbol"] for s in (BTC, ETH) for d in store.query_signals(s.symbol)}
    total = sum(len(store.query_signals(s.symbol)) for s in (BTC, ETH))
    assert store.count_signals() == total  # nothing stored under any other symbol
    store.close()
    assert stored_symbols == {"BTCUSDT", "ETHUSDT"}


# -- lost read replies ----------------------------------------------------------------------


class LosesReadReplies(RedisCluster):
    """A cluster client that loses the reply of every `every`-th read of new entries *after*
    Redis executed it, as a socket timeout during a node stall does: the entries are delivered
    to the consumer but never seen. `resend` then re-sends the read at once, as redis-py's own
    retry does; otherwise the timeout reaches the caller. Reads come alone (blocking) or
    pipelined with the pending check (the service's usual read); both are covered."""

    def __init__(self, every: int, resend: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.every = every
        self.resend = resend
        self.new_reads = 0
        self.lost_entries = 0

    def _lose_this_read(self) -> bool:
        self.new_reads += 1
        return self.new_reads % self.every == 0

    def _lost(self, reply: Any) -> None:
        self.lost_entries += sum(len(batch) for _, batch in reply or [])
        if not self.resend:
            raise redis.TimeoutError("Timeout reading from socket (injected)")

    def xreadgroup(self, *args: Any, **kwargs: Any) -> Any:
        if ">" in args[2].values() and self._lose_this_read():
            self._lost(super().xreadgroup(*args, **kwargs))
        return super().xreadgroup(*args, **kwargs)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        return _LossyPipeline(self, partial(super().pipeline, *args, **kwargs))


class _LossyPipeline:
    """Queues commands like a pipeline; `execute` runs them on a real one, and loses the first
    run's reply when it holds a read of new entries that `LosesReadReplies` picks."""

    def __init__(self, client: LosesReadReplies, make: Callable[[], Any]) -> None:
        self._client = client
        self._make = make
        self._calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Callable[..., _LossyPipeline]:
        def queue(*args: Any, **kwargs: Any) -> _LossyPipeline:
            self._calls.append((name, args, kwargs))
            return self

        return queue

    def _run(self, **kwargs: Any) -> list[Any]:
        pipe = self._make()
        for name, args, call_kwargs in self._calls:
            getattr(pipe, name)(*args, **call_kwargs)
        return list(pipe.execute(**kwargs))

    def execute(self, **kwargs: Any) -> list[Any]:
        reads = [i for i, (name, args, _) in enumerate(self._calls) if name == "xreadgroup"]
        if any(">" in self._calls[i][1][2].values() for i in reads) and (
            self._client._lose_this_read()
        ):
            replies = self._run(**kwargs)
            self._client._lost([batch for i in reads for batch in replies[i] or []])
        return self._run(**kwargs)


@pytest.mark.parametrize("resend", [True, False], ids=["resent-by-the-client", "surfaced"])
def test_entries_delivered_by_a_read_whose_reply_was_lost_are_processed_in_order(
    redis_cluster: RedisClusterHarness, tmp_path: Path, resend: bool
) -> None:
    bars = input_bars(BTC, N_BARS, seed=51)
    entries = input_entries(BTC, bars, seed=51)
    client = redis_cluster.client()
    add_entries(client, BTC, entries)
    env = cluster_env(redis_cluster, tmp_path, (BTC,), "svc-1")
    lossy = LosesReadReplies(
        every=3, resend=resend, startup_nodes=redis_cluster.startup_nodes, socket_timeout=5
    )
    service = open_service(env, lossy)

    service.run(idle_exit_s=0.3)

    close_service(service)
    assert lossy.lost_entries > 0  # the fault really swallowed delivered entries
    assert_run_complete(client, BTC, env, bars, entries)


# -- which errors are retried ---------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.SlotNotCoveredError("Slot 14596 not covered by the cluster"),
        redis.exceptions.ClusterError("TTL exhausted."),
        redis.exceptions.ClusterDownError("The cluster is down"),
        redis.exceptions.AskError("14596 127.0.0.1:7001"),
        redis.exceptions.TryAgainError("Multiple keys request during rehashing of slot"),
        redis.ResponseError("UNBLOCKED the stream key no longer exists"),
    ],
    ids=[
        "slot-not-covered",
        "redirect-ttl-exhausted",
        "cluster-down",
        "ask",
        "tryagain",
        "unblocked",
    ],
)
def test_transient_cluster_errors_are_retried(error: Exception) -> None:
    calls: list[int] = []

    def fails_once() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return "done"

    assert Backoff(threading.Event(), base_s=0.001).call("op", fails_once) == "done"
    assert len(calls) == 2


def test_a_command_error_is_not_retried() -> None:
    def wrong_type() -> str:
        raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")

    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        Backoff(threading.Event(), base_s=0.001).call("op", wrong_type)
