"""The recompute job's throughput next to a plain pandas + TA-Lib + `to_sql` script, in one run.

Run by `make bench` (or `uv run python benches/recompute_bench.py`). Figures, never assertions:
the machine is shared and noisy, so each side is the best of `--repeats` runs (by wall time), each
into a fresh SQLite file; the CPU time of the process during that run is printed too, a figure
other processes move less.

1. The project's recompute job (`plan` + `run_recompute`, as `s2-feature recompute` runs it):
   90 days of 1-minute base bars for three symbols, windows 1m,5m,1h, every feature, full
   documents upserted into SQLite (`force = true`), from a Parquet lake that also holds the
   warm-up history the job reads before the range.
2. `benches/pandas_talib_baseline.py` over the same lake and range: ATR(14) and the three RVs
   per w-bar, appended to SQLite with `to_sql`.

Targets (issue 9): the recompute in <= 5 s and <= 3x the script's time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benches.pandas_talib_baseline import run_baseline  # noqa: E402
from benches.recompute_data import RecomputeLake, build_lake  # noqa: E402

from s2feature.config.bundle import ConfigBundle  # noqa: E402
from s2feature.jobs import RecomputeRequest, plan, run_recompute  # noqa: E402
from s2feature.store.sqlite import SqliteStore  # noqa: E402


def recompute_once(data: RecomputeLake, db: Path) -> tuple[float, float, int]:
    """One whole task into a fresh SQLite file: (seconds, CPU seconds, signals written)."""
    bundle = ConfigBundle()
    store = SqliteStore(db)
    try:
        started, cpu = time.perf_counter(), time.process_time()
        request = RecomputeRequest(data.symbols, data.windows, data.from_ts, data.to_ts, True)
        task = plan(request, data.lake, bundle)
        result = run_recompute(task, store, data.lake, bundle, "recomp-bench")
        elapsed = time.perf_counter() - started
        return elapsed, time.process_time() - cpu, result.signals_written
    finally:
        store.close()


def baseline_once(data: RecomputeLake, db: Path) -> tuple[float, float, int]:
    started, cpu = time.perf_counter(), time.process_time()
    rows = run_baseline(data.lake.root, db, data.symbols, data.windows, data.from_ts, data.to_ts)
    return time.perf_counter() - started, time.process_time() - cpu, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument(
        "--profile", action="store_true", help="one extra recompute under cProfile: top functions"
    )
    args = parser.parse_args()
    arguments = "".join(f" {a}" for a in sys.argv[1:])
    print(f"\ncommand: uv run python benches/recompute_bench.py{arguments}  (make bench)")
    with tempfile.TemporaryDirectory(prefix="s2-recompute-bench-") as tmp:
        workdir = Path(tmp)
        data = build_lake(workdir / "lake", days=args.days)
        print(
            f"input: {len(data.symbols)} symbols x {data.bars_per_symbol:,} one-minute base bars "
            f"in a Parquet lake ({args.days} days of t0 plus the warm-up), derived from the real "
            f"BTC/USD hourly bars; windows {','.join(data.windows)}; SPEC default bundle"
        )
        ours, theirs = [], []
        written = rows = 0
        for i in range(args.repeats):
            *times, written = recompute_once(data, workdir / f"recompute-{i}.db")
            ours.append(times)
            *times, rows = baseline_once(data, workdir / f"baseline-{i}.db")
            theirs.append(times)
        (t_ours, cpu_ours), (t_theirs, cpu_theirs) = min(ours), min(theirs)
        ratio = t_ours / t_theirs
        every = ", ".join(f"{s:.2f}" for s, _ in ours)
        print(
            f"recompute job: {written:,} signals (every feature, full documents) into SQLite in "
            f"{t_ours:.2f} s, CPU {cpu_ours:.2f} s (best of {len(ours)}: {every}) = "
            f"{written / t_ours:,.0f} signals/s (target <= 5 s: "
            f"{'met' if t_ours <= 5 else 'NOT met'})"
        )
        every = ", ".join(f"{s:.2f}" for s, _ in theirs)
        print(
            f"pandas + TA-Lib + to_sql script (ATR and three RVs): {rows:,} rows in "
            f"{t_theirs:.2f} s, CPU {cpu_theirs:.2f} s (best of {len(theirs)}: {every})"
        )
        print(
            f"ratio recompute / script: {ratio:.2f}x, in CPU time {cpu_ours / cpu_theirs:.2f}x "
            f"(target <= 3x: {'met' if ratio <= 3 else 'NOT met'})"
        )
        if args.profile:
            profiler = cProfile.Profile()
            with profiler:
                recompute_once(data, workdir / "profiled.db")
            print("\nthe recompute under cProfile (its cost included), by cumulative time:")
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
