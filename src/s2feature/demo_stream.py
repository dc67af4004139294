"""The streaming half of `s2-feature demo`: real BTC/USD bars as S1 events through the service.

The last days the real BTC/USD and EUR/USD hourly files share are split into one-minute bars and
S1 events (seeded, see `data/synth.py`), written to two Redis streams on a private
`redis-server` started for the demo: the symbol's, and the FX series' (`rho.fx_symbol`, USDTTWD,
with EUR/USD standing in), consumed by the service in drain mode (SQLite store and lake in the
output directory). The symbol's outputs, `rho_*` included, are checked against a recompute from
the lake (which reads the FX series' partition).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import redis

from s2feature.compute.batch import compute_batch
from s2feature.compute.correlation import RHO, RHO_Z
from s2feature.data.importers import load_klines
from s2feature.data.synth import derive_finer_bars, derive_ticks, events_from_bars
from s2feature.domain import DAY_MS, BarArrays, SeriesId
from s2feature.lake.parquet import BarLake
from s2feature.service.runner import Service
from s2feature.service.settings import load_settings
from s2feature.store.sqlite import SqliteStore
from s2feature.streams.client import connect
from s2feature.streams.keys import events_key, last_key

SERIES = SeriesId("coinbase", "fut", "BTCUSD")
FX = SeriesId("max", "spot", "USDTTWD")  # the bundle's rho.fx_symbol; EUR/USD stands in
DAYS = 3
EVENTS_PER_BAR = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def private_redis() -> Iterator[int]:
    """A throw-away redis-server on a free local port (nothing saved to disk)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; `make setup` installs it")
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="s2-demo-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _last_days(bars: BarArrays, end: int) -> BarArrays:
    """The bars closing in the DAYS days up to `end`."""
    lo = int(np.searchsorted(bars.close_time, end - DAYS * DAY_MS, side="right"))
    hi = int(np.searchsorted(bars.close_time, end, side="right"))
    return bars.slice(lo, hi)


def run_stream_demo(out_dir: Path, datasets: Path) -> bool:
    hourly = load_klines(datasets / "Coinbase_BTCUSD_1h_2017-2018.csv", "1h")
    fx_hourly = load_klines(datasets / "FOREX_EURUSD_1H_ASK.csv", "1h")
    end = min(int(hourly.close_time[-1]), int(fx_hourly.close_time[-1]))
    recent = _last_days(hourly, end)
    minute = derive_ticks(derive_finer_bars(recent, 60_000, seed=5), seed=6, market="fut")
    entries = events_from_bars(minute, SERIES, EVENTS_PER_BAR, seed=8)
    fx_minute = derive_ticks(
        derive_finer_bars(_last_days(fx_hourly, end), 60_000, seed=15), seed=16, market="spot"
    )
    fx_entries = events_from_bars(fx_minute, FX, EVENTS_PER_BAR, seed=18)
    work = out_dir / "stream"
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n--- streaming: {len(entries):,} S1 events from the {DAYS} days of real bars up to "
        f"{_utc(end)} UTC (split into {len(minute):,} one-minute bars, seeded), and "
        f"{len(fx_entries):,} FX events on {FX.stream_key} (EUR/USD standing in for {FX.symbol})"
    )
    with private_redis() as port:
        client = redis.Redis(port=port)
        pipe = client.pipeline(transaction=False)
        for fields in entries:
            pipe.xadd(SERIES.stream_key, fields)  # type: ignore[arg-type]
        for fields in fx_entries:
            pipe.xadd(FX.stream_key, fields)  # type: ignore[arg-type]
        pipe.execute()
        env = {
            "S2_REDIS_ADDRESSES": f"127.0.0.1:{port}",
            "S2_SYMBOLS": ",".join(f"{s.venue}:{s.market}:{s.symbol}" for s in (SERIES, FX)),
            "S2_WINDOWS": "1m,5m,1h",
            "S2_CONSUMER_NAME": "demo",
            "S2_LAKE_DIR": str(work / "lake"),
        }
        settings = load_settings(env)
        store = SqliteStore(work / "s2.db")
        service = Service(settings, connect(settings.redis), store, BarLake(work / "lake"))
        started = time.perf_counter()
        service.run(idle_exit_s=0.5)
        elapsed = time.perf_counter() - started - 0.5
        out_entries: Any = client.xrange(events_key(SERIES.symbol))
        emitted = [json.loads(fields[b"data"]) for _, fields in out_entries]
        pending = sum(client.xpending(s.stream_key, "s2")["pending"] for s in (SERIES, FX))
        late = service.fx.gates[SERIES.stream_key].late if service.fx is not None else 0
        last = json.loads(client.get(last_key(SERIES.symbol)) or b"{}")
        stored = store.count_signals()
        fails = len(store.strategy_events("FEATURE_DQC_FAIL"))
        store.close()
        client.close()
    lake = BarLake(work / "lake")
    lake_bars = lake.read(SERIES.symbol)
    fx_bars = lake.read(FX.symbol)
    recomputed = compute_batch(lake_bars, SERIES, settings.windows, settings.bundle, fx_bars)
    print(
        f"service drained both streams in {elapsed:.1f} s "
        f"({(len(entries) + len(fx_entries)) / elapsed:,.0f} events/s): "
        f"{len(emitted):,} snapshots emitted to {events_key(SERIES.symbol)}, {stored:,} stored, "
        f"{fails:,} FEATURE_DQC_FAIL events (warm-up: rv_1d needs a day), {pending} pending"
    )
    latest = {w: snap.get("signal_id") for w, snap in last.get("windows", {}).items()}
    print(f"{last_key(SERIES.symbol)}: {latest}")
    with_rho = sum(p["features"].get(RHO) is not None for p in emitted)
    with_z = sum(p["features"].get(RHO_Z) is not None for p in emitted)
    print(
        f"FX leg: {RHO} non-null in {with_rho:,} and {RHO_Z} in {with_z:,} of the "
        f"{len(emitted):,} emitted snapshots; {late} fx_late"
    )
    passing = [s for s in recomputed if s.dqc.passed]
    worst = _max_relative_difference(emitted, [s.to_payload("recompute", 0) for s in passing])
    agree = worst is not None and worst <= 1e-9 and pending == 0 and with_rho > 0
    print(
        f"recompute from the lake ({len(lake_bars):,} bars): {len(passing):,} passing snapshots; "
        f"live vs recompute: {'AGREE' if agree else 'DISAGREE'} "
        f"(max relative difference {'n/a' if worst is None else f'{worst:.1e}'})"
    )
    return agree


def _max_relative_difference(
    live: list[dict[str, Any]], recomputed: list[dict[str, Any]]
) -> float | None:
    """Largest relative feature difference, or None when the snapshot sets differ."""
    if [p["signal_id"] for p in live] != [p["signal_id"] for p in recomputed]:
        return None
    worst = 0.0
    for a, b in zip(live, recomputed, strict=True):
        for name, x in a["features"].items():
            y = b["features"].get(name)
            if isinstance(x, float) and isinstance(y, float):
                worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-300))
            elif x != y:
                return None
    return worst


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime((ms + 1) / 1000))
