"""`s2-feature lake import|ls` and `s2-feature recompute` on the shipped real BTC/USD file, with
a real lake and SQLite store in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from s2feature.cli import main
from s2feature.jobs.cli_support import parse_time_ms
from s2feature.lake.parquet import BarLake
from s2feature.store.sqlite import SqliteStore

BTC = Path(__file__).resolve().parents[2] / "datasets" / "Coinbase_BTCUSD_1h_2017-2018.csv"
# Kline files carry no book fields, so every snapshot fails DQC (missing): persist_all keeps them.
HOURLY_CONFIG = '{"rev": "cli-rev", "base_interval": "1h", "mode": {"persist_all": true}}'


@pytest.fixture
def job_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = tmp_path / "bundle.json"
    config.write_text(HOURLY_CONFIG)
    monkeypatch.setenv("S2_LAKE_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("S2_DB_SQLITE_PATH", str(tmp_path / "s2.db"))
    monkeypatch.setenv("S2_CONFIG_FILE", str(config))
    monkeypatch.delenv("S2_SYMBOLS", raising=False)
    return tmp_path


def test_times_are_dates_iso_times_or_milliseconds() -> None:
    assert parse_time_ms("2024-01-05") == 1_704_412_800_000
    assert parse_time_ms("2024-01-05T10:00Z") == 1_704_412_800_000 + 10 * 3_600_000
    assert parse_time_ms("1704412800000") == 1_704_412_800_000
    with pytest.raises(ValueError, match="yesterday"):
        parse_time_ms("yesterday")


def test_lake_import_is_idempotent_and_listed(
    job_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["lake", "import", str(BTC), "--symbol", "BTCUSD", "--base-interval", "1h"]
    assert main(args) == 0
    lake = BarLake(job_env / "lake")
    first = lake.read("BTCUSD")
    assert len(first) > 10_000
    partitions = sorted(p.parent for p in (job_env / "lake").rglob("*.parquet"))
    assert main(args) == 0
    again = lake.read("BTCUSD")
    assert again.__dict__.keys() == first.__dict__.keys()
    for name, column in first.__dict__.items():
        assert column.tobytes() == again.__dict__[name].tobytes(), name
    # Still one compacted part per date: a second import does not make the lake grow.
    assert sorted(p.parent for p in (job_env / "lake").rglob("*.parquet")) == partitions
    assert len(set(partitions)) == len(partitions)
    capsys.readouterr()
    assert main(["lake", "ls"]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith(f"BTCUSD\t{len(first)} bars\t")


def test_lake_import_of_a_missing_file_exits_2(job_env: Path) -> None:
    args = ["lake", "import", str(job_env / "none.csv"), "--symbol", "BTCUSD"]
    assert main(args) == 2


def test_recompute_writes_the_range_and_prints_progress(
    job_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lake", "import", str(BTC), "--symbol", "BTCUSD", "--base-interval", "1h"]) == 0
    args = ["recompute", "--symbols", "BTCUSD", "--windows", "1h,1d"]
    args += ["--from", "2018-06-01", "--to", "2018-06-03T23:59:59.999Z"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "3/3 batches" in err
    assert "ETA" in err
    store = SqliteStore(job_env / "s2.db")
    docs = store.query_signals("BTCUSD")
    assert docs
    assert {d["mode"] for d in docs} == {"recompute"}
    assert {d["config_rev"] for d in docs} == {"cli-rev"}
    assert min(d["t0"] for d in docs) >= parse_time_ms("2018-06-01")
    assert max(d["t0"] for d in docs) < parse_time_ms("2018-06-04")
    assert len(store.strategy_events("FEATURE_RECOMPUTE")) == 1
    store.close()
    # Again without --force: everything is already stored under this config_rev.
    assert main(args) == 0
    assert "0 signals written" in capsys.readouterr().err


def test_recompute_of_an_unknown_symbol_exits_2(
    job_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["recompute", "--symbols", "ETHUSD", "--windows", "1h", "--from", "0", "--to", "5"]
    assert main(args) == 2
    assert "ETHUSD" in capsys.readouterr().err
