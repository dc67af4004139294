"""End-to-end p95 of the live service while a 90-day recompute runs, next to the same figure
idle, in one run: the recompute on a thread of the service, in a separate process, and as
`s2-feature run` runs it (a task submitted over its HTTP API, run in a child process).

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
   sharing the interpreter;
4. the service's own arrangement: the same task submitted to the service over its HTTP API
   (`POST /features/recompute`, `force = true`), again as soon as it is done, for the whole
   phase; the service runs each task in a child process at nice 10 (`jobs/task_process.py`).
   The task running when the phase ends is stopped by the service's own stop.

The recompute lake is the service's lake (`S2_LAKE_DIR`), its three series named so that the
live streams' bars never mix with them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benches.recompute_data import RecomputeLake, build_lake  # noqa: E402
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


def task_summary(
    tasks: list[list[str]],
    last: str = "the task running when the phase ended stopped at its next batch",
) -> str:
    return (
        "; ".join(
            f"{int(n):,} signals, {done}/{total} batches in {float(s):.1f} s"
            for n, done, total, s in tasks
        )
        + f" ({last})"
    )


RECOMPUTE_SYMBOLS = ("RECOMP1", "RECOMP2", "RECOMP3")  # not the live streams' symbols
TOKEN = "bench-token"
TERMINAL = ("done", "failed", "interrupted")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


class ApiTasks:
    """Submits the recompute over the service's HTTP API, again each time it is done, until
    `stop()`; `tasks` as `finished_tasks` gives them, then the one running at the stop."""

    def __init__(self, port: int, data: RecomputeLake) -> None:
        self.port = port
        self.body = {
            "symbols": list(data.symbols),
            "windows": list(data.windows),
            "from_ts": data.from_ts,
            "to_ts": data.to_ts,
            "force": True,
        }
        self.tasks: list[list[str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            task_id = call(self.port, "POST", "/features/recompute", self.body)["task_id"]
            view = call(self.port, "GET", f"/features/recompute/{task_id}")
            while view["state"] not in TERMINAL and not self._stop.wait(0.25):
                view = call(self.port, "GET", f"/features/recompute/{task_id}")
            elapsed = time.perf_counter() - started
            self.errors += view.get("errors") or []
            self.tasks.append(
                [
                    str(view["signals_written"]),
                    str(view["batches_done"]),
                    str(view["batches_total"]),
                    f"{elapsed:.3f}",
                ]
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
        [(args.entries // len(SYMBOLS) // m, m), *[(paced_bars, per_bar)] * 4] for _, m in SYMBOLS
    ]
    inputs = streams_of(plans, "bench")
    with tempfile.TemporaryDirectory(prefix="s2-live-recompute-") as tmp:
        workdir = Path(tmp)
        data = build_lake(workdir / "lake", symbols=RECOMPUTE_SYMBOLS)  # the service's lake
        days = round((data.to_ts + 1 - data.from_ts) / 86_400_000)
        trigger, done = workdir / "recompute.on", workdir / "recompute.done"
        trigger_3, done_3 = workdir / "separate.on", workdir / "separate.done"
        port = free_port()
        extra_env = {
            "S2_API_PORT": str(port),
            "S2_API_TOKEN": TOKEN,
            "S2_RECOMPUTE_LOOKBACK": "0",  # no gap-fill task of its own
            "S2_BENCH_TRIGGER": str(trigger),
            "S2_BENCH_DONE": str(done),
            "S2_BENCH_LAKE": str(data.lake.root),
            "S2_BENCH_SYMBOLS": ",".join(data.symbols),
            "S2_BENCH_FROM": str(data.from_ts),
            "S2_BENCH_TO": str(data.to_ts),
        }
        print(
            f"input: {len(inputs)} fut streams, {args.entries:,} entries pre-loaded and drained, "
            f"then four phases of {paced_bars * per_bar * len(inputs):,} entries at "
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
                # 4. What `s2-feature run` does: tasks over its HTTP API, in a child process.
                api_tasks = ApiTasks(port, data)
                api_tasks.start()
                time.sleep(1.0)
                served = run_paced(server, inputs, 4, args.rate, idle_s=2.0)
                api_tasks.stop()
        tasks, tasks_3, tasks_4 = finished_tasks(done), finished_tasks(done_3), api_tasks.tasks
    print(describe("1. idle", idle))
    print(describe("2. while a 90-day recompute runs on a thread of the service", loaded))
    print("   recompute during phase 2: " + task_summary(tasks))
    print(describe("3. while the same recompute runs in a separate process", separate))
    print("   recompute during phase 3: " + task_summary(tasks_3))
    print(describe("4. while s2-feature run runs the task (HTTP API, child process)", served))
    print(
        "   recompute during phase 4: "
        + task_summary(tasks_4, "the last: its progress when the phase ended")
    )
    if api_tasks.errors:
        print("   task errors in phase 4: " + "; ".join(api_tasks.errors))
    a, b, c, d = p95(idle), p95(loaded), p95(separate), p95(served)
    if a and b and c and d:
        print(
            f"p95 / idle: recompute on a service thread {b / a:.2f}x ({b:.2f} ms vs {a:.2f} ms), "
            f"in a separate process {c / a:.2f}x ({c:.2f} ms), "
            f"as s2-feature run runs it {d / a:.2f}x ({d:.2f} ms)"
        )


if __name__ == "__main__":
    main()
