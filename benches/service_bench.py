"""End-to-end figures for the streaming service, measured in one run and printed with ratios.

Run by `make bench` after `benches/run.py`. Figures, never assertions: the machine is shared and
noisy. `--profile` adds a cProfile breakdown of both service runs.

1. Floor: a loop of `XREADGROUP` (COUNT 200), `decode_entry` of each entry and `XACK`, nothing
   else, over the pre-loaded entries (best of a few passes, each with its own consumer group).
2. Throughput of the in-process `Service` in burst mode over the same entries (SQLite store and
   Parquet lake in a temp dir), as a ratio to the floor: best of a few runs too, each from a cold
   start with its own consumer group, files and outputs, so that both sides of the ratio are
   taken the same way on a noisy machine.
3. Compute latency (SPEC `s2_compute_latency_ms`): each `SymbolEngine.on_base_bar` call of the
   fastest run that produced snapshots.
4. End-to-end latency at a steady rate: a producer thread XADDs entries while `s2-feature run`
   serves them from its own process, on the state the burst run left (a warm engine: snapshots
   pass DQC at once); a listener thread stamps each `feat:events` entry when XREAD BLOCK returns
   it. Latency = that stamp minus the stamp taken just before the XADD of the entry that
   finalised the snapshot's bar. First with 3-4 entries per bar (about 100 bar closes per second
   per stream), then with one bar close per second per stream (still 60 times the live rate).
   The service has its own process because threads in its interpreter would wait for its GIL
   (up to the 5 ms switch interval) before stamping: that would measure the benchmark.
5. Floor and service throughput again, over streams of 333 entries per bar (the paced runs'
   second density), on a Redis server of their own. Still 60 times denser in bars than the
   original requirement's 1,000 msg/s over 3 symbols at the live rate (about 20,000 entries per
   one-minute bar), where the engine, store and emits share even less of the work.
6. Burst throughput with `S2_REDIS_MIN_REPLICAS` 0 and then 1 on a server with one replica:
   the cost of waiting for the replica before each checkpoint (`--replicas-only` runs just this).
7. The cost of observing: burst throughput with metrics off, metrics on, and metrics with traces
   sampled at 0, 0.01 and 1.0 (exported over OTLP/HTTP to a receiver on loopback that reads and
   drops them), as ratios to metrics off (`--observability-only` runs just this).
8. The FX leg: floor, burst throughput and end-to-end latency (3-4 entries per bar) of the
   three streams over one common stretch of time, without and then with a fourth stream, the
   FX series (`rho.fx_symbol`, same density, its bars closing with theirs), so that every
   symbol's snapshots compute `rho_*` and pass the FX barrier (`--fx-only` runs just this).
   The target compares those two (FX off: three streams; FX on: four, one of them the FX
   series). A third run, printed apart, takes the same four streams with the fourth under
   another name (`FXPLAIN`: the same data and density, an ordinary symbol, so no FX leg): the
   cost of the leg itself (barrier, correlation, published FX bars), without that of serving a
   fourth stream (a third more entries per second in the paced phase). With FX on, latency is
   also given from the later of the symbol's and the FX series' finalising entries: a
   snapshot at t0 cannot be emitted before the FX entry that finalises the FX bar closing at
   t0, which the producer sends after the symbols' entries of the same round.

Input: three fut streams of flat S1 entries, each a different stretch of the real Coinbase
BTC/USD hourly bars split into 1-minute bars and ticks by the seeded `s2feature.data.synth`.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import http.server
import io
import logging
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the Redis server harness lives in `tests.support`

from tests.support.redis_servers import RedisServer, wait_for  # noqa: E402

import s2feature.service.worker as worker_module  # noqa: E402
from s2feature.compute.engine import SymbolEngine  # noqa: E402
from s2feature.config.bundle import ConfigBundle  # noqa: E402
from s2feature.data.importers import load_klines  # noqa: E402
from s2feature.data.synth import derive_finer_bars, derive_ticks, events_from_bars  # noqa: E402
from s2feature.domain import WINDOWS, Bar, SeriesId, Snapshot  # noqa: E402
from s2feature.ingest.decode import decode_entry  # noqa: E402
from s2feature.ingest.stream import StreamIngestor  # noqa: E402
from s2feature.lake.parquet import BarLake  # noqa: E402
from s2feature.observability.metrics import Metrics  # noqa: E402
from s2feature.observability.tracing import SignalTracer, otlp_tracer_provider  # noqa: E402
from s2feature.service.observe import BatchObserver  # noqa: E402
from s2feature.service.process import quiet_garbage_collector  # noqa: E402
from s2feature.service.runner import Service  # noqa: E402
from s2feature.service.settings import load_settings  # noqa: E402
from s2feature.store.sqlite import SqliteStore  # noqa: E402
from s2feature.streams.client import connect  # noqa: E402
from s2feature.streams.keys import events_key  # noqa: E402

# Stand-in names: each stream is its own stretch of the real BTC/USD data, not another coin.
SYMBOLS = (("BTCUSDT", 3), ("ETHUSDT", 4), ("SOLUSDT", 3))  # (symbol, pre-loaded entries/bar)
SERVICE_WINDOWS = "1m,5m,1h"
BATCH = 200
MINUTE_MS = 60_000
# Lake history of the sparse streams: a day and a bit, so that snapshots pass DQC from the start.
HISTORY_BARS = 1_500
# A fresh pair (metrics, tracer) for each burst run; either may be None (off).
Observers = Callable[[], tuple[Metrics | None, SignalTracer | None]]

# (label, module file, functions): the steps of the service loop, for the `--profile` breakdown.
PROFILE_STEPS = (
    ("XREADGROUP + reply parsing (and idle blocking)", "redis_io.py", ("read",)),
    ("decode, DQC checks, bar assembly", "worker.py", ("_ingest",)),
    ("features (SymbolEngine.on_base_bar)", "engine.py", ("on_base_bar",)),
    ("routing: payloads, store checks, JSON (once)", "worker.py", ("_route",)),
    ("  of which snapshot payloads", "domain.py", ("to_payload",)),
    ("lake append (a Parquet part + 2 fsyncs per call)", "parquet.py", ("append",)),
    ("  of which part compaction", "parquet.py", ("_compact_locked",)),
    ("store upserts (SQLite)", "sqlite.py", ("upsert_signals", "upsert_strategy_events")),
    ("emits and feat:last (one script call)", "redis_io.py", ("publish",)),
    ("checkpoint + XACK (SeriesWorker.flush)", "worker.py", ("flush",)),
    ("  of which checkpoints written", "redis_io.py", ("save_checkpoint",)),
)


@dataclass(frozen=True)
class Segment:
    """Consecutive entries of one stream; the first opens base bar `first_bar`."""

    entries: list[dict[str, str]]
    per_bar: int
    first_bar: int


@dataclass(frozen=True)
class StreamInput:
    series: SeriesId
    close_time: npt.NDArray[np.int64]  # of every base bar of the stream
    segments: tuple[Segment, ...]  # pre-loaded, then one per paced phase


def build_inputs(
    preload: int, paced: int, live_per_bar: int, venue: str = "bench"
) -> list[StreamInput]:
    """Per stream: `preload` entries, then `paced` entries at the pre-loaded density, then
    `paced` entries at `live_per_bar` entries per bar. Every segment ends on a whole bar, which
    the first entry of the next segment finalises."""
    plans = []
    for _symbol, per_bar in SYMBOLS:
        plan = [(preload // per_bar, per_bar), (paced // per_bar, per_bar)]
        plans.append([*plan, (max(1, paced // live_per_bar), live_per_bar)])
    return streams_of(plans, venue)


def build_sparse_inputs(preload: int, per_bar: int) -> list[StreamInput]:
    """Per stream: `HISTORY_BARS` bars of history at one entry per bar (for the lake, see
    `lake_history`), then `preload` entries at `per_bar` entries per bar."""
    plan = [(HISTORY_BARS, 1), (preload // per_bar, per_bar)]
    return streams_of([plan for _ in SYMBOLS], "sparse")


def lake_history(stream: StreamInput) -> list[Bar]:
    """The base bars of a stream's first segment, as the service would have assembled them (the
    first entry of the next segment finalises the last one)."""
    ingestor = StreamIngestor(stream.series, ConfigBundle())
    entries = [*stream.segments[0].entries, stream.segments[1].entries[0]]
    return [bar for fields in entries for bar in ingestor.on_entry(fields).bars]  # type: ignore[arg-type]


def streams_of(
    plans: Sequence[Sequence[tuple[int, int]]],
    venue: str,
    symbols: Sequence[tuple[str, int]] = SYMBOLS,
    aligned: bool = False,
) -> list[StreamInput]:
    """One stream per symbol: its segments of (bars, entries per bar), in order. `aligned`
    moves every stretch to start when the first one starts (the FX leg pairs bars by close
    time)."""
    hourly = load_klines(ROOT / "datasets" / "Coinbase_BTCUSD_1h_2017-2018.csv", "1h")
    inputs, end = [], len(hourly)
    start: int | None = None
    for index, ((symbol, _), plan) in enumerate(zip(symbols, plans, strict=True)):
        n_minutes = sum(bars for bars, _ in plan)
        hours = -(-n_minutes // 60)
        stretch = hourly.slice(end - hours, end)  # disjoint stretches, the newest first
        end -= hours
        start = int(stretch.open_time[0]) if start is None else start
        if aligned:
            shift = start - int(stretch.open_time[0])
            stretch = replace(
                stretch, open_time=stretch.open_time + shift, close_time=stretch.close_time + shift
            )
        minute = derive_finer_bars(stretch, MINUTE_MS, seed=index + 1).slice(0, n_minutes)
        minute = derive_ticks(minute, seed=index + 11, market="fut")
        series = SeriesId(venue, "fut", symbol)
        segments, first = [], 0
        for part, (bars, m) in enumerate(plan):
            part_bars = minute.slice(first, first + bars)
            entries = events_from_bars(part_bars, series, m, seed=10 * index + part)
            segments.append(Segment(entries, m, first))
            first += bars
        inputs.append(StreamInput(series, minute.close_time, tuple(segments)))
    return inputs


def preload(client: redis.Redis, inputs: Sequence[StreamInput], segment: int = 0) -> None:
    for stream in inputs:
        entries = stream.segments[segment].entries
        for start in range(0, len(entries), 1000):
            with client.pipeline(transaction=False) as pipe:
                for fields in entries[start : start + 1000]:
                    pipe.xadd(stream.series.stream_key, fields)  # type: ignore[arg-type]
                pipe.execute()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux `/proc/<pid>/stat`)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(samples: Sequence[float], *qs: float) -> list[float]:
    return [float(v) for v in np.percentile(np.asarray(samples, dtype=np.float64), qs)]


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def profile_summary(stats: pstats.Stats, title: str) -> str:
    """Cumulative time of each step of the service loop, then the top functions by own time."""
    calls: dict[tuple[str, str], int] = {}
    cumulative: dict[tuple[str, str], float] = {}
    for (filename, _line, function), row in stats.stats.items():  # type: ignore[attr-defined]
        key = (Path(filename).name, function)
        calls[key] = calls.get(key, 0) + row[1]
        cumulative[key] = cumulative.get(key, 0.0) + row[3]
    total = cumulative.get(("runner.py", "run"), 0.0) or 1.0
    lines = [f"cProfile of {title}: Service.run {total:.2f} s"]
    for label, module, functions in PROFILE_STEPS:
        spent = sum(cumulative.get((module, name), 0.0) for name in functions)
        count = sum(calls.get((module, name), 0) for name in functions)
        lines.append(f"  {label:<50} {spent:7.2f} s {spent / total:5.0%} {count:8,} calls")
    text = io.StringIO()
    stats.stream = text  # type: ignore[attr-defined]
    stats.strip_dirs().sort_stats("tottime").print_stats(10)
    table = text.getvalue()
    lines.append("  top functions by own time:")
    lines.extend("  " + row for row in table[table.find("ncalls") :].splitlines() if row.strip())
    return "\n".join(lines)


# -- 1. floor ------------------------------------------------------------------------------------


def floor_pass(client: redis.Redis, inputs: Sequence[StreamInput], group: str) -> float:
    """Entries/s of XREADGROUP + decode_entry + XACK alone, reading the streams in turn."""
    keys = [s.series.stream_key for s in inputs]
    for key in keys:
        client.xgroup_create(key, group, id="0")
    handled, started = 0, time.perf_counter()
    while True:
        before = handled
        for key in keys:
            reply: Any = client.xreadgroup(group, "floor", {key: ">"}, count=BATCH)
            for _stream, entries in reply or []:
                for _entry_id, fields in entries:
                    decode_entry(fields)
                client.xack(key, group, *(entry_id for entry_id, _ in entries))
                handled += len(entries)
        if handled == before:
            return handled / (time.perf_counter() - started)


# -- 2, 3. burst run -----------------------------------------------------------------------------


@dataclass
class BurstResult:
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of this process (all its threads) during the run
    observer_seconds: float = 0.0  # spent in the batch observers (metrics, logs, traces)
    emitted: int = 0
    compute_s: list[float] = field(default_factory=list)  # on_base_bar calls with snapshots
    snapshots: int = 0
    profile: str = ""


class TimedObserver(BatchObserver):
    """A batch observer that adds the time spent in it to `spent[0]`."""

    def __init__(self, like: BatchObserver, spent: list[float]) -> None:
        super().__init__(like.symbol, like.metrics, like.tracer)
        self.spent = spent

    def computed(self, out: Any, realtime: bool, persist_all: bool) -> None:
        started = time.perf_counter()
        super().computed(out, realtime, persist_all)
        self.spent[0] += time.perf_counter() - started

    def settled(self, out: Any) -> None:
        started = time.perf_counter()
        super().settled(out)
        self.spent[0] += time.perf_counter() - started

    def flushed(self, acked: int, seconds: float, checkpoint_bytes: int | None) -> None:
        started = time.perf_counter()
        super().flushed(acked, seconds, checkpoint_bytes)
        self.spent[0] += time.perf_counter() - started


@contextlib.contextmanager
def timed_engines(result: BurstResult) -> Iterator[None]:
    """Make the workers build engines that time `on_base_bar` (a worker creates its engine when
    it restores, after the service is built, so the class the worker module uses is swapped)."""

    class TimedEngine(SymbolEngine):
        def on_base_bar(self, bar: Bar) -> list[Snapshot]:
            started = time.perf_counter()
            snapshots = super().on_base_bar(bar)
            if snapshots:
                result.compute_s.append(time.perf_counter() - started)
                result.snapshots += len(snapshots)
            return snapshots

    original = vars(worker_module)["SymbolEngine"]
    setattr(worker_module, "SymbolEngine", TimedEngine)  # noqa: B010 - mypy refuses `m.Type = `
    try:
        yield
    finally:
        setattr(worker_module, "SymbolEngine", original)  # noqa: B010


def service_env(
    server: RedisServer,
    workdir: Path,
    consumer: str,
    venue: str = "bench",
    symbols: Sequence[tuple[str, int]] = SYMBOLS,
) -> dict[str, str]:
    return {
        "S2_REDIS_ADDRESSES": f"{server.host}:{server.port}",
        "S2_SYMBOLS": ",".join(f"{venue}:fut:{symbol}" for symbol, _ in symbols),
        "S2_WINDOWS": SERVICE_WINDOWS,
        "S2_CONSUMER_NAME": consumer,
        "S2_DB_SQLITE_PATH": str(workdir / "s2.db"),
        "S2_LAKE_DIR": str(workdir / "lake"),
        "S2_LOG_LEVEL": "WARNING",
        "S2_API_PORT": "0",  # its /health on a free port
    }


def run_burst(
    server: RedisServer,
    workdir: Path,
    profile: bool,
    group: str = "s2",
    checkpoint_ms: int | None = None,
    venue: str = "bench",
    extra_env: dict[str, str] | None = None,
    observers: Observers | None = None,
) -> BurstResult:
    """Drain the pre-loaded entries with the in-process service; exit on the first idle round.
    `checkpoint_ms` overrides the service's default checkpoint interval; `extra_env` adds
    settings; `observers` gives the run's metrics and tracer (default: none)."""
    # A 1 ms idle block, so that the run ends right after the last batch, not 200 ms later.
    env = {**service_env(server, workdir, "bench-burst", venue), "S2_BLOCK_MS": "1"}
    env.update(extra_env or {})
    if checkpoint_ms is not None:
        env["S2_CHECKPOINT_MS"] = str(checkpoint_ms)
    settings = load_settings({**env, "S2_CONSUMER_GROUP": group})
    store = SqliteStore(workdir / "s2.db")
    metrics, tracer = observers() if observers is not None else (None, None)
    service = Service(
        settings,
        connect(settings.redis),
        store,
        BarLake(workdir / "lake"),
        metrics=metrics,
        tracer=tracer,
    )
    spent = [0.0]
    if observers is not None:
        for worker in service.workers.values():
            worker.observer = TimedObserver(worker.observer, spent)
    result = BurstResult()
    profiler = cProfile.Profile() if profile else None
    with timed_engines(result), profiler or contextlib.nullcontext():
        started, cpu_started = time.perf_counter(), time.process_time()
        # tuned as `s2-feature run` tunes its process
        service.run(idle_exit_s=0.0, on_started=quiet_garbage_collector)
        result.seconds = time.perf_counter() - started
        result.cpu_seconds = time.process_time() - cpu_started
    result.observer_seconds = spent[0]
    store.close()
    if tracer is not None:
        tracer.shutdown()  # after the timed run: what is still queued is exported
    result.emitted = service.emitted
    if profiler is not None:
        result.profile = profile_summary(pstats.Stats(profiler), "the burst run")
    return result


