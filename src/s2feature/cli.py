"""Command line entry point `s2-feature`.

Exit codes: 0 success (also a service stopped by SIGTERM/SIGINT); 2 a bad setting, argument,
config bundle or input file, with one line on stderr naming it; 1 anything else, with its
traceback (a bug or an environment failure, never hidden behind a one-line message). `regime`
also exits 3 when the lake holds too little history (nothing written) and 4 when Redis holds a
newer state than the one computed (nothing written).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from s2feature.config.bundle import ConfigBundle
from s2feature.config_source.files import load_bundle
from s2feature.domain import WINDOWS, SeriesId
from s2feature.errors import ConfigurationError

if TYPE_CHECKING:
    from s2feature.jobs.cli_support import JobEnvironment

DATASETS = Path(__file__).resolve().parents[2] / "datasets"


class UsageError(ConfigurationError):
    """A bad argument or input file: reported on stderr, exit code 2."""


def _windows(text: str) -> tuple[str, ...]:
    items = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in items if w not in WINDOWS]
    if not items or unknown:
        raise argparse.ArgumentTypeError(
            f"windows must be a comma-separated subset of {','.join(WINDOWS)}; got {text!r}"
        )
    return tuple(items)


def _bundle(args: argparse.Namespace) -> ConfigBundle:
    bundle = load_bundle(args.config) if args.config else ConfigBundle()
    if args.base_interval and args.base_interval != bundle.base_interval:
        bundle = bundle.with_overrides(base_interval=args.base_interval)
    return bundle


def _add_compute_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--klines", type=Path, required=True, help="kline file (CSV or Parquet)")
    p.add_argument("--symbol", required=True, help="symbol of the series, e.g. BTCUSDT")
    p.add_argument("--venue", default="offline", help="venue name for the output (default offline)")
    p.add_argument("--market", choices=("spot", "fut"), default="spot")
    p.add_argument("--fx-klines", type=Path, help="FX reference klines for rho_* features")
    p.add_argument("--base-interval", choices=("1m", "5m", "1h"), help="base bar interval")
    p.add_argument("--windows", type=_windows, default=("1h", "4h", "1d"))
    p.add_argument("--config", type=Path, help="config bundle file (JSON or YAML)")
    p.add_argument(
        "--derive-ticks",
        type=int,
        metavar="SEED",
        help="fill book and funding fields by the documented seeded derivation (kline files "
        "carry none; without it the book features are null and snapshots fail DQC)",
    )
    p.add_argument("--path", choices=("batch", "online"), default="batch")


def cmd_compute(args: argparse.Namespace) -> int:
    from s2feature.offline import ComputeRequest, compute, load_inputs, write_table

    req = ComputeRequest(
        klines=args.klines,
        series=SeriesId(args.venue, args.market, args.symbol),
        windows=args.windows,
        bundle=_bundle(args),
        fx_klines=args.fx_klines,
        derive_ticks_seed=args.derive_ticks,
        path=args.path,
    )
    out: Path = args.out
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise UsageError(f"--out must end in .csv or .parquet, got {out}")
    try:
        bars, fx = load_inputs(req)
    except OSError as exc:
        raise UsageError(f"cannot read input: {exc}") from None
    started = time.perf_counter()
    snapshots = compute(req, bars, fx)
    elapsed = time.perf_counter() - started
    try:
        write_table(snapshots, out)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc}") from None
    passed = sum(s.dqc.passed for s in snapshots)
    print(
        f"{len(bars)} base bars -> {len(snapshots)} snapshots ({passed} pass DQC) "
        f"in {elapsed:.2f} s ({args.path}); wrote {out}",
        file=sys.stderr,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from s2feature.demo import run_demo

    return run_demo(args.out_dir, DATASETS)


def cmd_run(args: argparse.Namespace) -> int:
    from s2feature.launcher import run_service
    from s2feature.service.settings import load_settings

    return run_service(load_settings(), idle_exit_s=args.burst)


def _job_environment() -> JobEnvironment:
    """The job settings from the process's `S2_*` variables, read through `EnvSettings`."""

    from s2feature.jobs.cli_support import job_environment
    from s2feature.service.settings import (
        bundle_overrides_of,
        load_env_settings,
        store_settings_of,
    )

    raw = load_env_settings()
    store = store_settings_of(raw)
    overrides = bundle_overrides_of(raw)  # the service's S2_DQC_*/S2_REGIME_*: the same outputs
    return job_environment(raw.config_file, raw.lake_dir, raw.symbols, store, overrides)


def cmd_recompute(args: argparse.Namespace) -> int:
    from s2feature.jobs import RecomputeRequest, plan, run_recompute
    from s2feature.jobs.cli_support import ProgressPrinter, parse_time_ms
    from s2feature.lake.parquet import BarLake

    env = _job_environment()
    symbols = tuple(s.strip() for s in args.symbols.split(",") if s.strip())
    request = RecomputeRequest(
        symbols, args.windows, parse_time_ms(args.from_), parse_time_ms(args.to), args.force
    )
    lake = BarLake(env.lake_dir)
    task = plan(request, lake, env.bundle, env.series)
    task_id = "recomp-cli-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    store = env.open_store()
    try:
        result = run_recompute(task, store, lake, env.bundle, task_id, ProgressPrinter(sys.stderr))
    finally:
        store.close()
    print(
        f"{task_id}: {result.signals_written} signals written, {result.signals_skipped} "
        f"already stored under config_rev {task.config_rev} ({result.batches_done} batches)",
        file=sys.stderr,
    )
    return 0


