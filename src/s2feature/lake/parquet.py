"""The base-bar lake (SPEC §10): final base bars in Parquet, partitioned by symbol and UTC date.

Layout: `<root>/symbol=<SYMBOL>/date=<YYYY-MM-DD>/part-<seq>.parquet`, the date being the UTC date
of each bar's `open_time`. Every append writes one new part per touched date; parts are never
modified in place. `<seq>` is a per-partition sequence number, so the parts of a partition have a
well-defined order and, when the same `open_time` appears in more than one part (the service
re-appends bars after a crash between the lake append and the stream ack), the part with the
higher sequence number wins.

Files appear atomically: a part is written to a hidden temp file (`.tmp-...`), fsynced and renamed
into place, so a reader sees a whole part or none; temp files left by a crash are ignored.
One writer per symbol (SPEC §8: each instance owns its symbols); readers need no coordination.
"""

from __future__ import annotations

import datetime as dt
import operator
import os
import re
import threading
import uuid
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from s2feature.domain import BAR_FLOAT_FIELDS, BAR_INT_FIELDS, DAY_MS, Bar, BarArrays

__all__ = [
    "LAKE_SCHEMA",
    "BarLake",
    "utc_date_of",
]

_TICK_FIELDS: Final = frozenset(BAR_FLOAT_FIELDS) - {"open", "high", "low", "close", "volume"}

LAKE_SCHEMA: Final = pa.schema(
    [
        pa.field("open_time", pa.int64(), nullable=False),
        pa.field("close_time", pa.int64(), nullable=False),
        pa.field("open", pa.float64(), nullable=False),
        pa.field("high", pa.float64(), nullable=False),
        pa.field("low", pa.float64(), nullable=False),
        pa.field("close", pa.float64(), nullable=False),
        pa.field("volume", pa.float64(), nullable=False),
        pa.field("mid", pa.float64(), nullable=True),
        pa.field("best_bid", pa.float64(), nullable=True),
        pa.field("best_ask", pa.float64(), nullable=True),
        pa.field("depth_top1_usdt", pa.float64(), nullable=True),
        pa.field("depth_split", pa.bool_(), nullable=False),
        pa.field("funding_next", pa.float64(), nullable=True),
        pa.field("bid_qty", pa.float64(), nullable=True),
        pa.field("ask_qty", pa.float64(), nullable=True),
        pa.field("jump_count", pa.int64(), nullable=False),
        pa.field("n_base", pa.int64(), nullable=False),
    ],
    metadata={"s2feature.lake.format": "base-bars/1"},
)
"""One row per base bar: every `domain.Bar` field; tick values as of the bar's close are null when
the input never carried them."""

_COLUMNS: Final = tuple(LAKE_SCHEMA.names)
_CLOSES_SCHEMA: Final = pa.schema(
    [LAKE_SCHEMA.field(name) for name in ("open_time", "close_time", "close")],
    metadata=LAKE_SCHEMA.metadata,
)
_LAKE_FIELDS_OF: Final = operator.attrgetter(*_COLUMNS)  # a bar's values in schema order
_PART_NAME: Final = re.compile(r"^part-(\d{12})\.parquet$")
_DATE_DIR: Final = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_SYMBOL: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_TEMP_PREFIX: Final = ".tmp-"
_EPOCH: Final = dt.date(1970, 1, 1)
# A compaction of another `BarLake` may delete a part between our listing and our open of it.
_READ_ATTEMPTS: Final = 5


def utc_date_of(epoch_ms: int) -> dt.date:
    """UTC calendar date of a millisecond timestamp (the partition of a bar's `open_time`)."""
    return _EPOCH + dt.timedelta(days=epoch_ms // DAY_MS)


def _day_number(date: dt.date) -> int:
    return (date - _EPOCH).days


def _as_date(date: dt.date | str) -> dt.date:
    return date if isinstance(date, dt.date) else dt.date.fromisoformat(date)


def _part_name(seq: int) -> str:
    return f"part-{seq:012d}.parquet"


def _fsync_dir(directory: Path) -> None:
    # A rename or a new entry is durable only once its directory is synced.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_dir(directory: Path) -> None:
    if directory.is_dir():
        return
    _ensure_dir(directory.parent)
    directory.mkdir(exist_ok=True)
    _fsync_dir(directory.parent)


def _bars_to_table(bars: Iterable[Bar]) -> pa.Table:
    # One C-level attrgetter call per bar, then a transpose: several times faster than a
    # getattr per field and bar (the service appends thousands of bars per checkpoint).
    rows = list(map(_LAKE_FIELDS_OF, bars))
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(LAKE_SCHEMA)
    arrays = []
    for field, values in zip(LAKE_SCHEMA, columns, strict=True):
        # from_pandas: a NaN tick value means "absent" in BarArrays, so it is stored as null.
        array = pa.array(values, type=field.type, from_pandas=field.name in _TICK_FIELDS)
        if not field.nullable and array.null_count:
            raise ValueError(f"bar field {field.name!r} must not be None")
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=LAKE_SCHEMA)