def best_burst(
    server: RedisServer,
    workdir: Path,
    passes: int,
    profile: bool,
    venue: str = "bench",
    history: Sequence[StreamInput] = (),
    extra_env: dict[str, str] | None = None,
    observers: Observers | None = None,
) -> tuple[BurstResult, list[float]]:
    """The fastest of `passes` burst runs over the same entries (the floor's estimator too), and
    every run's time. Each run but the last has its own consumer group and files, and its
    outputs are deleted after it (feat:* keys: emits, feat:last, checkpoints, leases), so every
    run does the same work from a cold start; the last leaves its state for the paced runs.
    The lake of each run gets the `lake_history` of the `history` streams first: the service
    warms up from it when it starts (inside the timed run)."""
    runs = []
    for index in range(passes):
        last = index == passes - 1
        run_dir = workdir if last else workdir / f"burst-{index}"
        group = "s2" if last else f"burst-{index}"
        for stream in history:
            BarLake(run_dir / "lake").append(stream.series.symbol, lake_history(stream))
        runs.append(
            run_burst(
                server,
                run_dir,
                profile and last,
                group,
                venue=venue,
                extra_env=extra_env,
                observers=observers,
            )
        )
        if not last:
            admin = server.client()
            for key in admin.scan_iter("feat:*"):
                admin.delete(key)
    best = min(runs, key=lambda run: run.seconds)
    if profile:
        best.profile = runs[-1].profile
    return best, [run.seconds for run in runs]


