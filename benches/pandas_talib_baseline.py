"""The yardstick of the recompute benchmark: a plain pandas + TA-Lib + `to_sql` script.

For each symbol it reads the same lake Parquet files, aggregates the 1-minute bars to each window
with pandas, computes ATR(14) with TA-Lib and `rv_4h`, `rv_1d`, `rv_30d` with pandas time-based
rolling sums of squared log returns (annualised, no gap or coverage rules), and appends one row per
(symbol, window, t0) of the range to a SQLite table with `DataFrame.to_sql`. It is what a quick
notebook backfill of four numbers per bar costs, with none of the project's rules: no DQC, no
null rules, no documents, no upsert.

Run alone: `uv run python benches/pandas_talib_baseline.py LAKE_DIR DB --from MS --to MS`.
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import talib

RULES = {"1m": "1min", "5m": "5min", "1h": "1h"}
HORIZONS = {"rv_4h": "4h", "rv_1d": "1D", "rv_30d": "30D"}
YEAR = pd.Timedelta(days=365)


def _read(lake_dir: Path, symbol: str) -> pd.DataFrame:
    columns = ["open_time", "close_time", "high", "low", "close"]
    frame = pd.read_parquet(lake_dir / f"symbol={symbol}", columns=columns)
    frame = frame.sort_values("open_time", kind="stable")
    frame.index = pd.to_datetime(frame["open_time"], unit="ms")
    return frame


def _rv_columns(frame: pd.DataFrame) -> pd.DataFrame:
    squared = np.log(frame["close"]).diff() ** 2
    squared.index = pd.to_datetime(frame["close_time"], unit="ms")
    out = {}
    for name, span in HORIZONS.items():
        total = squared.rolling(span).sum()
        out[name] = np.sqrt(total * (YEAR / pd.Timedelta(span)))
    return pd.DataFrame(out)


def run_baseline(
    lake_dir: Path,
    db: Path,
    symbols: Sequence[str],
    windows: Sequence[str],
    from_ts: int,
    to_ts: int,
) -> int:
    """Compute and store the four columns for every symbol and window; the rows written."""
    rows = 0
    with sqlite3.connect(db) as con:
        for symbol in symbols:
            frame = _read(lake_dir, symbol)
            rv = _rv_columns(frame)
            for window in windows:
                wbars = frame.resample(RULES[window]).agg(
                    {"high": "max", "low": "min", "close": "last", "close_time": "last"}
                )
                wbars = wbars.dropna()
                atr = talib.ATR(
                    wbars["high"].to_numpy(),
                    wbars["low"].to_numpy(),
                    wbars["close"].to_numpy(),
                    timeperiod=14,
                )
                t0 = wbars["close_time"].astype("int64")
                out = pd.DataFrame({"symbol": symbol, "window": window, "t0": t0, "atr": atr})
                at_close = rv.reindex(pd.to_datetime(t0, unit="ms"))
                for name in HORIZONS:
                    out[name] = at_close[name].to_numpy()
                out = out[(out["t0"] >= from_ts) & (out["t0"] <= to_ts)]
                out.to_sql("features", con, if_exists="append", index=False)
                rows += len(out)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("lake_dir", type=Path)
    parser.add_argument("db", type=Path)
    parser.add_argument("--symbols", default="BTCUSDT,ETHUSDT,SOLUSDT")
    parser.add_argument("--windows", default="1m,5m,1h")
    parser.add_argument("--from", dest="from_ts", type=int, required=True)
    parser.add_argument("--to", dest="to_ts", type=int, required=True)
    args = parser.parse_args()
    rows = run_baseline(
        args.lake_dir,
        args.db,
        args.symbols.split(","),
        args.windows.split(","),
        args.from_ts,
        args.to_ts,
    )
    print(f"{rows} rows written to {args.db}")


if __name__ == "__main__":
    main()
