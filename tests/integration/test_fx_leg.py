"""The FX leg live, against a real redis-server: a symbol's `rho_*` equal a recompute from the lake
(which reads the FX series' lake partition) whether the FX stream runs ahead of, together with or
behind the symbol's; FX later than the wait gives `fx_late` snapshots that a recompute fills; FX
bars after t0 never change a value at t0; two instances (FX owned by one, the symbol by the
other) give the same outputs; kill -9 at random moments with both streams flowing loses
nothing."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

from s2feature.compute.batch import compute_batch
from s2feature.compute.correlation import RHO, RHO_Z
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import BarArrays, SeriesId, Snapshot, window_index
from s2feature.dqc.verdict import FX_LATE
from s2feature.jobs.recompute import RecomputeRequest, plan, run_recompute
from s2feature.lake.parquet import BarLake
from s2feature.observability.metrics import Metrics
from s2feature.service.runner import Service
from s2feature.service.settings import load_settings
from s2feature.service.worker import routing
from s2feature.store.sqlite import SqliteStore
from s2feature.streams.keys import cache_key, fx_bars_key
from tests.support import service_checks as checks
from tests.support.redis_servers import RedisServer, wait_for

pytestmark = pytest.mark.redis
SYM = SeriesId("binance", "fut", "BTCUSDT")
FX = SeriesId("max", "spot", "USDTTWD")
WINDOWS = "1m,5m"  # the 5m z-score needs 44 five-minute bars: 220 one-minute bars
N_BARS = 300
ROOT = Path(__file__).resolve().parents[2]
# Few required features, so that most snapshots of a short run pass and are emitted.
BUNDLE = ConfigBundle.model_validate(
    {"rev": "fx-test", "features": {"required": ["atr_14", "spread_bps", "depth_top1_usdt"]}}
)


def spec(series: SeriesId) -> str:
    return f"{series.venue}:{series.market}:{series.symbol}"


def env_for(server: RedisServer, tmp: Path, consumer: str = "c1", **extra: str) -> dict[str, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    bundle_file = tmp / "bundle.json"
    bundle_file.write_text(BUNDLE.model_dump_json())
    return {
        "S2_CONFIG_FILE": str(bundle_file),
        "S2_REDIS_ADDRESSES": f"127.0.0.1:{server.port}",
        "S2_SYMBOLS": f"{spec(SYM)},{spec(FX)}",
        "S2_WINDOWS": WINDOWS,
        "S2_CONSUMER_NAME": consumer,
        "S2_DB_SQLITE_PATH": str(tmp / f"{consumer}.db"),
        "S2_LAKE_DIR": str(tmp / "lake"),
        "S2_CHECKPOINT_MS": "200",
        "S2_LOG_LEVEL": "WARNING",
        **extra,
    }


def inputs(series: SeriesId, seed: int, n: int = N_BARS) -> tuple[BarArrays, list[dict[str, str]]]:
    bars = checks.input_bars(series, n, seed)
    return bars, checks.input_entries(series, bars, seed)


def add(client: redis.Redis, series: SeriesId, entries: Sequence[dict[str, str]]) -> None:
    for fields in entries:
        client.xadd(series.stream_key, fields, id=checks.input_entry_id(fields))  # type: ignore[arg-type]


def service_of(
    env: Mapping[str, str], metrics: Metrics | None = None
) -> tuple[Service, SqliteStore]:
    settings = load_settings(env)
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    client = redis.Redis(host="127.0.0.1", port=int(env["S2_REDIS_ADDRESSES"].split(":")[1]))
    lake = BarLake(Path(env["S2_LAKE_DIR"]))
    return Service(settings, client, store, lake, metrics=metrics), store


def run_burst(env: Mapping[str, str], metrics: Metrics | None = None) -> Service:
    service, store = service_of(env, metrics)
    try:
        service.run(idle_exit_s=0.3)
    finally:
        store.close()
        service.client.close()  # not left to the garbage collector (a warning in a later test)
    return service


class Running:
    """A service running in a thread until `stop`."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.service, self.store = service_of(env)
        self.thread = threading.Thread(target=self.service.run)
        self.thread.start()

    def waiting(self) -> bool:
        return self.service.workers[SYM.stream_key].fx_waiting

    def stop(self) -> None:
        self.service.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        self.store.close()
        self.service.client.close()


