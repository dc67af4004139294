"""Kline importers: the real hourly files as they are, and the project's own normalised format.

`load_klines` detects the format from the file itself:

* **Parquet** (magic bytes `PAR1`) with the normalised columns below;
* **normalised CSV**: header `open_time,close_time,open,high,low,close,volume`, integer ms times
  (what `write_klines_csv` writes);
* **CryptoDataDownload** (Coinbase export): an optional banner line, then the header
  `date,symbol,open,high,low,close,volume_<base>,volume`, newest row first, times like
  `2018-12-31 11-PM` (UTC, 12-hour clock: `12-AM` is 00:00, `12-PM` is 12:00) or
  `2018-12-31 23:00:00`; the base-currency volume (`volume_<base>`) is used;
* **Dukascopy**: header `Time,Open,High,Low,Close,Volume` (or `Gmt time,...`), times like
  `01.01.2017 22:00:00.000` (day.month.year, UTC).

What the importer does with each kind of irregular row (the real files were audited for all of
them; see datasets/README.md for what they contain):

* rows come out ascending by time whatever the file order;
* an exact duplicate row (same bar start, same values) collapses to one bar; two rows for the same
  bar start with different values are an error naming both lines;
* gaps (missing hours, FX weekends) stay gaps: nothing is filled, because a filled bar would be a
  price nobody traded at;
* zero-volume hours are kept as they are: a flat zero-volume bar is what an exchange prints for an
  hour without trades, and dropping it would turn it into a gap;
* a row whose high is below max(open, close), whose low is above min(open, close), with a
  non-positive or non-finite price, or with a negative volume is an error with its line number.
  The real files need no repair, so none is made.

Every bar must start on the `base_interval` grid and the smallest step between bars must be one
interval (a 4h file read as 1h is an error, a 1h file with gaps is not). `close_time` is
`open_time + interval - 1`. Tick fields: `mid = close` (the only as-of price a kline file gives);
the book and funding fields are NaN, since kline files carry no book.

Errors are `KlineFormatError` with the file and line (CSV) or row (Parquet). A file that cannot be
opened raises the usual `OSError`.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from s2feature.domain import BarArrays, interval_ms
from s2feature.errors import ConfigurationError

__all__ = ["NORMALISED_COLUMNS", "KlineFormatError", "load_klines", "write_klines_csv"]

NORMALISED_COLUMNS: Final[tuple[str, ...]] = (
    "open_time",
    "close_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
)
_PARQUET_MAGIC: Final = b"PAR1"
_CDD_PREFIX: Final = ("date", "symbol", "open", "high", "low", "close")
_DUKASCOPY_HEADERS: Final = (
    ("time", "open", "high", "low", "close", "volume"),
    ("gmt time", "open", "high", "low", "close", "volume"),
)
_KNOWN_FORMATS: Final = (
    "normalised CSV (open_time,close_time,open,high,low,close,volume; ms integers), "
    "Parquet with the same columns, "
    "CryptoDataDownload (date,symbol,open,high,low,close,volume_<base>,volume), "
    "Dukascopy (Time,Open,High,Low,Close,Volume)"
)
_CDD_12H = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{1,2})-(AM|PM)")
_CDD_24H = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2})(?::(\d{2}))?")
_DUKASCOPY_TIME = re.compile(r"(\d{2})\.(\d{2})\.(\d{4}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,3}))?")


class KlineFormatError(ConfigurationError):
    """A kline file that is not in a known format or holds an invalid row (file and line named)."""


@dataclass(frozen=True)
class _Rows:
    """Parsed rows in file order; `where(i)` names the file and line (or row) of row i."""

    open_time: npt.NDArray[np.int64]
    close_time: npt.NDArray[np.int64] | None  # only formats that carry it
    values: npt.NDArray[np.float64]  # columns open, high, low, close, volume
    where: Callable[[int], str]

    def __len__(self) -> int:
        return len(self.open_time)


def load_klines(path: str | Path, base_interval: str = "1h") -> BarArrays:
    """Read a kline file in any supported format into ascending, validated base bars."""
    path = Path(path)
    base_ms = interval_ms(base_interval)
    raw = path.read_bytes()
    if raw.startswith(_PARQUET_MAGIC):
        rows = _read_parquet(path)
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise KlineFormatError(f"{path}: neither UTF-8 text nor Parquet ({exc})") from None
        rows = _read_csv(path, text)
    if len(rows) == 0:
        raise KlineFormatError(f"{path}: the file holds no bars")
    return _to_bars(path, rows, base_ms, base_interval)


def write_klines_csv(bars: BarArrays, path: str | Path) -> None:
    """Write bars in the normalised CSV format; floats use `repr`, so reading back is exact."""
    with Path(path).open("w", encoding="utf-8", newline="") as out:
        out.write(",".join(NORMALISED_COLUMNS) + "\n")
        for i in range(len(bars)):
            prices = (bars.open[i], bars.high[i], bars.low[i], bars.close[i], bars.volume[i])
            numbers = ",".join(repr(float(x)) for x in prices)
            out.write(f"{int(bars.open_time[i])},{int(bars.close_time[i])},{numbers}\n")


# --- CSV formats ---------------------------------------------------------------------------------

# A row parser turns the fields of one row into (open_time, close_time or None, o, h, l, c, v).
_Parsed = tuple[int, int | None, float, float, float, float, float]
_RowParser = Callable[[list[str]], _Parsed]


def _read_csv(path: Path, text: str) -> _Rows:
    rows = _numbered_rows(text)
    first = next(rows, None)
    if first is None:
        raise KlineFormatError(f"{path}: empty file; known formats: {_KNOWN_FORMATS}")
    header = _lower(first[1])
    if not (_is_cdd_header(header) or header == NORMALISED_COLUMNS or header in _DUKASCOPY_HEADERS):
        # CryptoDataDownload puts one banner line (a URL) before the header.
        second = next(rows, None)
        if second is None or not _is_cdd_header(_lower(second[1])):
            raise KlineFormatError(
                f"{path}: unknown kline format (header {','.join(first[1])!r}); "
                f"known formats: {_KNOWN_FORMATS}"
            )
        header = _lower(second[1])
    if header == NORMALISED_COLUMNS:
        return _parse_rows(path, rows, len(header), _normalised_row, with_close_time=True)
    if header in _DUKASCOPY_HEADERS:
        return _parse_rows(path, rows, len(header), _dukascopy_row)
    return _parse_rows(path, rows, len(header), _SingleSymbolCddRow())


def _numbered_rows(text: str) -> Iterator[tuple[int, list[str]]]:
    """Non-blank rows with their 1-based line numbers (CRLF and LF both accepted)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    for fields in reader:
        if any(f.strip() for f in fields):
            yield reader.line_num, [f.strip() for f in fields]


