"""End-to-end p95 of the live service while a 90-day recompute runs on a thread of its process,
next to the same figure idle, in one run.

Run by `make bench` (or `uv run python benches/live_under_recompute.py`). Figures, never
assertions.

The service is `s2-feature run` in its own process (`benches/service_with_recompute.py`: the
same `main`, plus a thread that runs recompute tasks when told to, as the recompute API does).
Three fut streams are pre-loaded and drained first (a warm engine, snapshots pass DQC), then three
paced phases of the same length and density, measured as in `benches/service_bench.py` part 4
(XADD of the finalising entry -> `feat:events` entry visible to a blocking XREAD):

1. idle: nothing else runs in the service process;
2. under recompute: the thread recomputes 90 days of 1-minute bars for three symbols, windows
   1m,5m,1h, every feature, into the service's SQLite file (`benches/recompute_data.py`),
   task after task, for the whole phase;
3. the same recompute loop in a process of its own (`--recompute-only`), writing to the same
   SQLite file: what the consumer loop suffers from sharing the CPUs and the store, without
   sharing the interpreter.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benches.recompute_data import build_lake  # noqa: E402
from benches.service_bench import (  # noqa: E402
    SYMBOLS,
    PacedResult,
    percentiles,
    preload,
    run_paced,
    service_process,
    streams_of,
)
from tests.support.redis_servers import RedisServer  # noqa: E402


def p95(result: PacedResult) -> float | None:
    every = [v for values in result.latency_ms.values() for v in values]
    return percentiles(every, 95)[0] if every else None


def describe(title: str, result: PacedResult) -> str:
    every = [v for values in result.latency_ms.values() for v in values]
    if not every:
        return f"{title}: no snapshot emitted, latency not measured"
    p50, p95_, p99 = percentiles(every, 50, 95, 99)
    return (
        f"{title}: {len(every):,} snapshots, XADD of the finalising entry -> feat:events entry "
        f"visible: p50 {p50:.2f} ms, p95 {p95_:.2f} ms, p99 {p99:.2f} ms, max {max(every):.1f} ms"
    )


def finished_tasks(done: Path) -> list[list[str]]:
    """The recompute tasks the service thread reported: [signals, batches done, total, s]."""
    return [line.split() for line in done.read_text().splitlines()] if done.exists() else []


def stop_recompute(trigger: Path, done: Path) -> None:
    """Remove the trigger and wait until the running task has stopped and reported."""
    reported = len(finished_tasks(done))
    trigger.unlink()
    deadline = time.monotonic() + 30
    while len(finished_tasks(done)) == reported and time.monotonic() < deadline:
        time.sleep(0.1)


def task_summary(tasks: list[list[str]]) -> str:
    return (
        "; ".join(
            f"{int(n):,} signals, {done}/{total} batches in {float(s):.1f} s"
            for n, done, total, s in tasks
        )
        + " (the task running when the phase ended stopped at its next batch)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=30_000, help="pre-loaded, all streams")
    parser.add_argument("--rate", type=float, default=1_000.0, help="paced entries/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each paced phase")
    args = parser.parse_args()
    arguments = "".join(f" {a}" for a in sys.argv[1:])
    print(f"\ncommand: uv run python benches/live_under_recompute.py{arguments}  (make bench)")
    per_bar = max(1, round(args.rate / len(SYMBOLS)))  # one bar close per second per stream
    paced_bars = max(1, round(args.rate * args.seconds / len(SYMBOLS)) // per_bar)
    plans = [
        [(args.entries // len(SYMBOLS) // m, m), *[(paced_bars, per_bar)] * 3] for _, m in SYMBOLS
    ]
    inputs = streams_of(plans, "bench")
    with tempfile.TemporaryDirectory(prefix="s2-live-recompute-") as tmp:
        workdir = Path(tmp)
        data = build_lake(workdir / "recompute-lake")
        days = round((data.to_ts + 1 - data.from_ts) / 86_400_000)
        trigger, done = workdir / "recompute.on", workdir / "recompute.done"
        trigger_3, done_3 = workdir / "separate.on", workdir / "separate.done"
        extra_env = {
            "S2_BENCH_TRIGGER": str(trigger),
            "S2_BENCH_DONE": str(done),
            "S2_BENCH_LAKE": str(data.lake.root),
            "S2_BENCH_SYMBOLS": ",".join(data.symbols),
            "S2_BENCH_FROM": str(data.from_ts),
            "S2_BENCH_TO": str(data.to_ts),
        }
        print(
            f"input: {len(inputs)} fut streams, {args.entries:,} entries pre-loaded and drained, "
            f"then three phases of {paced_bars * per_bar * len(inputs):,} entries at "
            f"{args.rate:,.0f}/s ({per_bar} entries per bar: one bar close per second per "
            f"stream); the recompute: {len(data.symbols)} symbols x {days} days of 1-minute bars, "
            "windows 1m,5m,1h, into the service's SQLite file"
        )
        with RedisServer(workdir / "redis", appendonly=False) as server:
            preload(server.client(), inputs)
            script = str(ROOT / "benches" / "service_with_recompute.py")
            command = [sys.executable, script]
            with service_process(server, workdir, None, (script,), extra_env):
                idle = run_paced(server, inputs, 1, args.rate, idle_s=2.0)
                trigger.touch()
                time.sleep(1.0)  # the recompute reads the lake and computes before it writes
                loaded = run_paced(server, inputs, 2, args.rate, idle_s=2.0)
                stop_recompute(trigger, done)
                # 3. The same job in a process of its own, beside the service.
                alone_env = {**os.environ, **extra_env, "S2_DB_SQLITE_PATH": str(workdir / "s2.db")}
                alone_env |= {"S2_BENCH_TRIGGER": str(trigger_3), "S2_BENCH_DONE": str(done_3)}
                recompute = subprocess.Popen([*command, "--recompute-only"], env=alone_env)
                trigger_3.touch()
                time.sleep(1.0)
                separate = run_paced(server, inputs, 3, args.rate, idle_s=2.0)
                stop_recompute(trigger_3, done_3)
                recompute.wait(timeout=60)
        tasks, tasks_3 = finished_tasks(done), finished_tasks(done_3)
    print(describe("1. idle", idle))
    print(describe("2. while a 90-day recompute runs on a thread of the service", loaded))
    print("   recompute during phase 2: " + task_summary(tasks))
    print(describe("3. while the same recompute runs in a separate process", separate))
    print("   recompute during phase 3: " + task_summary(tasks_3))
    a, b, c = p95(idle), p95(loaded), p95(separate)
    if a and b and c:
        print(
            f"p95 / idle: recompute on a service thread {b / a:.2f}x ({b:.2f} ms vs {a:.2f} ms), "
            f"in a separate process {c / a:.2f}x ({c:.2f} ms)"
        )


if __name__ == "__main__":
    main()