def _table_to_arrays(table: pa.Table) -> BarArrays:
    def column(name: str, dtype: type[np.generic]) -> Any:
        # Nulls of the float columns become NaN.
        return np.asarray(table.column(name).to_numpy(), dtype=dtype)

    columns: dict[str, Any] = {name: column(name, np.float64) for name in BAR_FLOAT_FIELDS}
    columns.update({name: column(name, np.int64) for name in BAR_INT_FIELDS})
    columns["depth_split"] = column("depth_split", np.bool_)
    return BarArrays(**columns)


def _latest_per_open_time(table: pa.Table) -> pa.Table:
    """Rows sorted by `open_time`, keeping for each `open_time` the last row of `table`.

    The caller concatenates parts in ascending sequence order, so "last" is "latest append".
    """
    open_time = np.asarray(table.column("open_time").to_numpy(), dtype=np.int64)
    if len(open_time) < 2 or bool(np.all(open_time[1:] > open_time[:-1])):
        return table  # one part, or parts in order without a repeated open_time: nothing to do
    order = np.argsort(open_time, kind="stable")  # stable: equal keys keep part order
    ordered = open_time[order]
    is_last = np.ones(len(order), dtype=np.bool_)
    is_last[:-1] = ordered[1:] != ordered[:-1]
    return table.take(pa.array(order[is_last]))