# -- 4. paced runs -------------------------------------------------------------------------------

# (input stream key, fields, index of the bar the entry opens or None): the producer's work list.
Scheduled = tuple[str, dict[str, str], int | None]


def paced_schedule(inputs: Sequence[StreamInput], phase: int) -> list[Scheduled]:
    """One segment of every stream, round-robin; the first entry of each bar carries the bar's
    index, as it is the entry that finalises the bar before it."""
    segments = [(s.series.stream_key, s.segments[phase]) for s in inputs]
    schedule = []
    for position in range(max(len(seg.entries) for _, seg in segments)):
        for key, seg in segments:
            if position < len(seg.entries):
                bar, offset = divmod(position, seg.per_bar)
                opens = seg.first_bar + bar if offset == 0 else None
                schedule.append((key, seg.entries[position], opens))
    return schedule


def produce(
    client: redis.Redis,
    schedule: Sequence[Scheduled],
    rate: float,
    sent_at: dict[tuple[str, int], float],
    late_s: list[float],
) -> None:
    """XADD entry i at `start + i / rate` (right away when behind), one round trip each like a
    feed; stamp the first entry of every bar just before its XADD."""
    start = time.perf_counter() + 0.05
    for i, (key, fields, opens_bar) in enumerate(schedule):
        due = start + i / rate
        if (now := time.perf_counter()) < due:
            time.sleep(due - now)
            now = time.perf_counter()
        late_s.append(now - due)
        if opens_bar is not None:
            sent_at[(key, opens_bar)] = now
        client.xadd(key, fields)  # type: ignore[arg-type]


