"""Soak: `s2-feature run` at a steady rate over a venue's symbols; prints the RSS curve and the
end-to-end latency. Run by `make soak` (10 minutes at 1,000 entries/s over 100 symbols), not in CI.

The venue is the scenario of `benches/venue_bench.py` (its lake, its symbols), with 10 entries per
one-minute bar, so each symbol closes a bar every second at 1,000 entries/s over 100 symbols.
Entries are generated a few bars at a time, so the producer's own memory stays flat too.

Latency: the stamp when a blocking XREAD returns a `feat:events` entry, minus the stamp taken
just before the XADD of the entry that finalised its bar (the first entry of the next bar).
RSS: the service's VmRSS every few seconds; growth is measured from the end of minute one.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "benches"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from tests.support.redis_servers import RedisServer, wait_for  # noqa: E402

from s2feature.data.synth import events_from_bars  # noqa: E402
from s2feature.streams.keys import events_key  # noqa: E402
from venue_bench import DAY_MINUTES, Venue  # noqa: E402

CHUNK_BARS = 6


def entries_in_time_order(venue: Venue) -> Iterator[tuple[int, str, dict[str, str], int | None]]:
    """(symbol index, stream key, fields, open time of the bar it finalises or None), round robin
    over the symbols, a few bars at a time."""
    bars = [venue.minute_bars(i) for i in range(venue.symbols)]
    history = venue.days * DAY_MINUTES
    for start in range(history, history + venue.live_minutes - CHUNK_BARS, CHUNK_BARS):
        chunks = []
        for index in range(venue.symbols):
            part = bars[index].slice(start, start + CHUNK_BARS)
            entries = events_from_bars(part, venue.series(index), venue.per_bar, seed=start + index)
            chunks.append(entries)
        for position in range(CHUNK_BARS * venue.per_bar):
            bar, offset = divmod(position, venue.per_bar)
            for index in range(venue.symbols):
                opens = int(bars[index].open_time[start + bar]) if offset == 0 else None
                key = venue.series(index).stream_key
                yield index, key, chunks[index][position], opens


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="entries per second")
    parser.add_argument("--days", type=int, default=31)
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "s2feature-venue-bench"
    )
    args = parser.parse_args()
    per_bar = 10
    bars_needed = int(args.rate * args.minutes * 60 / args.symbols / per_bar) + 2 * CHUNK_BARS
    args.workdir.mkdir(parents=True, exist_ok=True)
    # The lake holds the history only; its directory name is that of the bench's 60-minute venue.
    lake_venue = Venue(args.workdir, args.symbols, args.days, 60, 3)
    lake_venue.ensure_lake()
    venue = Venue(args.workdir, args.symbols, args.days, bars_needed, per_bar)
    with (
        tempfile.TemporaryDirectory(prefix="venue-soak-", dir=args.workdir) as tmp,
        RedisServer(Path(tmp) / "redis", appendonly=False) as server,
    ):
        workdir = Path(tmp)
        env = {**os.environ, **lake_venue.env(server, workdir, "soak"), "S2_LOG_LEVEL": "WARNING"}
        log = open(workdir / "service.log", "wb")  # noqa: SIM115 - open while the service runs
        process = subprocess.Popen(
            [sys.executable, "-m", "s2feature.cli", "run"], cwd=ROOT, env=env, stderr=log
        )
        admin = server.client(decode_responses=True)

        def serving() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"s2-feature run exited early, see {workdir / 'service.log'}")
            clients: Any = admin.client_list()
            return any(c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "") for c in clients)

        wait_for(serving, timeout_s=600, what="s2-feature run to wait for input")
        print(
            f"soak: {args.symbols} symbols restored, RSS {rss_mb(process.pid):.0f} MB", flush=True
        )
        sent_at: dict[tuple[int, int], float] = {}
        arrivals: list[tuple[str, str, float]] = []
        stop = threading.Event()
        reader = server.client(decode_responses=True)
        keys = {events_key(venue.series(i).symbol): i for i in range(venue.symbols)}

        def listen() -> None:
            last_ids = dict.fromkeys(keys, "$")
            while not stop.is_set():
                reply: Any = reader.xread(last_ids, block=100)  # type: ignore[arg-type]
                now = time.perf_counter()
                for key, entries in reply or []:
                    arrivals.extend((key, entry_id, now) for entry_id, _ in entries)
                    last_ids[key] = entries[-1][0]

        listener = threading.Thread(target=listen)
        listener.start()
        time.sleep(0.5)
        rss: list[tuple[float, float]] = []
        client = server.client()
        started = time.perf_counter()
        duration = args.minutes * 60
        next_sample = 0.0
        try:
            for i, (index, key, fields, opens) in enumerate(entries_in_time_order(venue)):
                due = started + i / args.rate
                now = time.perf_counter()
                if now < due:
                    time.sleep(due - now)
                    now = time.perf_counter()
                if now - started >= duration:
                    break
                if opens is not None:
                    sent_at[(index, opens)] = now
                client.xadd(key, fields)  # type: ignore[arg-type]
                if now - started >= next_sample:
                    rss.append((now - started, rss_mb(process.pid)))
                    next_sample += 5.0
            time.sleep(2.0)
            rss.append((time.perf_counter() - started, rss_mb(process.pid)))
        finally:
            stop.set()
            listener.join()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
            log.close()
    latencies = []
    for key, entry_id, arrived in arrivals:
        t0 = int(entry_id.partition("-")[0])
        sent = sent_at.get((keys[key], t0 + 1))
        if sent is not None:
            latencies.append((arrived - sent) * 1e3)
    print(f"soak: {args.minutes:g} min at {args.rate:,.0f} entries/s over {args.symbols} symbols")
    print("  RSS curve (s, MB):")
    for minute in range(int(args.minutes) + 1):
        points = [mb for t, mb in rss if minute * 60 <= t < (minute + 1) * 60]
        if points:
            print(f"    minute {minute:2d}: {points[0]:6.0f} .. {points[-1]:6.0f} MB")
    after_one = [mb for t, mb in rss if t >= 60.0]
    if len(after_one) >= 2:
        growth = (after_one[-1] - after_one[0]) / after_one[0]
        verdict = "met" if growth < 0.05 else "NOT met"
        print(f"  RSS growth after minute one: {growth:+.1%} (target < 5%: {verdict})")
    if latencies:
        p50, p95, p99 = np.percentile(np.asarray(latencies), [50, 95, 99]).tolist()
        verdict = "met" if p95 <= 10.0 else "NOT met"
        print(
            f"  end-to-end latency over {len(latencies):,} emits: p50 {p50:.1f} ms, "
            f"p95 {p95:.1f} ms (target <= 10 ms: {verdict}), p99 {p99:.1f} ms"
        )


if __name__ == "__main__":
    main()
