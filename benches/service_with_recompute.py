"""`s2-feature run` with a recompute job on a thread of the same process, for
`benches/live_under_recompute.py`.

The recompute API ran its tasks on a thread of the service process before they got a child
process of their own (`jobs/task_process.py`); this keeps that arrangement, without the HTTP
round trip, for comparison: the benchmark measures what the consumer loop suffers from it. The
thread waits for the file `S2_BENCH_TRIGGER` to appear, then runs whole recompute tasks
(`force = true`, the range `S2_BENCH_FROM`..`S2_BENCH_TO` of the symbols `S2_BENCH_SYMBOLS`
and windows 1m,5m,1h in the lake `S2_BENCH_LAKE`) one after the other into the service's own
SQLite file (`S2_DB_SQLITE_PATH`, a connection of its own), until the file is removed; the
running task stops at its next batch. After each task it appends `<signals written> <batches
done> <batches total> <seconds>` to `S2_BENCH_DONE`.

With `--recompute-only` it runs the same loop and nothing else: the recompute in a process of its
own, for comparison.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from s2feature.cli import main as cli_main
from s2feature.config.bundle import ConfigBundle
from s2feature.jobs import RecomputeRequest, plan, run_recompute
from s2feature.lake.parquet import BarLake
from s2feature.store.sqlite import SqliteStore


def _recompute_while_triggered(trigger: Path, done: Path) -> None:
    lake = BarLake(Path(os.environ["S2_BENCH_LAKE"]))
    symbols = tuple(os.environ["S2_BENCH_SYMBOLS"].split(","))
    request = RecomputeRequest(
        symbols,
        ("1m", "5m", "1h"),
        int(os.environ["S2_BENCH_FROM"]),
        int(os.environ["S2_BENCH_TO"]),
        force=True,
    )
    bundle = ConfigBundle()
    stop = threading.Event()

    def watch() -> None:
        while trigger.exists():
            time.sleep(0.05)
        stop.set()

    while not trigger.exists():
        time.sleep(0.05)
    threading.Thread(target=watch, daemon=True).start()
    store = SqliteStore(Path(os.environ["S2_DB_SQLITE_PATH"]))
    task = 0
    while not stop.is_set():
        task += 1
        started = time.perf_counter()
        result = run_recompute(
            plan(request, lake, bundle), store, lake, bundle, f"recomp-bench-{task}", stop=stop
        )
        with done.open("a") as out:
            elapsed = time.perf_counter() - started
            out.write(
                f"{result.signals_written} {result.batches_done} {result.batches_total} "
                f"{elapsed:.3f}\n"
            )
    store.close()


if __name__ == "__main__":
    files = Path(os.environ["S2_BENCH_TRIGGER"]), Path(os.environ["S2_BENCH_DONE"])
    if sys.argv[1:] == ["--recompute-only"]:  # the same job in a process of its own
        _recompute_while_triggered(*files)
        sys.exit(0)
    threading.Thread(target=_recompute_while_triggered, args=files, daemon=True).start()
    sys.exit(cli_main(["run"]))