class BarLake:
    """Append-only Parquet store of final base bars, read back as `BarArrays` for recompute.

    `auto_compact_parts`: when an append leaves a date partition with more parts than this plus
    a per-symbol offset below it (`compaction_threshold`), the partition is compacted right away,
    which bounds the file count of a live service appending one bar at a time. None turns that
    off. The offset spreads the compactions: a service appends every symbol once per checkpoint
    interval, so with one threshold for all they reached it in the same few seconds, and a
    hundred compactions in a row held the consumer loop for seconds (`make soak`, 320 s in).
    """

    def __init__(self, root: Path, *, auto_compact_parts: int | None = 64) -> None:
        if auto_compact_parts is not None and auto_compact_parts < 1:
            raise ValueError(f"auto_compact_parts must be >= 1 or None, got {auto_compact_parts}")
        self.root = Path(root)
        self.auto_compact_parts = auto_compact_parts
        self._write_lock = threading.Lock()

    # -- paths ----------------------------------------------------------------------------------

    def _symbol_dir(self, symbol: str) -> Path:
        if not _SYMBOL.fullmatch(symbol):
            raise ValueError(f"invalid symbol {symbol!r}: letters, digits, '_' and '-' only")
        return self.root / f"symbol={symbol}"

    def _date_dir(self, symbol: str, date: dt.date) -> Path:
        return self._symbol_dir(symbol) / f"date={date.isoformat()}"

    @staticmethod
    def _parts(directory: Path) -> list[tuple[int, Path]]:
        """`(seq, path)` of the complete parts of a partition, in sequence order."""
        if not directory.is_dir():
            return []
        parts = []
        for path in directory.iterdir():
            match = _PART_NAME.fullmatch(path.name)
            if match:
                parts.append((int(match.group(1)), path))
        return sorted(parts)

    # -- queries --------------------------------------------------------------------------------

    def symbols(self) -> list[str]:
        """Symbols with a partition directory in the lake, sorted."""
        if not self.root.is_dir():
            return []
        names = (p.name for p in self.root.iterdir() if p.is_dir())
        return sorted(n.removeprefix("symbol=") for n in names if n.startswith("symbol="))

    def dates(self, symbol: str) -> list[dt.date]:
        """UTC dates with a partition for `symbol`, ascending (a partition may hold no parts)."""
        directory = self._symbol_dir(symbol)
        if not directory.is_dir():
            return []
        matches = (_DATE_DIR.fullmatch(p.name) for p in directory.iterdir() if p.is_dir())
        return sorted(dt.date.fromisoformat(m.group(1)) for m in matches if m)

    def read(
        self,
        symbol: str,
        from_open_time: int | None = None,
        to_close_time: int | None = None,
    ) -> BarArrays:
        """Bars of `symbol` with `open_time >= from_open_time` and `close_time <= to_close_time`
        (each bound optional), sorted by `open_time`, one row per `open_time` (latest append).

        A recompute at t0 passes `to_close_time=t0`: no bar closing after t0 is ever returned.
        """
        first_day = None if from_open_time is None else from_open_time // DAY_MS
        # A bar's open_time <= close_time, so bars closing by `to_close_time` opened by then too.
        last_day = None if to_close_time is None else to_close_time // DAY_MS
        tables = []
        for date in self.dates(symbol):
            day = _day_number(date)
            if (first_day is not None and day < first_day) or (
                last_day is not None and day > last_day
            ):
                continue
            table = self._read_partition(self._date_dir(symbol, date))
            # Filtered after the latest-append dedupe, so a superseded row can never reappear.
            tables.append(_bounded(table, from_open_time, to_close_time))
        if not tables:
            return _table_to_arrays(LAKE_SCHEMA.empty_table())
        # Partitions are disjoint UTC days read in date order, so the result stays sorted.
        return _table_to_arrays(pa.concat_tables(tables))

    def last_close_time(self, symbol: str) -> int | None:
        """`close_time` of the latest bar stored for `symbol`, None when it has none."""
        for date in reversed(self.dates(symbol)):
            table = self._read_partition(self._date_dir(symbol, date))
            if table.num_rows:
                return int(np.max(np.asarray(table.column("close_time"))))
        return None

    def read_closes(
        self, symbol: str, from_open_time: int, to_close_time: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """`(close_time, close)` of the bars `read` would return, reading only the three
        columns needed (a service restart reads a month of them per symbol)."""
        table = self._span(symbol, from_open_time, to_close_time, _CLOSES_SCHEMA)
        open_time = np.asarray(table.column("open_time").to_numpy(), dtype=np.int64)
        close_time = np.asarray(table.column("close_time").to_numpy(), dtype=np.int64)
        close = np.asarray(table.column("close").to_numpy(), dtype=np.float64)
        keep = (open_time >= from_open_time) & (close_time <= to_close_time)
        return close_time[keep], close[keep]

    def read_span(self, symbol: str, from_open_time: int, to_close_time: int) -> BarArrays:
        """The bars `read` returns for these bounds, read as `read_closes` reads: for a
        service's warm-up, which reads a fortnight of whole bars per symbol."""
        arrays = _table_to_arrays(self._span(symbol, from_open_time, to_close_time, LAKE_SCHEMA))
        keep = (arrays.open_time >= from_open_time) & (arrays.close_time <= to_close_time)
        return BarArrays(**{name: values[keep] for name, values in arrays.__dict__.items()})

    def _span(
        self, symbol: str, from_open_time: int, to_close_time: int, schema: pa.Schema
    ) -> pa.Table:
        """The columns of `schema` of every row of the partitions that the bounds touch, one
        per `open_time` (latest part wins), sorted by `open_time` (bounds not applied)."""
        first_day, last_day = from_open_time // DAY_MS, to_close_time // DAY_MS
        tables = []
        for date in self.dates(symbol):
            if first_day <= _day_number(date) <= last_day:
                tables.extend(self._whole_parts(self._date_dir(symbol, date), schema))
        # Parts in date order, then sequence order within a date: dates hold disjoint open
        # times, so one latest-append dedupe over all of them equals one per partition.
        return _latest_per_open_time(pa.concat_tables(tables or [schema.empty_table()]))

    def _whole_parts(self, directory: Path, schema: pa.Schema) -> list[pa.Table]:
        """The columns of `schema` of each part of a partition, in sequence order. A part is a
        day of bars at most, tens of kilobytes: it is read whole in one call and decoded on the
        calling thread, which takes half the time of Arrow's reader with its thread pool."""
        columns = list(schema.names)
        for _ in range(_READ_ATTEMPTS):
            try:
                tables = []
                for _, path in self._parts(directory):
                    with open(path, "rb") as file:
                        data = file.read()
                    with pq.ParquetFile(pa.BufferReader(data)) as part:
                        table = part.read(columns=columns, use_threads=False)
                    tables.append(table.cast(schema))
                return tables
            except FileNotFoundError:
                continue  # compacted under us: list again
        raise RuntimeError(f"parts of {directory} kept disappearing while being read")

    def _read_partition(self, directory: Path, schema: pa.Schema = LAKE_SCHEMA) -> pa.Table:
        """The partition's rows, one per `open_time` (latest part wins), sorted by `open_time`:
        the columns of `schema` (which has `open_time`)."""
        for _ in range(_READ_ATTEMPTS):
            try:
                tables = [self._read_part(path, schema) for _, path in self._parts(directory)]
            except FileNotFoundError:
                continue  # compacted under us: list again
            if not tables:
                return schema.empty_table()
            return _latest_per_open_time(pa.concat_tables(tables))
        raise RuntimeError(f"parts of {directory} kept disappearing while being read")

    @staticmethod
    def _read_part(path: Path, schema: pa.Schema = LAKE_SCHEMA) -> pa.Table:
        # One file, its own columns (not `symbol=`/`date=` from the directories); `ParquetFile`
        # skips the dataset machinery of `read_table`, a third of the time of a small part.
        with pq.ParquetFile(path) as part:
            table = part.read(columns=list(schema.names))
        return table.cast(schema)

    # -- writes ---------------------------------------------------------------------------------

    def append(self, symbol: str, bars: Sequence[Bar]) -> None:
        """Store `bars` as one new part per UTC date they touch.

        Re-appending bars already stored is harmless; for an `open_time` given more than once,
        the latest append wins (and, within one call, the later bar of the sequence).
        """
        by_day: dict[int, dict[int, Bar]] = {}
        for bar in bars:
            if bar.close_time < bar.open_time:
                raise ValueError(f"bar closes before it opens: {bar}")
            by_day.setdefault(bar.open_time // DAY_MS, {})[bar.open_time] = bar
        threshold = self.compaction_threshold(symbol)
        with self._write_lock:
            for day, latest in sorted(by_day.items()):
                date = _EPOCH + dt.timedelta(days=day)
                directory = self._date_dir(symbol, date)
                _ensure_dir(directory)
                parts = self._parts(directory)
                seq = parts[-1][0] + 1 if parts else 1
                table = _bars_to_table(latest[t] for t in sorted(latest))
                self._write_part(directory, _part_name(seq), table)
                if threshold is not None and len(parts) + 1 > threshold:
                    self._compact_locked(directory)

    def compaction_threshold(self, symbol: str) -> int | None:
        """The number of parts a partition of `symbol` may hold before an append compacts it:
        `auto_compact_parts` plus a stable offset of the symbol's own, below `auto_compact_parts`
        (None: no auto-compaction)."""
        if self.auto_compact_parts is None:
            return None
        offset = zlib.crc32(symbol.encode()) % self.auto_compact_parts
        return self.auto_compact_parts + offset

    def compact(self, symbol: str, date: dt.date | str) -> None:
        """Merge the parts of one partition into a single part with the same content.

        The merged part takes the name of the newest part it replaces (so parts appended later
        still win), then the older parts are deleted: at every moment a reader sees the same
        bars. Leftover temp files of crashed writes in the partition are removed.
        """
        with self._write_lock:
            self._compact_locked(self._date_dir(symbol, _as_date(date)))

    def _compact_locked(self, directory: Path) -> None:
        if not directory.is_dir():
            return
        for leftover in directory.glob(f"{_TEMP_PREFIX}*"):
            leftover.unlink(missing_ok=True)
        parts = self._parts(directory)
        if len(parts) <= 1:
            return
        merged = _latest_per_open_time(pa.concat_tables([self._read_part(p) for _, p in parts]))
        self._write_part(directory, parts[-1][1].name, merged)
        for _, older in parts[:-1]:
            older.unlink()
        _fsync_dir(directory)

    @staticmethod
    def _write_part(directory: Path, name: str, table: pa.Table) -> None:
        """Write `table` as `directory/name` atomically: temp file, fsync, rename, dir fsync."""
        temp = directory / f"{_TEMP_PREFIX}{uuid.uuid4().hex}-{name}"
        try:
            with open(temp, "wb") as sink:
                # No dictionary pages: bar values hardly repeat, so dictionary encoding only
                # cost time (zstd without it writes a 670-bar part in 60% of the time, and
                # 16% smaller).
                pq.write_table(table, sink, compression="zstd", use_dictionary=False)
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(temp, directory / name)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(directory)


def _bounded(table: pa.Table, from_open_time: int | None, to_close_time: int | None) -> pa.Table:
    """The rows with `open_time >= from_open_time` and `close_time <= to_close_time`. A day
    inside a range needs no filter, and a minimum and a maximum tell so for a fraction of the
    filter's cost (a 90-day recompute reads 120 days per symbol)."""
    if not table.num_rows:
        return table
    keep = None
    if from_open_time is not None:
        open_time = table.column("open_time").to_numpy()
        if open_time.min() < from_open_time:
            keep = open_time >= from_open_time
    if to_close_time is not None:
        close_time = table.column("close_time").to_numpy()
        if close_time.max() > to_close_time:
            before = close_time <= to_close_time
            keep = before if keep is None else keep & before
    return table if keep is None else table.filter(pa.array(keep))