def _lower(fields: list[str]) -> tuple[str, ...]:
    return tuple(f.lower() for f in fields)


def _is_cdd_header(header: tuple[str, ...]) -> bool:
    return (
        len(header) == 8
        and header[:6] == _CDD_PREFIX
        and header[6].startswith("volume_")
        and header[7] == "volume"
    )


def _parse_rows(
    path: Path,
    rows: Iterator[tuple[int, list[str]]],
    width: int,
    parse: _RowParser,
    with_close_time: bool = False,
) -> _Rows:
    lines: list[int] = []
    parsed: list[_Parsed] = []
    for line, fields in rows:
        if len(fields) != width:
            raise KlineFormatError(f"{path}:{line}: expected {width} fields, got {len(fields)}")
        try:
            parsed.append(parse(fields))
        except ValueError as exc:
            raise KlineFormatError(f"{path}:{line}: {exc}") from None
        lines.append(line)
    return _Rows(
        open_time=np.array([p[0] for p in parsed], dtype=np.int64),
        close_time=np.array([p[1] for p in parsed], dtype=np.int64) if with_close_time else None,
        values=np.array([p[2:] for p in parsed], dtype=np.float64).reshape(-1, 5),
        where=lambda i: f"{path}:{lines[i]}",
    )


def _normalised_row(fields: list[str]) -> _Parsed:
    o, h, lo, c = _prices(fields[2:6])
    volume = _float(fields[6], "volume")
    return _int(fields[0], "open_time"), _int(fields[1], "close_time"), o, h, lo, c, volume