def delivered_all(client: redis.Redis, series: SeriesId, entries: Sequence[dict[str, str]]) -> bool:
    return checks.StreamProgress(client, series, entries).delivered_at_least(len(entries))


def expected(env: Mapping[str, str], series: SeriesId = SYM) -> list[Snapshot]:
    """A recompute from the lake: the symbol's bars, and the FX series' for its correlation."""
    lake = BarLake(Path(env["S2_LAKE_DIR"]))
    fx = lake.read(FX.symbol) if series != FX else None
    return compute_batch(lake.read(series.symbol), series, WINDOWS.split(","), BUNDLE, fx)


def rho_close(got: Any, want: Any) -> bool:
    if got is None or want is None:
        return got is want
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)


def assert_symbol_outputs_match(
    client: redis.Redis, env: Mapping[str, str], late_ok: bool = False
) -> list[dict[str, Any]]:
    """Every emit of the symbol equals the recompute with FX (`rho_*` included, to 1e-9, null
    exactly where it is null), apart from `fx_late` ones when `late_ok`, whose rho is null and
    whose DQC says so. Returns the emitted payloads."""
    want = [s for s in expected(env) if routing(s, True, False)[1]]
    got = checks.emitted(client, SYM.symbol)
    assert [eid for eid, _ in got] == [f"{s.t0}-{window_index(s.window)}" for s in want]
    for (_, payload), snap in zip(got, want, strict=True):
        if FX_LATE in payload["dqc"]["reasons"]:
            assert late_ok, f"fx_late at {snap.t0}"
            assert FX_LATE in payload["dqc"]["note"]
            assert payload["features"][RHO] is None
            assert payload["features"][RHO_Z] is None
            payload = {
                **payload,
                "features": {**payload["features"], RHO: snap.features[RHO]},
                "dqc": snap.dqc.to_dict(),
            }
            payload["features"][RHO_Z] = snap.features[RHO_Z]
        for name in (RHO, RHO_Z):
            assert rho_close(payload["features"][name], snap.features[name]), (
                name,
                snap.window,
                snap.t0,
                payload["features"][name],
                snap.features[name],
            )
        checks.assert_payload_matches(payload, snap)
    assert sum(s.features[RHO_Z] is not None for s in want) > 50  # the test means something
    return [payload for _, payload in got]


def assert_fx_outputs_match(client: redis.Redis, env: Mapping[str, str]) -> None:
    checks.assert_outputs_match_recompute(client, FX, env, BUNDLE)  # its own rho_* are null


# -- live vs recompute -------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["fx_first", "together", "fx_after"])
def test_live_rho_equals_a_recompute_whatever_stream_comes_first(
    redis_server: RedisServer, tmp_path: Path, order: str
) -> None:
    client = redis_server.client()
    env = env_for(redis_server, tmp_path, S2_FX_MAX_WAIT_MS="600000")
    sym_bars, sym_entries = inputs(SYM, 5)
    fx_bars, fx_entries = inputs(FX, 6)
    if order == "fx_first":
        add(client, FX, fx_entries)
        add(client, SYM, sym_entries)
        run_burst(env)
    elif order == "together":
        merged = sorted(
            [(int(f["ts"]), SYM, f) for f in sym_entries]
            + [(int(f["ts"]), FX, f) for f in fx_entries],
            key=lambda item: item[0],
        )
        for _, series, fields in merged:
            add(client, series, [fields])
        run_burst(env)
    else:
        # The symbol's bars become final first and wait; the FX follows, chunk by chunk.
        running = Running(env)
        try:
            chunk = 3 * 60  # entries of 60 bars
            waits = 0
            for start in range(0, len(sym_entries), chunk):
                add(client, SYM, sym_entries[start : start + chunk])
                wait_for(running.waiting, what="the symbol waiting for FX")
                waits += 1
                add(client, FX, fx_entries[start : start + chunk])
            wait_for(
                lambda: (
                    delivered_all(client, SYM, sym_entries)
                    and delivered_all(client, FX, fx_entries)
                    and not running.waiting()
                ),
                what="both streams consumed",
            )
            assert waits == 5
        finally:
            running.stop()
    assert_symbol_outputs_match(client, env)
    assert_fx_outputs_match(client, env)
    checks.assert_lake_holds_input_bars(env, SYM, sym_bars)
    checks.assert_lake_holds_input_bars(env, FX, fx_bars)
    # The FX owner published each final FX bar once, in order.
    published = [eid.decode() for eid, _ in client.xrange(fx_bars_key(FX.symbol))]  # type: ignore[union-attr]
    assert published == [f"{t}-0" for t in fx_bars.close_time[:-1].tolist()]