def listen(
    client: redis.Redis,
    last_ids: dict[str, str],
    stop: threading.Event,
    arrivals: list[tuple[str, str, float]],
) -> None:
    """Stamp every new `feat:events` entry as soon as a blocking XREAD returns it."""
    while not stop.is_set():
        reply: Any = client.xread(last_ids, block=100)  # type: ignore[arg-type]
        now = time.perf_counter()
        for key, entries in reply or []:
            arrivals.extend((key, entry_id, now) for entry_id, _ in entries)
            last_ids[key] = entries[-1][0]


@contextlib.contextmanager
def service_process(
    server: RedisServer,
    workdir: Path,
    profile_to: Path | None,
    command: Sequence[str] = ("-m", "s2feature.cli", "run"),
    extra_env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """`s2-feature run` (or the Python `command` that runs it) in its own process, from the
    moment it blocks in XREADGROUP (restored, claimed, drained, waiting for input) until SIGTERM
    (graceful: checkpoint, ack, exit 0)."""
    command = [sys.executable, *command]
    if profile_to is not None:
        command[1:1] = ["-m", "cProfile", "-o", str(profile_to)]
    log = workdir / "service.log"
    env = {**os.environ, **service_env(server, workdir, "bench-paced"), **(extra_env or {})}
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=sink)
    admin = server.client(decode_responses=True)

    def serving() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"s2-feature run exited early:\n{log.read_text()[-2000:]}")
        clients: Any = admin.client_list()
        return any(c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "") for c in clients)

    try:
        wait_for(serving, timeout_s=60, what="s2-feature run to wait for input")
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class PacedResult:
    sent: int = 0
    seconds: float = 0.0
    late_p99_ms: float = 0.0  # how far the producer fell behind its schedule
    outputs: int = 0
    unmatched: int = 0  # outputs whose finalising entry was not sent in this phase
    latency_ms: dict[str, list[float]] = field(default_factory=dict)  # per window
    # From the later of the symbol's and the FX stream's finalising entries (with `fx`).
    both_ms: list[float] = field(default_factory=list)


