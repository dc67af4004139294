"""Offline computation over kline files: the `compute` and `demo` commands' working parts.

Not part of the pure core: it reads files, writes tables and measures time.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2feature.compute.batch import compute_batch
from s2feature.compute.engine import run_online
from s2feature.config.bundle import ConfigBundle
from s2feature.data.importers import load_klines
from s2feature.data.synth import derive_ticks
from s2feature.domain import BarArrays, FeatureValue, SeriesId, Snapshot

DQC_COLUMNS = ("dqc_pass", "dqc_missing", "dqc_jump", "dqc_bounds", "dqc_reasons")


@dataclass(frozen=True)
class ComputeRequest:
    klines: Path
    series: SeriesId
    windows: tuple[str, ...]
    bundle: ConfigBundle
    fx_klines: Path | None = None
    derive_ticks_seed: int | None = None
    path: str = "batch"  # "batch" or "online"


def load_inputs(req: ComputeRequest) -> tuple[BarArrays, BarArrays | None]:
    bars = load_klines(req.klines, req.bundle.base_interval)
    if req.derive_ticks_seed is not None:
        bars = derive_ticks(bars, seed=req.derive_ticks_seed, market=req.series.market)
    fx = load_klines(req.fx_klines, req.bundle.base_interval) if req.fx_klines else None
    return bars, fx


def compute(req: ComputeRequest, bars: BarArrays, fx: BarArrays | None) -> list[Snapshot]:
    if req.path == "online":
        return run_online(bars.to_bars(), req.series, req.windows, req.bundle, fx)
    return compute_batch(bars, req.series, req.windows, req.bundle, fx)


def feature_columns(snapshots: Sequence[Snapshot]) -> list[str]:
    return list(snapshots[0].features) if snapshots else []


def _cell(value: FeatureValue) -> Any:
    if value is None:
        return ""
    return value


def snapshot_rows(snapshots: Sequence[Snapshot]) -> tuple[list[str], list[list[Any]]]:
    features = feature_columns(snapshots)
    header = ["signal_id", "symbol", "window", "t0", *features, *DQC_COLUMNS]
    rows = []
    for s in snapshots:
        rows.append(
            [
                s.signal_id,
                s.series.symbol,
                s.window,
                s.t0,
                *(_cell(s.features[name]) for name in features),
                s.dqc.passed,
                s.dqc.missing,
                s.dqc.jump,
                s.dqc.bounds,
                ";".join(s.dqc.reasons),
            ]
        )
    return header, rows


def write_table(snapshots: Sequence[Snapshot], out: Path) -> None:
    """CSV (empty cell for null) or Parquet (typed columns, null for null), chosen by suffix."""
    header, rows = snapshot_rows(snapshots)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns: dict[str, list[Any]] = {name: [] for name in header}
        for row in rows:
            for name, value in zip(header, row, strict=True):
                columns[name].append(None if value == "" else value)
        pq.write_table(pa.table(columns), out)
        return
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            writer.writerow([repr(v) if isinstance(v, float) else v for v in row])


@dataclass(frozen=True)
class Agreement:
    compared: int
    max_rel_diff: float
    mismatches: int


def compare_paths(a: Sequence[Snapshot], b: Sequence[Snapshot], rtol: float = 1e-9) -> Agreement:
    """How closely two runs agree, feature by feature (same signal ids expected)."""
    by_id = {s.signal_id: s for s in b}
    worst, compared = 0.0, 0
    bad = len({s.signal_id for s in a} ^ by_id.keys())  # snapshots only one side has
    for s in a:
        other = by_id.get(s.signal_id)
        if other is None:
            continue
        for name, x in s.features.items():
            y = other.features.get(name)
            compared += 1
            if isinstance(x, float) and isinstance(y, float):
                diff = abs(x - y) / max(abs(x), abs(y), 1e-300) if x != y else 0.0
                worst = max(worst, diff)
                bad += int(not math.isclose(x, y, rel_tol=rtol, abs_tol=1e-12))
            else:
                bad += int(x != y)
        bad += int(s.dqc != other.dqc)
    return Agreement(compared, worst, bad)


def summarise(snapshots: Sequence[Snapshot]) -> dict[str, Any]:
    per_window: dict[str, dict[str, Any]] = {}
    for s in snapshots:
        entry = per_window.setdefault(s.window, {"snapshots": 0, "passed": 0, "reasons": Counter()})
        entry["snapshots"] += 1
        entry["passed"] += int(s.dqc.passed)
        entry["reasons"].update(
            r.split(":", 2)[0] + ":" + r.split(":", 2)[1] for r in s.dqc.reasons
        )
    return per_window