def test_fx_later_than_the_wait_gives_fx_late_snapshots_that_a_recompute_fills(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis_server.client()
    env = env_for(redis_server, tmp_path, S2_FX_MAX_WAIT_MS="50")
    _, sym_entries = inputs(SYM, 7)
    _, fx_entries = inputs(FX, 8)
    # Run 1: the FX stops after 120 bars while the symbol goes on to 250: those wait 50 ms each
    # and are made without FX. Run 2: the rest of both; the z-score there needs rhos of the
    # stretch the live run had no FX for.
    add(client, FX, fx_entries[: 3 * 120])
    add(client, SYM, sym_entries[: 3 * 250])
    registry = CollectorRegistry()
    first = run_burst(env, Metrics("test", registry))
    late = first.fx.gates[SYM.stream_key].late if first.fx is not None else 0
    assert late > 0
    counted = sum(
        registry.get_sample_value("s2_fx_late_total", {"symbol": SYM.symbol, "window": w}) or 0
        for w in WINDOWS.split(",")
    )
    assert counted == late
    add(client, FX, fx_entries[3 * 120 :])
    add(client, SYM, sym_entries[3 * 250 :])
    second = run_burst(env)
    # The bars still held when run 1 stopped wait again in run 2, with a fresh deadline: on a
    # loaded machine the FX stream's catch-up can miss it, so run 2 may add fx_late snapshots.
    late += second.fx.gates[SYM.stream_key].late if second.fx is not None else 0
    payloads = assert_symbol_outputs_match(client, env, late_ok=True)
    assert sum(FX_LATE in p["dqc"]["reasons"] for p in payloads) == late
    assert_fx_outputs_match(client, env)

    # A recompute (no force) rewrites exactly the fx_late snapshots, with their rho.
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    try:
        want = [s for s in expected(env) if routing(s, True, False)[0]]
        # The store holds each signal's last write: a snapshot made fx_late in run 1 and made
        # again, in time, from a replay in run 2 is stored with its rho (its first emit stays).
        stored_late = sum(FX_LATE in d["dqc"]["reasons"] for d in store.query_signals(SYM.symbol))
        assert 0 < stored_late <= late
        request = RecomputeRequest((SYM.symbol,), ("1m", "5m"), want[0].t0, want[-1].t0)
        task = plan(request, BarLake(Path(env["S2_LAKE_DIR"])), BUNDLE, {SYM.symbol: SYM})
        result = run_recompute(task, store, BarLake(Path(env["S2_LAKE_DIR"])), BUNDLE, "fill")
        assert result.signals_written == stored_late
        docs = store.query_signals(SYM.symbol)
        assert [d["signal_id"] for d in docs] == [s.signal_id for s in want]
        for doc, snap in zip(docs, want, strict=True):
            assert FX_LATE not in doc["dqc"]["reasons"]
            assert rho_close(doc["features"][RHO], snap.features[RHO])
            assert rho_close(doc["features"][RHO_Z], snap.features[RHO_Z])
        assert sum(d["mode"] == "recompute" for d in docs) == stored_late
    finally:
        store.close()


def test_fx_bars_after_t0_never_change_a_value_at_t0(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The FX stream runs far ahead of the symbol's; changing every FX bar after the symbol's
    last bar changes none of the symbol's outputs."""
    client = redis_server.client()
    _, sym_entries = inputs(SYM, 9, n=260)
    fx_bars, _ = inputs(FX, 10)
    cut = int(checks.input_bars(SYM, 260, 9).close_time[-1])
    columns = {name: np.array(col, copy=True) for name, col in fx_bars.__dict__.items()}
    after = columns["close_time"] > cut
    for name in ("open", "high", "low", "close", "mid", "best_bid", "best_ask"):
        columns[name][after] *= 1.5
    changed = BarArrays(**columns)
    runs = []
    for i, bars in enumerate((fx_bars, changed)):
        client.flushall()
        env = env_for(redis_server, tmp_path / f"run{i}", S2_FX_MAX_WAIT_MS="600000")
        add(client, FX, checks.input_entries(FX, bars, 10))  # the FX first: far ahead
        add(client, SYM, sym_entries)
        run_burst(env)
        assert_symbol_outputs_match(client, env)
        runs.append([checks.without_computed_at(p) for _, p in checks.emitted(client, SYM.symbol)])
    assert runs[0] == runs[1]
    assert sum(p["features"][RHO] is not None for p in runs[0]) > 100


# -- scaled out --------------------------------------------------------------------------------


def test_fx_owned_by_one_instance_and_the_symbol_by_another_equal_one_instance(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis_server.client()
    fx_env = env_for(redis_server, tmp_path, "fx-owner", S2_SYMBOLS=spec(FX))
    sym_env = env_for(redis_server, tmp_path, "sym-owner", S2_FX_MAX_WAIT_MS="600000")
    sym_bars, sym_entries = inputs(SYM, 11)
    fx_bars, fx_entries = inputs(FX, 12)
    fx_owner = Running(fx_env)
    sym_owner = None
    try:
        wait_for(lambda: FX.stream_key in fx_owner.service.owned, what="the FX lease")
        sym_owner = Running(sym_env)
        wait_for(lambda: SYM.stream_key in sym_owner.service.owned, what="the symbol's lease")
        assert sym_owner.service.owned == {SYM.stream_key}
        chunk = 3 * 50
        for start in range(0, len(sym_entries), chunk):
            add(client, SYM, sym_entries[start : start + chunk])  # the symbol first: it waits
            time.sleep(0.05)
            add(client, FX, fx_entries[start : start + chunk])
        wait_for(
            lambda: (
                delivered_all(client, SYM, sym_entries)
                and delivered_all(client, FX, fx_entries)
                and not sym_owner.waiting()
            ),  # type: ignore[union-attr]
            what="both streams consumed",
        )
        assert sym_owner.service.owned == {SYM.stream_key}
        assert fx_owner.service.owned == {FX.stream_key}
        # The symbol's bars waited, and the FX bars that let them through came from the stream
        # the FX owner publishes (no deadline can pass in this test).
        assert sym_owner.service.fx is not None
        assert sym_owner.service.fx.gates[SYM.stream_key].held_bars > 0
        assert sym_owner.service.fx.gates[SYM.stream_key].late == 0
    finally:
        if sym_owner is not None:
            sym_owner.stop()
        fx_owner.stop()
    assert_symbol_outputs_match(client, sym_env)  # the symbol's store is its owner's
    assert_fx_outputs_match(client, fx_env)
    checks.assert_lake_holds_input_bars(sym_env, SYM, sym_bars)
    checks.assert_lake_holds_input_bars(fx_env, FX, fx_bars)


# -- kill -9 -----------------------------------------------------------------------------------


def test_kill_9_at_random_moments_with_both_streams_flowing_loses_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis_server.client()
    env = env_for(redis_server, tmp_path, S2_FX_MAX_WAIT_MS="600000", S2_CHECKPOINT_MS="300")
    sym_bars, sym_entries = inputs(SYM, 13)
    fx_bars, fx_entries = inputs(FX, 14)
    child_env = {**os.environ, **env, "S2_CHECKPOINT_MS": "100"}
    rng = np.random.default_rng(3)
    stop = threading.Event()

    def produce() -> None:
        # Both streams keep arriving while the service is killed and restarted, the symbol's
        # chunk first, so kills land while its snapshots wait for FX, mid-batch, between
        # persist and ack...
        # The next chunk comes once the service (restarted as often as it takes) has read this
        # one, so input flows during all the kills whatever the start-up time.
        producer = redis_server.client()
        progress = checks.StreamProgress(producer, FX, fx_entries)
        for start in range(0, len(sym_entries), 60):
            add(producer, SYM, sym_entries[start : start + 60])
            time.sleep(0.2)  # the symbol's bars wait for these FX ones meanwhile
            add(producer, FX, fx_entries[start : start + 60])
            end = min(start + 60, len(fx_entries))
            while not stop.is_set() and not progress.delivered_at_least(end):
                time.sleep(0.02)
        producer.close()

    held_checkpoints = checkpoints = 0

    def watch() -> None:
        # Counts checkpoints that hold bars waiting for FX: the waiting state was checkpointed
        # (and the kills land among such states).
        nonlocal held_checkpoints, checkpoints
        watcher = redis_server.client()
        last = None
        while not stop.wait(0.02):
            raw = watcher.get(cache_key(SYM.symbol))
            if raw is not None and raw != last:
                last = raw
                checkpoints += 1
                held_checkpoints += bool(json.loads(raw).get("fx_held"))
        watcher.close()

    feeder = threading.Thread(target=produce)
    feeder.start()
    observer = threading.Thread(target=watch)
    observer.start()
    kills = 0
    try:
        for _ in range(5):
            proc = subprocess.Popen(
                [sys.executable, "-m", "s2feature.cli", "run"],
                env=child_env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            # Killed once it works (its start-up time varies a lot on a loaded machine): after
            # a checkpoint of its own, at a random moment.
            seen = checkpoints
            wait_for(
                lambda seen=seen: checkpoints > seen or not feeder.is_alive(),
                timeout_s=120,
                what="a checkpoint",
            )
            time.sleep(float(rng.uniform(0.0, 0.4)))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=30)
    finally:
        stop.set()
        feeder.join()
        observer.join()
    assert kills == 5
    assert held_checkpoints > 0
    assert client.xlen(SYM.stream_key) == len(sym_entries)
    assert client.xlen(FX.stream_key) == len(fx_entries)
    final = subprocess.run(
        [sys.executable, "-m", "s2feature.cli", "run", "--burst", "1"],
        env=child_env,
        cwd=ROOT,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert final.returncode == 0, final.stderr.decode()[-2000:]
    assert_symbol_outputs_match(client, env)
    assert_fx_outputs_match(client, env)
    checks.assert_lake_holds_input_bars(env, SYM, sym_bars)
    checks.assert_lake_holds_input_bars(env, FX, fx_bars)
    assert checks.pending_count(client, SYM) == 0


def test_a_redis_that_lost_the_published_fx_bars_and_checkpoints_warms_up_from_the_lake(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The FX closes come from the FX series' lake partition when neither `feat:fxbars` nor a
    checkpoint survived: the snapshots after the loss still equal a recompute."""
    client = redis_server.client()
    env = env_for(redis_server, tmp_path, S2_FX_MAX_WAIT_MS="600000")
    _, sym_entries = inputs(SYM, 15)
    _, fx_entries = inputs(FX, 16)
    half = 3 * 200
    add(client, FX, fx_entries[:half])
    add(client, SYM, sym_entries[:half])
    run_burst(env)
    for key in (fx_bars_key(FX.symbol), cache_key(SYM.symbol), cache_key(FX.symbol)):
        assert client.delete(key) == 1
    add(client, FX, fx_entries[half:])
    add(client, SYM, sym_entries[half:])
    run_burst(env)
    payloads = assert_symbol_outputs_match(client, env)
    after = [p for p in payloads if p["t0"] > int(sym_entries[half]["ts"])]
    assert sum(p["features"][RHO_Z] is not None for p in after) > 20
