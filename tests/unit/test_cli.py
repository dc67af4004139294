"""`s2-feature compute`: output table, error messages and exit codes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from s2feature.cli import main

DATASETS = Path(__file__).resolve().parents[2] / "datasets"
BTC = DATASETS / "Coinbase_BTCUSD_1h_2017-2018.csv"


def test_compute_writes_one_row_per_window_and_t0_with_feature_and_dqc_columns(
    tmp_path: Path,
) -> None:
    out = tmp_path / "f.csv"
    code = main(
        [
            "compute",
            "--klines",
            str(BTC),
            "--symbol",
            "BTCUSD",
            "--base-interval",
            "1h",
            "--windows",
            "1h,1d",
            "--derive-ticks",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["window"] for r in rows} == {"1h", "1d"}
    assert len({r["signal_id"] for r in rows}) == len(rows)
    first = rows[0]
    assert first["signal_id"] == f"BTCUSD:{first['window']}:{first['t0']}"
    for column in (
        "atr_14",
        "rv_1d",
        "spread_bps",
        "dqc_pass",
        "dqc_missing",
        "dqc_jump",
        "dqc_bounds",
        "dqc_reasons",
    ):
        assert column in first
    assert "funding_next" not in first  # spot is the default market
    assert first["atr_14"] == ""  # null while warming up is an empty cell, never 0
    assert any(r["dqc_pass"] == "True" for r in rows)


def test_compute_writes_parquet(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "f.parquet"
    assert (
        main(
            [
                "compute",
                "--klines",
                str(BTC),
                "--symbol",
                "BTCUSD",
                "--base-interval",
                "1h",
                "--windows",
                "1d",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = pq.read_table(out)
    assert table.num_rows > 500
    assert "rv_30d" in table.column_names


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--klines", "nope.csv"], "nope.csv"),
        (["--klines", str(BTC), "--out", "x.txt"], "--out must end in .csv or .parquet"),
        (["--klines", str(BTC), "--config", "missing.yaml"], "missing.yaml"),
        (["--klines", str(BTC), "--base-interval", "1m"], "interval"),
    ],
    ids=["missing-file", "bad-out-suffix", "missing-config", "wrong-base-interval"],
)
def test_compute_reports_bad_input_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    base = ["compute", "--symbol", "BTCUSD", "--out", str(tmp_path / "o.csv")]
    if "--base-interval" not in args:
        base += ["--base-interval", "1h"]
    code = main([*base, *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_unknown_window_is_an_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(
            ["compute", "--klines", str(BTC), "--symbol", "X", "--windows", "2h", "--out", "o.csv"]
        )
    assert exc.value.code == 2
    assert "subset of 1m,5m,1h,4h,1d" in capsys.readouterr().err
