"""Command line entry point `s2-feature`.

Exit codes: 0 success, 2 bad arguments or unreadable input (with a one-line message on stderr).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from s2feature.config.bundle import BundleError, ConfigBundle, load_bundle
from s2feature.data.importers import KlineFormatError
from s2feature.domain import WINDOWS, SeriesId

DATASETS = Path(__file__).resolve().parents[2] / "datasets"


class UsageError(Exception):
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
    bars, fx = load_inputs(req)
    started = time.perf_counter()
    snapshots = compute(req, bars, fx)
    elapsed = time.perf_counter() - started
    write_table(snapshots, out)
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
    import logging
    import os

    from s2feature.lake.parquet import BarLake
    from s2feature.service.runner import Service
    from s2feature.service.settings import SettingsError, load_settings
    from s2feature.store.factory import open_store
    from s2feature.streams.client import connect

    logging.basicConfig(
        level=os.environ.get("S2_LOG_LEVEL", "INFO"),
        format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}',
    )
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None
    store = open_store(os.environ)
    service = Service(settings, connect(settings.redis), store, BarLake(settings.lake_dir))
    service.install_signal_handlers()
    try:
        return service.run(idle_exit_s=args.burst)
    finally:
        store.close()


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (UsageError, BundleError, KlineFormatError, ValueError) as exc:
        print(f"s2-feature {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"s2-feature {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