def _dukascopy_row(fields: list[str]) -> _Parsed:
    o, h, lo, c = _prices(fields[1:5])
    return _dukascopy_time(fields[0]), None, o, h, lo, c, _float(fields[5], "volume")


class _SingleSymbolCddRow:
    """CryptoDataDownload row parser; a second symbol means two series were concatenated."""

    def __init__(self) -> None:
        self._symbol: str | None = None

    def __call__(self, fields: list[str]) -> _Parsed:
        if self._symbol is None:
            self._symbol = fields[1]
        elif fields[1] != self._symbol:
            raise ValueError(f"symbol {fields[1]!r} differs from the file's {self._symbol!r}")
        o, h, lo, c = _prices(fields[2:6])
        # Column 6 is the base-currency volume (volume_btc); column 7 is the quote volume.
        return _cdd_time(fields[0]), None, o, h, lo, c, _float(fields[6], "volume")


def _float(text: str, name: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} {text!r} is not finite")
    return number


def _prices(fields: list[str]) -> tuple[float, float, float, float]:
    o, h, lo, c = (
        _float(f, n) for f, n in zip(fields, ("open", "high", "low", "close"), strict=True)
    )
    return o, h, lo, c


def _int(text: str, name: str) -> int:
    if not re.fullmatch(r"-?\d+", text):
        raise ValueError(f"{name} {text!r} is not an integer number of ms")
    return int(text)


def _epoch_ms(year: int, month: int, day: int, hour: int, minute: int = 0, second: int = 0) -> int:
    # datetime validates the calendar (no 31 February); the files are UTC by their documentation.
    moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    return int(moment.timestamp()) * 1000


def _cdd_time(text: str) -> int:
    if match := _CDD_12H.fullmatch(text):
        year, month, day, hour12 = (int(g) for g in match.groups()[:4])
        if not 1 <= hour12 <= 12:
            raise ValueError(f"hour {hour12} in {text!r} is not on a 12-hour clock")
        # 12-AM is midnight and 12-PM is noon: the 12 wraps to 0 before the PM offset is added.
        hour = hour12 % 12 + (12 if match.group(5) == "PM" else 0)
        return _epoch_ms(year, month, day, hour)
    if match := _CDD_24H.fullmatch(text):
        year, month, day, hour, minute = (int(g) for g in match.groups()[:5])
        return _epoch_ms(year, month, day, hour, minute, int(match.group(6) or 0))
    raise ValueError(f"date {text!r} is neither 'YYYY-MM-DD HH-AM' nor 'YYYY-MM-DD HH:MM:SS'")


def _dukascopy_time(text: str) -> int:
    match = _DUKASCOPY_TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"time {text!r} is not 'DD.MM.YYYY HH:MM:SS.mmm'")
    day, month, year, hour, minute, second = (int(g) for g in match.groups()[:6])
    millis = int((match.group(7) or "0").ljust(3, "0"))
    return _epoch_ms(year, month, day, hour, minute, second) + millis


# --- Parquet -------------------------------------------------------------------------------------


