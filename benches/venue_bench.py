"""A whole venue on one instance: memory, start-up time and checkpoint volume at N symbols.

Run by `make bench` (10 and 100 symbols) or `uv run python benches/venue_bench.py --symbols
10,100,400`. Figures and targets are printed, never asserted: the machine is shared and noisy.

Scenario (`Venue`, reused by `benches/venue_soak.py`): N fut symbols, each `--days` days of
one-minute base bars laid into the lake through the project's own writer (`BarLake.append`), then
`--live-minutes` minutes of S1 entries per symbol in its stream (`--per-bar` entries per bar). The
bars of symbol i are the real Coinbase BTC/USD hourly bars from a stretch of their own, split
into minutes by the seeded `s2feature.data.synth`. The lake is built once per work directory and
reused by later runs (`--workdir`, default under the system temp directory).

For each N, `s2-feature run --burst` in its own process on a fresh Redis server, in an
environment made as the image makes its own (`--env image`, the default: `uv sync --frozen
--no-dev` into `<workdir>/service-env`, bytecode compiled; `--env dev` runs it in the bench's own
environment, with the dev dependencies, pandas among them, which pyarrow then imports):

1. cold start: no checkpoint, warm-up from the lake, then the live entries are drained. Peak RSS
   of the service process (its `VmHWM`, sampled until it exits) and of the largest process of
   its tree (`ru_maxrss`: the service, or the recompute child of the gap fill the service starts
   at its first full hour; a process of its own, so the pod holds both while it runs), the CPU
   time (user + system, the recompute child's included), the time until every symbol is
   restored (its `restored` log line), the drain rate of the live entries as a ratio to a floor
   (XREADGROUP + decode + XACK of the same entries, as in `benches/service_bench.py`);
2. checkpoint bytes: `STRLEN feat:{cache}:<symbol>` after the run, per symbol, and the bytes/s
   that N active symbols write at `S2_CHECKPOINT_MS`;
3. restart from checkpoints: the same command again on the same Redis and lake, nothing new to
   read: time until every symbol is restored, peak RSS.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "benches"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))  # `tests.support` and the sibling service bench

from tests.support.redis_servers import RedisServer  # noqa: E402

from s2feature.data.importers import load_klines  # noqa: E402
from s2feature.data.synth import derive_finer_bars, derive_ticks, events_from_bars  # noqa: E402
from s2feature.domain import BarArrays, SeriesId  # noqa: E402
from s2feature.lake.parquet import BarLake  # noqa: E402
from s2feature.streams.keys import cache_key  # noqa: E402
from service_bench import floor_pass  # noqa: E402

MINUTE_MS = 60_000
DAY_MINUTES = 1440
WINDOWS = "1m,5m,1h"
CHECKPOINT_MS = 5000  # the service's default S2_CHECKPOINT_MS
MB = 1024 * 1024
# Targets of the venue scale (printed next to each figure, not asserted).
RSS_TARGET_MB = {100: 256.0, 400: 1024.0}
CHECKPOINT_TARGET_BYTES = 32 * 1024
COLD_START_TARGET_S = {100: 15.0}
RESTART_TARGET_S = {100: 5.0}


def symbol_name(index: int) -> str:
    return f"V{index:03d}USDT"


@dataclass(frozen=True)
class Venue:
    """N symbols' minute bars: the first `days` days go to the lake, the rest to the streams."""

    workdir: Path
    symbols: int
    days: int
    live_minutes: int
    per_bar: int

    @property
    def lake_dir(self) -> Path:
        """The history only, laid once and never written by a service run (each run works on a
        copy of it: a service appends its live bars to its lake)."""
        return self.workdir / f"history-{self.days}d-{self.live_minutes}m"

    def lake_copy(self, target: Path) -> Path:
        """A copy of the history of the first `symbols` symbols, for one service run."""
        for index in range(self.symbols):
            name = f"symbol={symbol_name(index)}"
            shutil.copytree(self.lake_dir / name, target / name)
        return target

    def series(self, index: int) -> SeriesId:
        return SeriesId("venue", "fut", symbol_name(index))

    def minute_bars(self, index: int) -> BarArrays:
        """History and live minutes of symbol `index`, one stretch of the hourly data each
        (wrapping round the file), seeded by the index."""
        hourly = load_klines(ROOT / "datasets" / "Coinbase_BTCUSD_1h_2017-2018.csv", "1h")
        minutes = self.days * DAY_MINUTES + self.live_minutes + 1
        hours = -(-minutes // 60)
        start = (index * 97) % (len(hourly) - hours)
        stretch = hourly.slice(start, start + hours)
        bars = derive_finer_bars(stretch, MINUTE_MS, seed=index + 1).slice(0, minutes)
        bars = derive_ticks(bars, seed=index + 1001, market="fut")
        # Every symbol on the same clock (a venue's), whatever stretch its prices come from.
        shift = _venue_start_ms(self.days) - int(bars.open_time[0])
        return _shifted(bars, shift)

    def ensure_lake(self) -> None:
        """Lay the history of the first `symbols` symbols into the lake (those already there are
        kept: a lake built for 400 serves 10 and 100)."""
        lake = BarLake(self.lake_dir)
        have = set(lake.symbols())
        history = self.days * DAY_MINUTES
        started, added = time.perf_counter(), 0
        for index in range(self.symbols):
            if symbol_name(index) in have:
                continue
            bars = self.minute_bars(index).slice(0, history)
            lake.append(symbol_name(index), bars.to_bars())  # one part per UTC day
            added += 1
        if added:
            print(
                f"  lake: {added} symbols x {self.days} days laid in "
                f"{time.perf_counter() - started:.0f} s ({self.lake_dir})",
                flush=True,
            )

    def live_entries(self, index: int) -> list[dict[str, str]]:
        """The live minutes as S1 entries; the first one finalises the lake's last bar."""
        bars = self.minute_bars(index)
        history = self.days * DAY_MINUTES
        live = bars.slice(history - 1, len(bars))
        entries = events_from_bars(live, self.series(index), self.per_bar, seed=index + 7)
        return entries[self.per_bar :]  # the last lake bar's own entries are in the lake

    def preload(self, server: RedisServer) -> int:
        client = server.client()
        total = 0
        for index in range(self.symbols):
            entries = self.live_entries(index)
            key = self.series(index).stream_key
            with client.pipeline(transaction=False) as pipe:
                for fields in entries:
                    pipe.xadd(key, fields)  # type: ignore[arg-type]
                pipe.execute()
            total += len(entries)
        return total

    def env(self, server: RedisServer, workdir: Path, consumer: str, lake: Path) -> dict[str, str]:
        return {
            "S2_REDIS_ADDRESSES": f"{server.host}:{server.port}",
            "S2_SYMBOLS": ",".join(f"venue:fut:{symbol_name(i)}" for i in range(self.symbols)),
            "S2_WINDOWS": WINDOWS,
            "S2_CONSUMER_NAME": consumer,
            "S2_DB_SQLITE_PATH": str(workdir / "s2.db"),
            "S2_LAKE_DIR": str(lake),
            "S2_LOG_LEVEL": "INFO",
            "S2_API_PORT": "0",
            "S2_CHECKPOINT_MS": str(CHECKPOINT_MS),
        }


def _venue_start_ms(days: int) -> int:
    # A fixed UTC midnight (2023-11-14), so that every run lays the same lake.
    return 1_699_920_000_000 - days * 86_400_000


def _shifted(bars: BarArrays, shift: int) -> BarArrays:
    values = dict(bars.__dict__)
    values["open_time"] = bars.open_time + shift
    values["close_time"] = bars.close_time + shift
    return BarArrays(**values)


@dataclass
class ServiceRun:
    wall_s: float = 0.0
    restored_s: float = 0.0  # from launch until the last `restored` line
    stopped_s: float = 0.0  # from launch until the `stopped` line
    peak_rss_mb: float = 0.0  # the service process's VmHWM
    tree_peak_rss_mb: float = 0.0  # ru_maxrss: the largest process of the service's tree
    cpu_s: float = 0.0  # the child's user + system time, whole run
    restored: int = 0
    how: list[str] = field(default_factory=list)


def run_service(
    env: dict[str, str], burst_s: float, log_path: Path, python: str = sys.executable
) -> ServiceRun:
    """`s2-feature run --burst` in a child process of `python`; stamps its log lines as they
    come."""
    command = [python, "-m", "s2feature.cli", "run", "--burst", str(burst_s)]
    result = ServiceRun()
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert process.stderr is not None
    with open(log_path, "w") as sink:

        def read() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                sink.write(line)
                now = time.perf_counter() - started
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                event = record.get("event")
                if event == "restored":
                    result.restored += 1
                    result.restored_s = now
                    result.how.append(str(record.get("message", record.get("msg", ""))))
                elif event == "stopped":
                    result.stopped_s = now

        def sample_high_water_mark() -> None:
            # The service's own peak, without its recompute child's: VmHWM only grows, so the
            # last reading before it exits is the peak up to then.
            status = Path(f"/proc/{process.pid}/status")
            while process.returncode is None:
                try:
                    text = status.read_text()
                except OSError:
                    return  # exited
                for line in text.splitlines():
                    if line.startswith("VmHWM:"):
                        result.peak_rss_mb = int(line.split()[1]) / 1024
                time.sleep(0.02)

        reader = threading.Thread(target=read)
        reader.start()
        sampler = threading.Thread(target=sample_high_water_mark, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        reader.join()
        sampler.join()
    result.wall_s = time.perf_counter() - started
    result.tree_peak_rss_mb = usage.ru_maxrss / 1024  # kilobytes on Linux
    result.cpu_s = usage.ru_utime + usage.ru_stime
    if process.returncode != 0:
        raise RuntimeError(f"s2-feature run exited {process.returncode}, see {log_path}")
    return result


@dataclass
class VenueFigures:
    symbols: int
    entries: int
    cold: ServiceRun
    restart: ServiceRun
    checkpoint_bytes: list[int]
    floor_rate: float
    drain_rate: float


def measure(venue: Venue, burst_s: float, python: str) -> VenueFigures:
    venue.ensure_lake()
    with tempfile.TemporaryDirectory(prefix="venue-run-", dir=venue.workdir) as tmp:
        workdir = Path(tmp)
        with RedisServer(workdir / "redis", appendonly=False) as server:
            entries = venue.preload(server)
            client = server.client()
            keys = [venue.series(i) for i in range(venue.symbols)]
            floor_rate = max(
                floor_pass(client, _stream_inputs(keys), f"floor{k}") for k in range(2)
            )
            env = venue.env(server, workdir, "venue-1", venue.lake_copy(workdir / "lake"))
            cold = run_service(env, burst_s, workdir / "cold.log", python)
            checkpoint_bytes = [int(client.strlen(cache_key(s.symbol))) for s in keys]
            restart = run_service(env, burst_s, workdir / "restart.log", python)
            if cold.restored != venue.symbols or restart.restored != venue.symbols:
                raise RuntimeError(f"restored {cold.restored}/{restart.restored} symbols")
            drain_s = max(1e-9, cold.stopped_s - burst_s - cold.restored_s)
            return VenueFigures(
                venue.symbols,
                entries,
                cold,
                restart,
                checkpoint_bytes,
                floor_rate,
                entries / drain_s,
            )


@dataclass(frozen=True)
class _Stream:
    series: SeriesId


def _stream_inputs(series: list[SeriesId]) -> list[Any]:
    return [_Stream(s) for s in series]


def target(value: float, limits: dict[int, float] | float | None, n: int, unit: str) -> str:
    limit = limits.get(n) if isinstance(limits, dict) else limits
    if limit is None:
        return ""
    return f"(target <= {limit:g} {unit}: {'met' if value <= limit else 'NOT met'})"


def print_figures(figures: list[VenueFigures], venue_days: int) -> None:
    print(
        f"\nvenue scale: windows {WINDOWS}, {venue_days} days of 1m history per symbol, "
        f"S2_CHECKPOINT_MS {CHECKPOINT_MS}"
    )
    three = next((f for f in figures if f.symbols <= 3), None)
    for f in figures:
        n = f.symbols
        mean_ckpt = float(np.mean(f.checkpoint_bytes))
        print(f"  {n} symbols ({f.entries:,} live entries)")
        print(
            f"    peak RSS, cold start          {f.cold.peak_rss_mb:8.0f} MB  "
            f"{target(f.cold.peak_rss_mb, RSS_TARGET_MB, n, 'MB')}"
        )
        print(f"    peak RSS, restart             {f.restart.peak_rss_mb:8.0f} MB")
        print(
            f"    largest process of the tree   {f.cold.tree_peak_rss_mb:8.0f} MB / "
            f"{f.restart.tree_peak_rss_mb:.0f} MB (cold / restart; the gap fill's recompute "
            "child when larger)"
        )
        print(
            f"    CPU of the run, cold/restart  {f.cold.cpu_s:8.1f} s / {f.restart.cpu_s:.1f} s "
            f"(wall {f.cold.wall_s:.1f} s / {f.restart.wall_s:.1f} s)"
        )
        print(
            f"    cold start (all restored)     {f.cold.restored_s:8.1f} s   "
            f"{target(f.cold.restored_s, COLD_START_TARGET_S, n, 's')}"
        )
        print(
            f"    restart from checkpoints      {f.restart.restored_s:8.1f} s   "
            f"{target(f.restart.restored_s, RESTART_TARGET_S, n, 's')}"
        )
        print(
            f"    checkpoint per symbol         {mean_ckpt / 1024:8.1f} KB  "
            f"{target(mean_ckpt, float(CHECKPOINT_TARGET_BYTES), n, 'B')}"
        )
        rate = mean_ckpt * n / (CHECKPOINT_MS / 1000)
        print(f"    checkpoints, all active       {rate / MB:8.2f} MB/s")
        ratio = f.drain_rate / f.floor_rate
        line = (
            f"    drain {f.drain_rate:,.0f} entries/s, floor {f.floor_rate:,.0f}: ratio {ratio:.2f}"
        )
        if three is not None and three is not f:
            base = three.drain_rate / three.floor_rate
            line += f" ({three.symbols}-stream ratio {base:.2f}: "
            line += f"{'met' if ratio >= base else 'NOT met'})"
        print(line, flush=True)


def service_python(choice: str, workdir: Path) -> str:
    """The interpreter the service runs under. `image`: an environment made as the image makes
    its own (`uv sync --frozen --no-dev`, bytecode compiled), with this checkout's source;
    `dev`: the bench's own environment (dev dependencies installed), bytecode compiled too.

    Both matter to the figures. With `PYTHONDONTWRITEBYTECODE` set and no cached bytecode, every
    launch compiles its thousand-odd modules from source again: seconds a deployed instance never
    spends. And pyarrow imports pandas on its first conversion when pandas is installed (a dev
    dependency only): tens of megabytes a deployed instance never holds."""
    started = time.perf_counter()
    if choice == "image":
        env_dir = workdir / "service-env"
        subprocess.run(
            # `uv run` names its own executable in UV (make's uv need not be on the PATH).
            [
                os.environ.get("UV", "uv"),
                "sync",
                "--frozen",
                "--no-dev",
                "--compile-bytecode",
                "-q",
            ],
            cwd=ROOT,
            env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(env_dir)},
            check=True,
        )
        python, directories = str(env_dir / "bin" / "python"), [ROOT / "src"]
    else:
        python = sys.executable
        directories = [Path(p) for p in site.getsitepackages()] + [ROOT / "src"]
    for directory in directories:
        compileall.compile_dir(directory, quiet=1, workers=0)
    print(
        f"  service environment: {choice} ({python}), bytecode compiled "
        f"({time.perf_counter() - started:.1f} s)",
        flush=True,
    )
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", default="3,10,100", help="comma-separated symbol counts")
    parser.add_argument("--days", type=int, default=31)
    parser.add_argument("--live-minutes", type=int, default=60)
    parser.add_argument("--per-bar", type=int, default=3)
    parser.add_argument("--burst", type=float, default=1.0, help="idle seconds before exit")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "s2feature-venue-bench",
        help="where the lake is kept between runs",
    )
    parser.add_argument(
        "--env",
        choices=("image", "dev"),
        default="image",
        help="the service's environment: as the image's (no dev dependencies), or the bench's",
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    python = service_python(args.env, args.workdir)
    figures = []
    for n in sorted(int(x) for x in args.symbols.split(",")):
        venue = Venue(args.workdir, n, args.days, args.live_minutes, args.per_bar)
        print(f"venue: {n} symbols ...", flush=True)
        figures.append(measure(venue, args.burst, python))
        print_figures(figures[-1:], args.days)
    print_figures(figures, args.days)


if __name__ == "__main__":
    main()