# `s2-feature regime` exit codes beside 0/1/2: no state written, for a reason that is no error.
EXIT_NOT_ENOUGH_HISTORY = 3
EXIT_NEWER_STATE = 4


def cmd_regime(args: argparse.Namespace) -> int:
    import json

    from s2feature.jobs.cli_support import parse_time_ms
    from s2feature.jobs.regime import run_regime
    from s2feature.lake.parquet import BarLake
    from s2feature.service.settings import load_env_settings, redis_settings_of
    from s2feature.streams.client import connect

    env = _job_environment()
    at_ms = parse_time_ms(args.at) if args.at else int(time.time() * 1000)
    client = connect(redis_settings_of(load_env_settings()))
    try:
        result = run_regime(at_ms, env.bundle, BarLake(env.lake_dir), client)
    finally:
        client.close()
    print(json.dumps(result.as_dict()))
    if result.status == "insufficient_history":
        print(
            f"s2-feature regime: not enough history, nothing written: {result.reason}",
            file=sys.stderr,
        )
        return EXIT_NOT_ENOUGH_HISTORY
    if result.status == "stale":
        print(f"s2-feature regime: {result.reason}", file=sys.stderr)
        return EXIT_NEWER_STATE
    print(
        f"s2-feature regime: {result.regime} (rv_1d {result.rv_1d:.4f}, pctile "
        f"{result.pctile:.3f}) written to rev {result.rev}",
        file=sys.stderr,
    )
    return 0


def cmd_lake_import(args: argparse.Namespace) -> int:
    from s2feature.data.importers import KlineFormatError
    from s2feature.jobs.cli_support import import_klines
    from s2feature.lake.parquet import BarLake

    lake = BarLake(_job_environment().lake_dir)
    try:
        n = import_klines(lake, args.file, args.symbol, args.base_interval)
    except (OSError, KlineFormatError) as exc:
        raise UsageError(f"cannot import {args.file}: {exc}") from None
    print(f"{args.symbol}: {n} bars imported into {lake.root}", file=sys.stderr)
    return 0


def cmd_lake_ls(args: argparse.Namespace) -> int:
    from s2feature.lake.parquet import BarLake

    lake = BarLake(_job_environment().lake_dir)
    for symbol in lake.symbols():
        dates = lake.dates(symbol)
        span = f"{dates[0]} .. {dates[-1]}" if dates else "no dates"
        print(f"{symbol}\t{len(lake.read(symbol))} bars\t{span}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s2-feature", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compute", help="compute feature snapshots from a kline file")
    _add_compute_args(p)
    p.add_argument("--out", type=Path, required=True, help="OUT.csv or OUT.parquet")
    p.set_defaults(func=cmd_compute)
    r = sub.add_parser("run", help="run the streaming service (settings from S2_* variables)")
    r.add_argument(
        "--burst",
        type=float,
        metavar="SECONDS",
        help="exit 0 once the streams have been idle this long (drain mode, for backfills/tests)",
    )
    r.set_defaults(func=cmd_run)
    d = sub.add_parser("demo", help="run the pipeline on the shipped real BTC/USD data")
    d.add_argument("--out-dir", type=Path, default=Path("out"))
    d.set_defaults(func=cmd_demo)
    rc = sub.add_parser("recompute", help="recompute a range from the lake into the store")
    rc.add_argument("--symbols", required=True, help="comma-separated symbols, e.g. BTCUSDT")
    rc.add_argument("--windows", type=_windows, required=True, help="e.g. 1m,5m,1h")
    rc.add_argument("--from", dest="from_", required=True, help="2024-01-05, ...T10:00Z or ms")
    rc.add_argument("--to", required=True, help="last t0 (inclusive), same formats")
    rc.add_argument("--force", action="store_true", help="rewrite signals of the same config_rev")
    rc.set_defaults(func=cmd_recompute)
    rg = sub.add_parser(
        "regime", help="compute the market regime from the lake and write it to Redis"
    )
    rg.add_argument("--at", help="as of this time (2024-01-05, ...T10:00Z or ms); default now")
    rg.set_defaults(func=cmd_regime)
    lk = sub.add_parser("lake", help="the base-bar lake (S2_LAKE_DIR)")
    lake_sub = lk.add_subparsers(dest="lake_command", required=True)
    li = lake_sub.add_parser("import", help="import a kline file (CSV or Parquet)")
    li.add_argument("file", type=Path)
    li.add_argument("--symbol", required=True)
    li.add_argument("--base-interval", choices=("1m", "5m", "1h"), default="1m")
    li.set_defaults(func=cmd_lake_import)
    ls = lake_sub.add_parser("ls", help="symbols, bar counts and dates in the lake")
    ls.set_defaults(func=cmd_lake_ls)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigurationError as exc:
        print(f"s2-feature {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
