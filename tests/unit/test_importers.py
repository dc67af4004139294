"""Kline importers: the real files as they are, the normalised CSV/Parquet round trip, and errors.

Reference epoch values are derived by hand: 2017-07-01 00:00 UTC is 1_498_867_200 s (17_348 days
after 1970-01-01), 2017-01-01 00:00 UTC is 1_483_228_800 s and 2018-12-31 00:00 UTC is
1_546_214_400 s; an hour is 3_600_000 ms.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from s2feature.data.importers import KlineFormatError, load_klines, write_klines_csv
from s2feature.domain import BarArrays

DATASETS = Path(__file__).resolve().parents[2] / "datasets"
BTC = DATASETS / "Coinbase_BTCUSD_1h_2017-2018.csv"
EURUSD = DATASETS / "FOREX_EURUSD_1H_ASK.csv"
HOUR = 3_600_000
DEC_31_2018 = 1_546_214_400_000
CDD_BANNER = "Timestamps are UTC timezone,https://www.CryptoDataDownload.com\n"
CDD_HEADER = "date,symbol,open,high,low,close,volume_btc,volume\n"
NORMALISED_HEADER = "open_time,close_time,open,high,low,close,volume\n"


@pytest.fixture(scope="module")
def btc() -> BarArrays:
    return load_klines(BTC, "1h")


def write(tmp_path: Path, text: str, name: str = "k.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def normalised_row(open_time: int, o: float, h: float, lo: float, c: float, v: float) -> str:
    return f"{open_time},{open_time + HOUR - 1},{o},{h},{lo},{c},{v}\n"


# --- the real files ------------------------------------------------------------------------------


def test_real_btc_file_loads_every_hour_ascending_on_the_grid(btc: BarArrays) -> None:
    assert len(btc) == 13_165
    # 2017-07-01 11:00 UTC = 1_498_867_200 s + 11 h; 2018-12-31 23:00 UTC = 1_546_214_400 s + 23 h.
    assert btc.open_time[0] == 1_498_906_800_000
    assert btc.open_time[-1] == DEC_31_2018 + 23 * HOUR
    # No gap and no duplicate: 13_165 hours from the first to the last bar inclusive.
    assert np.all(np.diff(btc.open_time) == HOUR)
    np.testing.assert_array_equal(btc.close_time, btc.open_time + HOUR - 1)


def test_real_btc_newest_row_is_the_last_bar_with_the_base_currency_volume(btc: BarArrays) -> None:
    # File line 3: 2018-12-31 11-PM,BTCUSD,3676.68,3698.34,3676.67,3691.86,608.55,2243020.13
    last = btc.to_bars()[-1]
    assert (last.open, last.high, last.low, last.close) == (3676.68, 3698.34, 3676.67, 3691.86)
    assert last.volume == 608.55  # volume_btc, not the USD volume 2243020.13


@pytest.mark.parametrize(
    ("hours_after_midnight", "row_open"),
    [(0, 3829.0), (12, 3743.0), (23, 3676.68)],
    ids=["12-AM-is-midnight", "12-PM-is-noon", "11-PM"],
)
def test_real_btc_twelve_hour_clock(
    btc: BarArrays, hours_after_midnight: int, row_open: float
) -> None:
    # Rows "2018-12-31 12-AM,...,3829", "2018-12-31 12-PM,...,3743", "2018-12-31 11-PM,...,3676.68".
    index = int(np.searchsorted(btc.open_time, DEC_31_2018 + hours_after_midnight * HOUR))
    assert btc.open[index] == row_open


def test_real_btc_closes_meet_next_opens_almost_everywhere(btc: BarArrays) -> None:
    # A wrong 12-AM/12-PM mapping would move 1 bar in 12 and break this continuity widely; the
    # audit found 9 breaks in 13_164 steps (real exchange gaps and the 2017-11-12 block).
    breaks = int(np.sum(btc.close[:-1] != btc.open[1:]))
    assert breaks == 9


def test_real_btc_keeps_the_repeated_block_of_2017_11_12_as_it_is(btc: BarArrays) -> None:
    # 04:00-08:00 UTC repeat the values of 23:00-03:00 (an export defect, kept and documented).
    start = int(np.searchsorted(btc.open_time, 1_510_444_800_000 + 4 * HOUR))  # 2017-11-12 04:00
    copied, original = slice(start, start + 5), slice(start - 5, start)
    np.testing.assert_array_equal(btc.open[copied], btc.open[original])
    np.testing.assert_array_equal(btc.volume[copied], btc.volume[original])
    assert btc.open[start] == 6063.17


def test_real_btc_keeps_zero_volume_flat_hours(btc: BarArrays) -> None:
    zero = btc.volume == 0.0
    assert int(zero.sum()) == 26
    flat = (btc.open == btc.close) & (btc.high == btc.low) & (btc.open == btc.high)
    assert flat[zero].all()


def test_imported_bars_carry_mid_equal_close_and_no_book(btc: BarArrays) -> None:
    np.testing.assert_array_equal(btc.mid, btc.close)
    for name in ("best_bid", "best_ask", "depth_top1_usdt", "funding_next", "bid_qty", "ask_qty"):
        assert np.isnan(getattr(btc, name)).all(), name
    assert not btc.depth_split.any()
    assert (btc.n_base == 1).all()
    assert (btc.jump_count == 0).all()


def test_real_eurusd_file_reads_day_month_year_and_keeps_weekend_gaps() -> None:
    fx = load_klines(EURUSD, "1h")
    assert len(fx) == 6_225
    # "01.01.2017 22:00:00.000" = 1_483_228_800 s + 22 h; "02.01.2017 00:00" is 2 January.
    assert fx.open_time[0] == 1_483_308_000_000
    assert fx.open_time[2] == 1_483_228_800_000 + 24 * HOUR
    steps = np.diff(fx.open_time)
    assert steps.min() == HOUR
    assert steps.max() > 48 * HOUR  # weekends stay gaps, nothing is filled
    assert fx.open[0] == 1.05236
    assert fx.close[0] == 1.05227


# --- the CryptoDataDownload format ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("stamp", "hour"),
    [
        ("12-AM", 0),
        ("01-AM", 1),
        ("11-AM", 11),
        ("12-PM", 12),
        ("01-PM", 13),
        ("11-PM", 23),
    ],
    ids=["12-AM", "01-AM", "11-AM", "12-PM", "01-PM", "11-PM"],
)
def test_cdd_twelve_hour_stamp(tmp_path: Path, stamp: str, hour: int) -> None:
    path = write(tmp_path, CDD_BANNER + CDD_HEADER + f"2018-12-31 {stamp},BTCUSD,5,6,4,5,1,5\n")
    assert load_klines(path).open_time[0] == DEC_31_2018 + hour * HOUR


def test_cdd_twenty_four_hour_stamp_without_banner(tmp_path: Path) -> None:
    path = write(tmp_path, CDD_HEADER + "2018-12-31 13:00:00,BTCUSD,5,6,4,5,1,5\n")
    assert load_klines(path).open_time[0] == DEC_31_2018 + 13 * HOUR


def test_cdd_crlf_lines_parse_like_lf(tmp_path: Path) -> None:
    text = CDD_BANNER + CDD_HEADER + "2018-12-31 01-AM,BTCUSD,5,6,4,5,1,5\n"
    path = tmp_path / "crlf.csv"
    path.write_bytes(text.replace("\n", "\r\n").encode())
    assert load_klines(path).open_time[0] == DEC_31_2018 + HOUR


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("2018-12-31 13-PM,BTCUSD,5,6,4,5,1,5", "12-hour clock"),
        ("2018-12-31 00-AM,BTCUSD,5,6,4,5,1,5", "12-hour clock"),
        ("2018-02-30 01-AM,BTCUSD,5,6,4,5,1,5", "day is out of range"),
        ("31.12.2018 01:00,BTCUSD,5,6,4,5,1,5", "neither"),
        ("2018-12-31 01-AM,ETHUSD,5,6,4,5,1,5", "differs from the file's 'BTCUSD'"),
    ],
    ids=["13-PM", "00-AM", "30-February", "foreign-date-format", "second-symbol"],
)
def test_cdd_bad_row_is_an_error_with_its_line(tmp_path: Path, row: str, message: str) -> None:
    first = "2018-12-31 02-AM,BTCUSD,5,6,4,5,1,5\n"
    path = write(tmp_path, CDD_BANNER + CDD_HEADER + first + row + "\n")
    with pytest.raises(KlineFormatError, match=message) as caught:
        load_klines(path)
    assert f"{path}:4:" in str(caught.value)


# --- row checks shared by every format ----------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("5,5.5,4,6", "high is below max"),  # high 5.5 < close 6
        ("7,6.5,4,5", "high is below max"),  # high 6.5 < open 7
        ("5,6,5.5,5.2", "low is above min"),  # low 5.5 > close 5.2
        ("4,6,4.5,5", "low is above min"),  # low 4.5 > open 4
        ("5,6,0,5", "prices must be positive"),
        ("5,6,-1,5", "prices must be positive"),
        ("5,6,4,nan", "not finite"),
        ("5,6,4,inf", "not finite"),
        ("5,6,4,five", "not a number"),
    ],
    ids=[
        "high-below-close",
        "high-below-open",
        "low-above-close",
        "low-above-open",
        "zero-low",
        "negative-low",
        "nan-close",
        "inf-close",
        "word-close",
    ],
)
def test_invalid_prices_are_an_error_with_the_line(
    tmp_path: Path, values: str, message: str
) -> None:
    good = normalised_row(0, 5, 6, 4, 5, 1)
    bad = f"{HOUR},{2 * HOUR - 1},{values},1\n"
    path = write(tmp_path, NORMALISED_HEADER + good + bad)
    with pytest.raises(KlineFormatError, match=message) as caught:
        load_klines(path)
    assert f"{path}:3:" in str(caught.value)


def test_negative_volume_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, NORMALISED_HEADER + normalised_row(0, 5, 6, 4, 5, -0.5))
    with pytest.raises(KlineFormatError, match=r":2: volume must not be negative"):
        load_klines(path)


def test_flat_bar_with_volume_is_valid(tmp_path: Path) -> None:
    # Real case: "2017-09-25 04-AM,BTCUSD,3775.13,3775.13,3775.13,3775.13,5.93,...".
    path = write(
        tmp_path, NORMALISED_HEADER + normalised_row(0, 3775.13, 3775.13, 3775.13, 3775.13, 5.93)
    )
    assert load_klines(path).volume[0] == 5.93


def test_rows_come_out_ascending_and_exact_duplicates_collapse(tmp_path: Path) -> None:
    rows = [normalised_row(t * HOUR, 5 + t, 6 + t, 4 + t, 5 + t, t) for t in (2, 0, 1, 2, 0)]
    bars = load_klines(write(tmp_path, NORMALISED_HEADER + "".join(rows)))
    np.testing.assert_array_equal(bars.open_time, [0, HOUR, 2 * HOUR])
    np.testing.assert_array_equal(bars.open, [5.0, 6.0, 7.0])


def test_conflicting_duplicates_name_both_lines(tmp_path: Path) -> None:
    rows = normalised_row(0, 5, 6, 4, 5, 1) + normalised_row(HOUR, 5, 6, 4, 5, 1)
    rows += normalised_row(0, 5, 6, 4, 5.5, 1)  # same start as line 2, other close
    path = write(tmp_path, NORMALISED_HEADER + rows)
    with pytest.raises(KlineFormatError, match=re.escape(f"{path}:2 and {path}:4")):
        load_klines(path)


def test_wrong_number_of_fields_is_an_error_with_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, NORMALISED_HEADER + "0,3599999,5,6,4,5\n")
    with pytest.raises(KlineFormatError, match=r":2: expected 7 fields, got 6"):
        load_klines(path)


# --- format detection and interval checks -------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    ["# notes\nsome,other,header\n", "a,b\n1,2\n", ""],
    ids=["markdown-like", "foreign-csv", "empty"],
)
def test_unknown_format_lists_the_known_formats(tmp_path: Path, content: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(KlineFormatError, match="known formats") as caught:
        load_klines(path)
    for name in ("normalised CSV", "Parquet", "CryptoDataDownload", "Dukascopy"):
        assert name in str(caught.value)


def test_binary_file_that_is_not_parquet_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\xff\xfe\x00\x81 garbage")
    with pytest.raises(KlineFormatError, match="neither UTF-8 text nor Parquet"):
        load_klines(path)


def test_header_only_file_holds_no_bars(tmp_path: Path) -> None:
    with pytest.raises(KlineFormatError, match="holds no bars"):
        load_klines(write(tmp_path, NORMALISED_HEADER))


@pytest.mark.parametrize(
    ("base_interval", "message"),
    [("1m", "smallest step between bars is 3600000 ms"), ("4h", "not on the 4h grid")],
    ids=["hourly-file-read-as-1m", "hourly-file-read-as-4h"],
)
def test_interval_not_matching_base_interval_is_an_error(base_interval: str, message: str) -> None:
    with pytest.raises(KlineFormatError, match=message):
        load_klines(BTC, base_interval)


def test_normalised_close_time_of_another_interval_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, NORMALISED_HEADER + f"0,{5 * 60_000 - 1},5,6,4,5,1\n")
    with pytest.raises(KlineFormatError, match=r":2: close_time 299999 is not open_time \+ 1h - 1"):
        load_klines(path, "1h")
    assert load_klines(path, "5m").close_time[0] == 299_999


def test_gaps_are_not_an_interval_mismatch(tmp_path: Path) -> None:
    rows = normalised_row(0, 5, 6, 4, 5, 1) + normalised_row(HOUR, 5, 6, 4, 5, 1)
    rows += normalised_row(10 * HOUR, 5, 6, 4, 5, 1)
    bars = load_klines(write(tmp_path, NORMALISED_HEADER + rows))
    np.testing.assert_array_equal(bars.open_time, [0, HOUR, 10 * HOUR])


def test_dukascopy_milliseconds_off_the_grid_are_an_error(tmp_path: Path) -> None:
    text = "Time,Open,High,Low,Close,Volume\n01.01.2017 22:00:00.500,1.05,1.06,1.04,1.05,10\n"
    with pytest.raises(KlineFormatError, match=":2: bar start 1483308000500 is not on the 1h grid"):
        load_klines(write(tmp_path, text))


# --- normalised CSV and Parquet ------------------------------------------------------------------


def assert_same_klines(got: BarArrays, expected: BarArrays) -> None:
    for name in ("open_time", "close_time", "open", "high", "low", "close", "volume", "mid"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=name)


def test_normalised_csv_round_trip_of_the_real_file_is_exact(
    btc: BarArrays, tmp_path: Path
) -> None:
    path = tmp_path / "btc.csv"
    write_klines_csv(btc, path)
    assert path.read_text().splitlines()[0] == NORMALISED_HEADER.strip()
    assert_same_klines(load_klines(path), btc)


def parquet_table(bars: BarArrays) -> pa.Table:
    columns = ("open_time", "close_time", "open", "high", "low", "close", "volume")
    return pa.table({name: getattr(bars, name) for name in columns})


def test_parquet_with_the_normalised_columns_loads_exactly(btc: BarArrays, tmp_path: Path) -> None:
    path = tmp_path / "btc.parquet"
    pq.write_table(parquet_table(btc.slice(0, 500)), path)
    assert_same_klines(load_klines(path), btc.slice(0, 500))


@pytest.mark.parametrize(
    ("drop", "message"),
    [("volume", r"lacks column\(s\) \['volume'\]"), (None, r"row 1: inconsistent OHLC")],
    ids=["missing-column", "bad-row"],
)
def test_parquet_errors_name_the_column_or_row(
    btc: BarArrays, tmp_path: Path, drop: str | None, message: str
) -> None:
    table = parquet_table(btc.slice(0, 3))
    if drop:
        table = table.drop_columns([drop])
    else:
        high = table.column("high").to_numpy().copy()
        high[1] = 1.0  # below open and close
        table = table.set_column(table.column_names.index("high"), "high", pa.array(high))
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    with pytest.raises(KlineFormatError, match=message):
        load_klines(path)


@st.composite
def kline_rows(draw: st.DrawFn) -> list[tuple[int, float, float, float, float, float]]:
    prices = st.floats(min_value=1e-6, max_value=1e7, allow_nan=False, allow_infinity=False)
    slots = draw(st.lists(st.integers(0, 10_000), min_size=2, max_size=40, unique=True))
    slots = [*slots, max(slots) + 1]  # one step of exactly an hour, so the interval is known
    rows = []
    for slot in slots:
        a, b, lo_extra, hi_extra = draw(prices), draw(prices), draw(prices), draw(prices)
        low = min(a, b) / (1 + lo_extra / 1e7)
        high = max(a, b) * (1 + hi_extra / 1e7)
        volume = draw(st.floats(min_value=0, max_value=1e9, allow_nan=False))
        rows.append((slot * HOUR, a, high, low, b, volume))
    return rows


@given(rows=kline_rows())
def test_any_valid_rows_in_any_order_load_ascending_with_exact_values(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[int, float, float, float, float, float]],
) -> None:
    path = tmp_path_factory.mktemp("prop") / "k.csv"
    text = "".join(
        f"{t},{t + HOUR - 1},{o!r},{h!r},{lo!r},{c!r},{v!r}\n" for t, o, h, lo, c, v in rows
    )
    path.write_text(NORMALISED_HEADER + text)
    bars = load_klines(path)
    expected = sorted(rows)
    np.testing.assert_array_equal(bars.open_time, [r[0] for r in expected])
    np.testing.assert_array_equal(bars.high, [r[2] for r in expected])
    np.testing.assert_array_equal(bars.volume, [r[5] for r in expected])
    write_klines_csv(bars, path)
    assert_same_klines(load_klines(path), bars)