def run_paced(
    server: RedisServer,
    inputs: Sequence[StreamInput],
    phase: int,
    rate: float,
    idle_s: float,
    measured: Sequence[StreamInput] | None = None,
    fx: StreamInput | None = None,
) -> PacedResult:
    """Send one paced phase and wait until the outputs stop (`idle_s` without a new one); the
    latency is that of the `measured` streams' outputs (all by default)."""
    by_output = {events_key(s.series.symbol): s for s in measured or inputs}
    schedule = paced_schedule(inputs, phase)
    sent_at: dict[tuple[str, int], float] = {}
    late_s: list[float] = []
    arrivals: list[tuple[str, str, float]] = []
    stop = threading.Event()
    reader = server.client(decode_responses=True)
    newest = {key: reader.xrevrange(key, count=1) for key in by_output}
    last_ids = {key: str(rows[0][0]) if rows else "0-0" for key, rows in newest.items()}
    listener = threading.Thread(target=listen, args=(reader, last_ids, stop, arrivals))
    listener.start()
    result = PacedResult(sent=len(schedule))
    producer = threading.Thread(
        target=produce, args=(server.client(), schedule, rate, sent_at, late_s)
    )
    started = time.perf_counter()
    producer.start()
    producer.join()
    result.seconds = time.perf_counter() - started
    seen, deadline = -1, time.monotonic() + 30
    while seen != len(arrivals) and time.monotonic() < deadline:
        seen = len(arrivals)
        time.sleep(idle_s)
    stop.set()
    listener.join()
    result.late_p99_ms, result.outputs = percentiles(late_s, 99)[0] * 1e3, len(arrivals)
    for out_key, entry_id, arrived in arrivals:
        stream = by_output[out_key]
        t0, _, k = entry_id.partition("-")
        # The bar the snapshot waited for is the first with close_time >= t0 (t0's own bar unless
        # the w-bar ended in a gap); the first entry of the bar after it finalised it.
        waited = int(np.searchsorted(stream.close_time, int(t0), side="left"))
        sent = sent_at.get((stream.series.stream_key, waited + 1))
        if sent is None:
            result.unmatched += 1
        else:
            result.latency_ms.setdefault(WINDOWS[int(k)], []).append((arrived - sent) * 1e3)
            if fx is not None:
                fx_bar = int(np.searchsorted(fx.close_time, int(t0), side="left"))
                fx_sent = sent_at.get((fx.series.stream_key, fx_bar + 1))
                if fx_sent is not None:
                    result.both_ms.append((arrived - max(sent, fx_sent)) * 1e3)
    return result


# -- report --------------------------------------------------------------------------------------


def print_burst(floor: float, burst: BurstResult, run_seconds: list[float], entries: int) -> None:
    rate = entries / burst.seconds
    every = ", ".join(f"{entries / seconds:,.0f}" for seconds in run_seconds)
    print(
        f"2. service, burst mode, windows {SERVICE_WINDOWS}, SQLite + Parquet lake: "
        f"{rate:,.0f} entries/s (best of {len(run_seconds)} runs: {every}; "
        f"{burst.emitted:,} snapshots emitted per run) = {rate / floor:.0%} of the floor "
        f"(target >= 50%: {verdict(rate >= 0.5 * floor)})"
    )
    if not burst.compute_s:
        print("3. compute latency: not measured (the workers built no timed engine)")
        return
    p50, p95, p99 = (v * 1e3 for v in percentiles(burst.compute_s, 50, 95, 99))
    print(
        f"3. compute latency ({len(burst.compute_s):,} on_base_bar calls that produced "
        f"{burst.snapshots:,} snapshots): p50 {p50:.3f} ms, p95 {p95:.3f} ms, p99 {p99:.3f} ms "
        f"(target p95 <= 1 ms: {verdict(p95 <= 1.0)}); compute is "
        f"{sum(burst.compute_s) / burst.seconds:.0%} of the burst run's time"
    )


def print_paced(title: str, paced: PacedResult, rate: float) -> None:
    print(
        f"{title}: {paced.sent:,} entries at {rate:,.0f}/s sent in {paced.seconds:.1f} s "
        f"(producer p99 behind schedule {paced.late_p99_ms:.2f} ms), {paced.outputs:,} "
        f"snapshots emitted, {paced.unmatched} not matched to an input"
    )
    every = [v for values in paced.latency_ms.values() for v in values]
    if not every:
        print("   no snapshot was emitted: latency not measured")
        return
    p50, p95, p99 = percentiles(every, 50, 95, 99)
    print(
        f"   XADD of the finalising entry -> feat:events entry visible: p50 {p50:.2f} ms, "
        f"p95 {p95:.2f} ms, p99 {p99:.2f} ms, max {max(every):.1f} ms "
        f"(target p95 <= 10 ms: {verdict(p95 <= 10.0)})"
    )
    windows = [w for w in WINDOWS if w in paced.latency_ms]
    print("   " + "; ".join(f"{w}: {len(paced.latency_ms[w]):,} snapshots" for w in windows))