def _read_parquet(path: Path) -> _Rows:
    import pyarrow.parquet as pq  # imported here: only Parquet reads pay for it

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise KlineFormatError(f"{path}: unreadable Parquet file ({exc})") from None
    missing = [c for c in NORMALISED_COLUMNS if c not in table.column_names]
    if missing:
        raise KlineFormatError(
            f"{path}: Parquet file lacks column(s) {missing}; known formats: {_KNOWN_FORMATS}"
        )
    arrays: dict[str, npt.NDArray[np.generic]] = {}
    for name in NORMALISED_COLUMNS:
        column = table.column(name)
        if column.null_count:
            first_null = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise KlineFormatError(f"{path}: row {first_null}: {name} is null")
        arrays[name] = np.asarray(column.to_numpy())
    for name in ("open_time", "close_time"):
        if not np.issubdtype(arrays[name].dtype, np.integer):
            raise KlineFormatError(f"{path}: column {name} is {arrays[name].dtype}, not integer ms")
    values = np.column_stack([arrays[n].astype(np.float64) for n in NORMALISED_COLUMNS[2:]])
    non_finite = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if non_finite.size:
        raise KlineFormatError(f"{path}: row {int(non_finite[0])}: a price or volume is not finite")
    return _Rows(
        open_time=arrays["open_time"].astype(np.int64),
        close_time=arrays["close_time"].astype(np.int64),
        values=values,
        where=lambda i: f"{path}: row {i}",
    )


# --- validation and assembly ---------------------------------------------------------------------


def _to_bars(path: Path, rows: _Rows, base_ms: int, base_interval: str) -> BarArrays:
    _check_values(rows)
    open_time = rows.open_time
    off_grid = np.flatnonzero(open_time % base_ms != 0)
    if off_grid.size:
        i = int(off_grid[0])
        raise KlineFormatError(
            f"{rows.where(i)}: bar start {int(open_time[i])} is not on the {base_interval} grid; "
            f"the file's bar interval does not match base_interval {base_interval}"
        )
    if rows.close_time is not None:
        wrong = np.flatnonzero(rows.close_time != open_time + base_ms - 1)
        if wrong.size:
            i = int(wrong[0])
            raise KlineFormatError(
                f"{rows.where(i)}: close_time {int(rows.close_time[i])} is not open_time + "
                f"{base_interval} - 1; the bar interval does not match base_interval "
                f"{base_interval}"
            )
    keep = _ascending_without_duplicates(rows)
    open_time, values = open_time[keep], rows.values[keep]
    _check_step(path, open_time, base_ms, base_interval)
    return BarArrays.from_klines(open_time, base_ms, tuple(values[:, i] for i in range(5)))


def _check_values(rows: _Rows) -> None:
    o, h, lo, c, v = rows.values.T
    problems = (
        (np.minimum(np.minimum(o, h), np.minimum(lo, c)) <= 0.0, "prices must be positive"),
        (v < 0.0, "volume must not be negative"),
        (h < np.maximum(o, c), "inconsistent OHLC: high is below max(open, close)"),
        (lo > np.minimum(o, c), "inconsistent OHLC: low is above min(open, close)"),
    )
    for bad, message in problems:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise KlineFormatError(
                f"{rows.where(i)}: {message} (open={o[i]!r} high={h[i]!r} low={lo[i]!r} "
                f"close={c[i]!r} volume={v[i]!r})"
            )


def _ascending_without_duplicates(rows: _Rows) -> npt.NDArray[np.intp]:
    """Row indices ascending by time, exact duplicates dropped; conflicting ones are an error."""
    order = np.argsort(rows.open_time, kind="stable")
    times = rows.open_time[order]
    repeats = np.r_[False, times[1:] == times[:-1]]
    for pos in np.flatnonzero(repeats):
        first, second = int(order[pos - 1]), int(order[pos])
        if not np.array_equal(rows.values[first], rows.values[second]):
            raise KlineFormatError(
                f"conflicting rows for bar start {int(times[pos])}: {rows.where(first)} and "
                f"{rows.where(second)} hold different values"
            )
    kept: npt.NDArray[np.intp] = order[~repeats]
    return kept


def _check_step(path: Path, open_time: npt.NDArray[np.int64], base_ms: int, name: str) -> None:
    if len(open_time) < 2:
        return
    smallest = int(np.diff(open_time).min())
    if smallest != base_ms:
        raise KlineFormatError(
            f"{path}: the smallest step between bars is {smallest} ms, not {base_ms} ms: "
            f"the file's bar interval does not match base_interval {name}"
        )
