"""`s2-feature demo`: the feature engine on the shipped real BTC/USD hourly data.

Real: Coinbase BTC/USD hourly OHLCV 2017-07..2018-12 and EUR/USD hourly 2017 (the FX leg).
Derived (seeded, documented in `data/synth.py`): the book and funding fields, which no public
kline file carries. The demo runs both the online and the batch path, checks that they agree,
writes the snapshots to `<out-dir>/features.csv` and prints a summary.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from s2feature.config.bundle import ConfigBundle
from s2feature.demo_stream import run_stream_demo
from s2feature.domain import SeriesId
from s2feature.offline import (
    ComputeRequest,
    compare_paths,
    compute,
    load_inputs,
    summarise,
    write_table,
)

TICK_SEED = 7
SHOWN = (
    "atr_14",
    "atr_14_pct",
    "rv_1d",
    "rv_pctile_30d",
    "regime_label",
    "spread_bps",
    "liq_score",
    "rho_usdttwd_14",
)


def _utc(ms: int) -> str:
    return datetime.fromtimestamp((ms + 1) / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _fmt(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def run_demo(out_dir: Path, datasets: Path) -> int:
    req = ComputeRequest(
        klines=datasets / "Coinbase_BTCUSD_1h_2017-2018.csv",
        series=SeriesId("coinbase", "spot", "BTCUSD"),
        windows=("1h", "4h", "1d"),
        bundle=ConfigBundle(rev="demo", base_interval="1h"),
        fx_klines=datasets / "FOREX_EURUSD_1H_ASK.csv",
        derive_ticks_seed=TICK_SEED,
    )
    print("S2 feature demo — real Coinbase BTC/USD hourly bars, EUR/USD hourly as the FX leg")
    print(f"  book/funding fields derived with seed {TICK_SEED} (kline files carry none)\n")
    t = time.perf_counter()
    bars, fx = load_inputs(req)
    load_s = time.perf_counter() - t
    print(
        f"loaded {len(bars):,} BTC bars {_utc(int(bars.open_time[0]) - 1)} .. "
        f"{_utc(int(bars.close_time[-1]))} UTC and {len(fx or []):,} FX bars in {load_s:.2f} s"
    )

    t = time.perf_counter()
    batch = compute(req, bars, fx)
    batch_s = time.perf_counter() - t
    t = time.perf_counter()
    online = compute(ComputeRequest(**{**req.__dict__, "path": "online"}), bars, fx)
    online_s = time.perf_counter() - t
    agreement = compare_paths(online, batch)
    print(f"batch path:  {len(batch):,} snapshots in {batch_s:.2f} s")
    print(
        f"online path: {len(online):,} snapshots in {online_s:.2f} s "
        f"({online_s / len(bars) * 1e6:.1f} µs per base bar)"
    )
    verdict = "AGREE" if agreement.mismatches == 0 else "DISAGREE"
    print(
        f"online vs batch: {verdict} on {agreement.compared:,} feature values "
        f"(max relative difference {agreement.max_rel_diff:.1e}, "
        f"{agreement.mismatches} mismatches)\n"
    )

    print(f"{'window':<7}{'snapshots':>10}{'pass':>8}  top DQC reasons")
    for window, entry in summarise(batch).items():
        top = ", ".join(f"{r} x{n}" for r, n in entry["reasons"].most_common(3)) or "-"
        print(f"{window:<7}{entry['snapshots']:>10,}{entry['passed']:>8,}  {top}")

    print("\nlatest snapshot per window:")
    latest = {s.window: s for s in batch}
    for snap in latest.values():
        values = "  ".join(f"{name}={_fmt(snap.features.get(name))}" for name in SHOWN)
        print(f"  {snap.signal_id} (t0 {_utc(snap.t0)} UTC) pass={snap.dqc.passed}\n    {values}")

    out = out_dir / "features.csv"
    write_table(batch, out)
    print(f"\nwrote {len(batch):,} rows to {out}")
    streamed_ok = run_stream_demo(out_dir, datasets)
    return 0 if agreement.mismatches == 0 and streamed_ok else 1