def sparse_throughput(workdir: Path, args: argparse.Namespace, per_bar: int) -> None:
    """5. Floor and burst throughput at `per_bar` entries per bar, on a server of its own (the
    output keys are per symbol, the same as the dense streams')."""
    inputs = build_sparse_inputs(args.entries // len(SYMBOLS), per_bar)
    entries = sum(len(s.segments[1].entries) for s in inputs)
    with RedisServer(workdir / "redis", appendonly=False) as server:
        client = server.client()
        preload(client, inputs, segment=1)
        floors = [floor_pass(client, inputs, f"floor-{i}") for i in range(args.floor_passes)]
        burst, run_seconds = best_burst(
            server, workdir, args.service_passes, False, "sparse", history=inputs
        )
    floor, rate = max(floors), entries / burst.seconds
    every = ", ".join(f"{entries / seconds:,.0f}" for seconds in run_seconds)
    print(
        f"5. the same throughput at {per_bar} entries per bar ({entries:,} entries; each run "
        f"warms up from {HISTORY_BARS:,} lake bars per stream, then emits {burst.emitted:,} "
        f"snapshots): floor {floor:,.0f} entries/s, service {rate:,.0f} entries/s (best of "
        f"{len(run_seconds)}: {every}) = {rate / floor:.0%} of the floor"
    )


def replica_wait_cost(workdir: Path, args: argparse.Namespace) -> None:
    """6. Burst throughput with `S2_REDIS_MIN_REPLICAS` 0 and 1 on a server with one replica
    (`REPLICAOF`), over the pre-loaded dense entries: the cost of waiting for the replica."""
    inputs = build_inputs(args.entries // len(SYMBOLS), 120, 1)  # only the first part is used
    entries = sum(len(s.segments[0].entries) for s in inputs)
    with (
        RedisServer(workdir / "primary", appendonly=False) as server,
        RedisServer(workdir / "replica", appendonly=False) as replica,
    ):
        replica.execute("REPLICAOF", server.host, server.port)
        wait_for(
            lambda: replica.client().info("replication").get("master_link_status") == "up",
            timeout_s=60,
            what="the replica to link up",
        )
        preload(server.client(), inputs)
        rates = {}
        for min_replicas in (0, 1):
            burst, _ = best_burst(
                server,
                workdir / f"min-replicas-{min_replicas}",
                args.service_passes,
                False,
                extra_env={"S2_REDIS_MIN_REPLICAS": str(min_replicas)},
            )
            rates[min_replicas] = entries / burst.seconds
            # The next setting's runs start from a clean slate too.
            admin = server.client()
            admin.delete(*[s.series.stream_key for s in inputs])
            for key in admin.scan_iter("feat:*"):
                admin.delete(key)
            preload(admin, inputs)
    print(
        f"6. S2_REDIS_MIN_REPLICAS on a server with one replica ({entries:,} entries, checkpoint "
        f"every 5 s, best of {args.service_passes}): 0 -> {rates[0]:,.0f} entries/s, 1 -> "
        f"{rates[1]:,.0f} entries/s ({rates[1] / rates[0]:.0%})"
    )


FX_SYMBOL = ("USDTTWD", 3)  # the default bundle's rho.fx_symbol; another stretch of the data
# The same fourth stream under a name that is not `rho.fx_symbol`: an ordinary symbol.
PLAIN_SYMBOL = ("FXPLAIN", FX_SYMBOL[1])


@dataclass
class FxFigures:
    floor: float = 0.0
    service: float = 0.0
    p95_ms: float = 0.0
    p50_ms: float = 0.0
    both_p50_ms: float = 0.0  # from the later of the symbol's and the FX's finalising entries
    both_p95_ms: float = 0.0
    emitted: int = 0
    with_rho: int = 0
    fx_late: int = 0
    cpu_ms_per_entry: float = 0.0  # the service process's CPU time in the paced phase


def fx_scenario(
    workdir: Path, args: argparse.Namespace, with_fx: bool, fourth: tuple[str, int] | None = None
) -> FxFigures:
    """Floor, best burst and the dense paced phase over the three symbols aligned in time, with
    or without the FX stream (or with `fourth`, the FX stream's data as an ordinary symbol)."""
    symbols = (*SYMBOLS, FX_SYMBOL) if with_fx else SYMBOLS
    if fourth is not None:
        symbols = (*SYMBOLS, fourth)
    per_stream = round(args.rate * args.seconds / len(SYMBOLS))
    preload_n = args.entries // len(SYMBOLS)
    plans = [[(preload_n // m, m), (per_stream // m, m)] for _, m in symbols]
    inputs = streams_of(plans, "fx", symbols, aligned=True)
    entries = sum(len(s.segments[0].entries) for s in inputs)
    env = {"S2_SYMBOLS": ",".join(f"fx:fut:{symbol}" for symbol, _ in symbols)}
    out = FxFigures()
    with RedisServer(workdir / "redis", appendonly=False) as server:
        client = server.client()
        preload(client, inputs)
        out.floor = max(floor_pass(client, inputs, f"floor-{i}") for i in range(args.floor_passes))
        burst, _ = best_burst(server, workdir, args.service_passes, False, "fx", extra_env=env)
        out.service = entries / burst.seconds
        with service_process(server, workdir, None, extra_env=env) as process:
            # The symbols' rate is the same in both runs; the FX stream adds its own entries.
            rate = args.rate * len(symbols) / len(SYMBOLS)
            measured = inputs[: len(SYMBOLS)]
            fx = inputs[-1] if len(inputs) > len(SYMBOLS) else None  # the FX (or plain) stream
            cpu_started = cpu_seconds(process.pid)
            paced = run_paced(server, inputs, 1, rate, 1.0, measured, fx)
            out.cpu_ms_per_entry = (cpu_seconds(process.pid) - cpu_started) * 1e3 / paced.sent
        every = [v for values in paced.latency_ms.values() for v in values]
        out.p50_ms, out.p95_ms = percentiles(every, 50, 95) if every else (0.0, 0.0)
        if paced.both_ms:
            out.both_p50_ms, out.both_p95_ms = percentiles(paced.both_ms, 50, 95)
        for stream in inputs[: len(SYMBOLS)]:
            rows: Any = client.xrange(events_key(stream.series.symbol))
            for _, fields in rows:
                out.emitted += 1
                text = fields[b"data"]
                out.with_rho += b'"rho_usdttwd_14":null' not in text
                out.fx_late += b'"fx_late"' in text
    return out


def fx_leg_cost(workdir: Path, args: argparse.Namespace) -> None:
    """8. The FX leg's cost: the same three symbols without and with the FX stream."""
    off = fx_scenario(workdir / "off", args, with_fx=False)
    plain = fx_scenario(workdir / "plain", args, with_fx=False, fourth=PLAIN_SYMBOL)
    on = fx_scenario(workdir / "on", args, with_fx=True)
    ratio_off, ratio_on = off.service / off.floor, on.service / on.floor
    ratio_plain = plain.service / plain.floor
    print(
        f"8. the FX leg (three streams aligned in time, then with the FX stream {FX_SYMBOL[0]} "
        f"at {FX_SYMBOL[1]} entries/bar; best of {args.service_passes} bursts, dense paced "
        f"phase at the same rate per symbol):\n"
        f"   FX off: floor {off.floor:,.0f}, service {off.service:,.0f} entries/s = "
        f"{ratio_off:.0%} of the floor; end-to-end p50 {off.p50_ms:.2f} ms, "
        f"p95 {off.p95_ms:.2f} ms; paced: {off.cpu_ms_per_entry:.3f} CPU ms/entry\n"
        f"   FX on:  floor {on.floor:,.0f}, service {on.service:,.0f} entries/s = "
        f"{ratio_on:.0%} of the floor; end-to-end p50 {on.p50_ms:.2f} ms, "
        f"p95 {on.p95_ms:.2f} ms (from the later of the symbol's and the FX's finalising "
        f"entries: p50 {on.both_p50_ms:.2f} ms, p95 {on.both_p95_ms:.2f} ms); "
        f"{on.with_rho:,} of {on.emitted:,} symbol snapshots with rho_usdttwd_14, "
        f"{on.fx_late} fx_late; paced: {on.cpu_ms_per_entry:.3f} CPU ms/entry\n"
        f"   on / off: throughput ratio {ratio_on / ratio_off:.0%}, e2e p95 "
        f"{on.p95_ms / off.p95_ms if off.p95_ms else float('nan'):.0%}, from the later entry "
        f"{on.both_p95_ms / off.p95_ms if off.p95_ms else float('nan'):.0%} "
        f"(target: within 10 %)\n"
        f"   control, the fourth stream as an ordinary symbol {PLAIN_SYMBOL[0]} (no FX leg): "
        f"floor {plain.floor:,.0f}, service {plain.service:,.0f} entries/s = "
        f"{ratio_plain:.0%} of the floor; end-to-end p50 {plain.p50_ms:.2f} ms, "
        f"p95 {plain.p95_ms:.2f} ms (from the later of the symbol's and {PLAIN_SYMBOL[0]}'s "
        f"finalising entries: p50 {plain.both_p50_ms:.2f} ms, p95 {plain.both_p95_ms:.2f} ms); "
        f"paced: {plain.cpu_ms_per_entry:.3f} CPU ms/entry\n"
        f"   on / control: throughput ratio {ratio_on / ratio_plain:.0%}, e2e p95 "
        f"{on.p95_ms / plain.p95_ms if plain.p95_ms else float('nan'):.0%}, from the later "
        f"entry {on.both_p95_ms / plain.both_p95_ms if plain.both_p95_ms else float('nan'):.0%}"
    )


class _DroppingReceiver(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that reads each export request and drops it."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def observability_cost(workdir: Path, args: argparse.Namespace) -> None:
    """7. Burst throughput with metrics off and on, and with traces at several sample ratios."""
    inputs = build_inputs(args.entries // len(SYMBOLS), 120, 1)  # only the first part is used
    entries = sum(len(s.segments[0].entries) for s in inputs)
    # At 1.0 the span queue overflows in a burst and the SDK drops spans, warning each time:
    # the figures include that; the warnings are not printed.
    logging.getLogger("opentelemetry.sdk.trace.export").setLevel(logging.ERROR)
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DroppingReceiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"

    def observed(metrics: bool, ratio: float | None) -> Observers:
        def make() -> tuple[Metrics | None, SignalTracer | None]:
            tracer = None
            if ratio is not None:
                tracer = SignalTracer(otlp_tracer_provider(endpoint, ratio), ratio)
            return (Metrics("bench") if metrics else None), tracer

        return make

    setups = [
        ("metrics off", observed(False, None)),
        ("metrics on", observed(True, None)),
        ("metrics + traces at 0", observed(True, 0.0)),
        ("metrics + traces at 0.01", observed(True, 0.01)),
        ("metrics + traces at 1.0", observed(True, 1.0)),
    ]
    rates: dict[str, list[float]] = {label: [] for label, _ in setups}
    per_cpu: dict[str, list[float]] = {label: [] for label, _ in setups}
    shares: dict[str, list[float]] = {label: [] for label, _ in setups}
    with RedisServer(workdir / "redis", appendonly=False) as server:
        admin = server.client()
        preload(admin, inputs)
        # Rounds of every setup in turn, so that a slow spell of the shared machine hits them
        # alike; each setup's best run is taken.
        for round_ in range(args.observability_rounds):
            for label, observers in setups:
                run_dir = workdir / f"{label.replace(' ', '-')}-{round_}"
                burst, _ = best_burst(server, run_dir, 1, False, observers=observers)
                rates[label].append(entries / burst.seconds)
                per_cpu[label].append(entries / burst.cpu_seconds)
                shares[label].append(burst.observer_seconds / burst.seconds)
                admin.delete(*[s.series.stream_key for s in inputs])
                for key in admin.scan_iter("feat:*"):
                    admin.delete(key)
                preload(admin, inputs)
    receiver.shutdown()
    receiver.server_close()
    off, off_cpu = max(rates["metrics off"]), max(per_cpu["metrics off"])
    print(
        f"7. cost of observing ({entries:,} entries, burst, best of {args.observability_rounds} "
        "rounds taken in turn; traces exported over OTLP/HTTP to a loopback receiver); "
        "wall-clock throughput, entries per CPU second of the service process (less "
        "sensitive to the other work of a shared machine), and the median share of the run "
        "spent in the batch observers (metrics, logs, span building; the exporter's thread "
        "not included) with the throughput ratio it implies:"
    )
    for label, _ in setups:
        best, cpu = max(rates[label]), max(per_cpu[label])
        share = float(np.median(shares[label]))
        every = ", ".join(f"{rate:,.0f}" for rate in rates[label])
        print(
            f"   {label:<25} {best:7,.0f} entries/s = {best / off:6.1%}; {cpu:7,.0f} "
            f"entries/CPU s = {cpu / off_cpu:6.1%}; observers {share:5.1%} of the run "
            f"(-> {1 - share:6.1%}) (runs: {every})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=60_000, help="pre-loaded, all streams")
    parser.add_argument("--rate", type=float, default=1_000.0, help="paced entries/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each paced phase")
    parser.add_argument("--floor-passes", type=int, default=3)
    parser.add_argument("--service-passes", type=int, default=3, help="burst runs, best taken")
    parser.add_argument("--profile", action="store_true", help="cProfile both service runs")
    parser.add_argument(
        "--replicas-only", action="store_true", help="only 6: the cost of S2_REDIS_MIN_REPLICAS"
    )
    parser.add_argument(
        "--observability-only", action="store_true", help="only 7: the cost of metrics, traces"
    )
    parser.add_argument("--observability-rounds", type=int, default=5, help="rounds of 7")
    parser.add_argument("--fx-only", action="store_true", help="only 8: the cost of the FX leg")
    args = parser.parse_args()
    if args.observability_only:
        with tempfile.TemporaryDirectory(prefix="s2-service-bench-") as tmp:
            observability_cost(Path(tmp), args)
        return
    if args.replicas_only:
        with tempfile.TemporaryDirectory(prefix="s2-service-bench-") as tmp:
            replica_wait_cost(Path(tmp), args)
        return
    if args.fx_only:
        with tempfile.TemporaryDirectory(prefix="s2-service-bench-") as tmp:
            fx_leg_cost(Path(tmp), args)
        return
    bench_started = time.perf_counter()
    live_per_bar = max(1, round(args.rate / len(SYMBOLS)))  # one bar per second per stream
    paced = round(args.rate * args.seconds / len(SYMBOLS))
    inputs = build_inputs(args.entries // len(SYMBOLS), paced, live_per_bar)
    preloaded = sum(len(s.segments[0].entries) for s in inputs)
    history_days = min(s.segments[1].first_bar for s in inputs) * MINUTE_MS / 86_400_000
    arguments = "".join(f" {a}" for a in sys.argv[1:])
    print(f"command: uv run python benches/service_bench.py{arguments}  (make bench, part 2)")
    print(
        f"input: {len(inputs)} fut streams of flat S1 entries ("
        + ", ".join(f"{s.series.symbol} {s.segments[0].per_bar}/bar" for s in inputs)
        + "), each a different stretch of the real BTC/USD hourly data split into 1-minute bars;"
        f" warm-up: the {preloaded:,} pre-loaded entries (>= {history_days:.1f} days per stream)"
        " are drained before the paced phases; SPEC default config bundle\n"
    )
    with tempfile.TemporaryDirectory(prefix="s2-service-bench-") as tmp:
        workdir = Path(tmp)
        with RedisServer(workdir / "redis", appendonly=False) as server:
            client = server.client()
            preload(client, inputs)
            floors = [floor_pass(client, inputs, f"floor-{i}") for i in range(args.floor_passes)]
            print(
                f"1. floor (XREADGROUP COUNT {BATCH} + decode_entry + XACK, hiredis "
                f"{'on' if redis.utils.HIREDIS_AVAILABLE else 'off'}): {max(floors):,.0f} "
                f"entries/s (best of {len(floors)} passes over {preloaded:,} entries)"
            )
            burst, run_seconds = best_burst(server, workdir, args.service_passes, args.profile)
            print_burst(max(floors), burst, run_seconds, preloaded)
            profile_to = workdir / "paced.prof" if args.profile else None
            with service_process(server, workdir, profile_to):
                dense = run_paced(server, inputs, 1, args.rate, idle_s=1.0)
                # Bars close once a second here: wait longer than that for the last outputs.
                live = run_paced(server, inputs, 2, args.rate, idle_s=2.0)
            print_paced("4. end-to-end latency, 3-4 entries per bar", dense, args.rate)
            print_paced(f"   then {live_per_bar} entries per bar", live, args.rate)
            if profile_to is not None:
                print("\nprofiled: the figures above include the profiler's cost")
                print(burst.profile)
                print(profile_summary(pstats.Stats(str(profile_to)), "the paced runs"))
        sparse_throughput(workdir / "sparse", args, live_per_bar)
        replica_wait_cost(workdir / "replicas", args)
        observability_cost(workdir / "observability", args)
        fx_leg_cost(workdir / "fx", args)
    print(f"\nwhole benchmark: {time.perf_counter() - bench_started:.0f} s")


if __name__ == "__main__":
    main()
