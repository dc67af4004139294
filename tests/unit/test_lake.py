"""The Parquet base-bar lake: round trips, range reads, idempotent appends, compaction, crashes."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2feature.domain import DAY_MS, HOUR_MS, Bar
from s2feature.lake import LAKE_SCHEMA, BarLake, utc_date_of

# 2024-01-01T00:00:00Z: 19723 days after the epoch (54 years of 365 days + 13 leap days,
# 1972..2020), 19723 * 86_400_000 ms.
MIDNIGHT_2024 = 19723 * DAY_MS
MINUTE_MS = 60_000


def _bar(open_time: int, interval: int = HOUR_MS, **overrides: Any) -> Bar:
    """A bar whose values are derived from its open time, so each bar is distinguishable."""
    base = 100.0 + (open_time // interval) % 1000
    fields: dict[str, Any] = {
        "open_time": open_time,
        "close_time": open_time + interval - 1,
        "open": base,
        "high": base + 2.0,
        "low": base - 1.0,
        "close": base + 1.0,
        "volume": 10.0,
        "mid": base + 1.0,
        "best_bid": base + 0.5,
        "best_ask": base + 1.5,
        "depth_top1_usdt": 50_000.0,
        "depth_split": False,
        "funding_next": 0.0001,
        "bid_qty": 3.0,
        "ask_qty": 1.0,
        "jump_count": 0,
        "n_base": 1,
    }
    fields.update(overrides)
    return Bar(**fields)


def _hourly(first_open: int, count: int) -> list[Bar]:
    return [_bar(first_open + i * HOUR_MS) for i in range(count)]


def _part_files(lake_root: Path, symbol: str = "BTCUSDT") -> list[Path]:
    return sorted((lake_root / f"symbol={symbol}").glob("date=*/part-*.parquet"))


@pytest.fixture
def lake(tmp_path: Path) -> BarLake:
    return BarLake(tmp_path / "lake")


# -- round trip and schema --------------------------------------------------------------------


def test_round_trip_keeps_every_field_including_absent_ticks(lake: BarLake) -> None:
    bars = [
        _bar(MIDNIGHT_2024, depth_split=True, jump_count=2, n_base=60),
        # A spot bar with no funding and no queue quantities, as SPEC §3 allows.
        _bar(MIDNIGHT_2024 + HOUR_MS, funding_next=None, bid_qty=None, ask_qty=None),
        _bar(
            MIDNIGHT_2024 + 2 * HOUR_MS,
            mid=None,
            best_bid=None,
            best_ask=None,
            depth_top1_usdt=None,
        ),
    ]

    lake.append("BTCUSDT", bars)
    read = lake.read("BTCUSDT")

    assert read.to_bars() == bars
    assert np.isnan(read.funding_next[1])
    assert np.isnan(read.mid[2])
    assert read.depth_split.tolist() == [True, False, False]
    assert read.jump_count.tolist() == [2, 0, 0]
    assert read.n_base.tolist() == [60, 1, 1]


def test_part_has_the_explicit_schema_with_null_ticks(lake: BarLake) -> None:
    lake.append("BTCUSDT", [_bar(MIDNIGHT_2024, funding_next=None, bid_qty=math.nan)])

    [part] = _part_files(lake.root)
    table = pq.read_table(part, partitioning=None)

    assert table.schema.equals(LAKE_SCHEMA, check_metadata=False)
    # None and NaN ticks both mean "absent" and are stored as null.
    assert table.column("funding_next").null_count == 1
    assert table.column("bid_qty").null_count == 1
    assert table.column("ask_qty").null_count == 0


def test_read_of_unknown_symbol_is_empty(lake: BarLake) -> None:
    read = lake.read("NOPE")

    assert len(read) == 0
    assert read.close_time.dtype == np.int64
    assert read.mid.dtype == np.float64
    assert lake.last_close_time("NOPE") is None


@pytest.mark.parametrize(
    ("epoch_ms", "expected"),
    [
        (0, dt.date(1970, 1, 1)),
        (DAY_MS - 1, dt.date(1970, 1, 1)),
        (DAY_MS, dt.date(1970, 1, 2)),
        (MIDNIGHT_2024 - 1, dt.date(2023, 12, 31)),
        (MIDNIGHT_2024, dt.date(2024, 1, 1)),
    ],
    ids=["epoch", "last-ms-of-day-0", "day-1", "last-ms-of-2023", "first-ms-of-2024"],
)
def test_utc_date_of_splits_at_utc_midnight(epoch_ms: int, expected: dt.date) -> None:
    assert utc_date_of(epoch_ms) == expected


# -- partitions and ranges --------------------------------------------------------------------


def test_bars_are_partitioned_by_utc_date_of_open_time(lake: BarLake) -> None:
    # 22:00 and 23:00 on Dec 31 (the 23:00 bar closes at 23:59:59.999, still Dec 31), then 00:00
    # and 01:00 on Jan 1.
    lake.append("BTCUSDT", _hourly(MIDNIGHT_2024 - 2 * HOUR_MS, 4))

    files = [p.relative_to(lake.root).as_posix() for p in _part_files(lake.root)]

    assert files == [
        "symbol=BTCUSDT/date=2023-12-31/part-000000000001.parquet",
        "symbol=BTCUSDT/date=2024-01-01/part-000000000001.parquet",
    ]
    assert lake.dates("BTCUSDT") == [dt.date(2023, 12, 31), dt.date(2024, 1, 1)]


@pytest.mark.parametrize(
    ("from_open_time", "to_close_time", "expected_hours"),
    [
        # Hours relative to 2024-01-01T00:00Z of the stored bars -2, -1, 0, 1.
        (None, None, [-2, -1, 0, 1]),
        (None, MIDNIGHT_2024 - 1, [-2, -1]),  # the 23:00 bar closes exactly at the bound
        (None, MIDNIGHT_2024 - 2, [-2]),  # 1 ms earlier: the 23:00 bar has not closed yet
        (MIDNIGHT_2024, None, [0, 1]),
        (MIDNIGHT_2024 - HOUR_MS, MIDNIGHT_2024 + HOUR_MS - 1, [-1, 0]),
        (MIDNIGHT_2024 + 1, None, [1]),  # the 00:00 bar opened before the bound
        (MIDNIGHT_2024, MIDNIGHT_2024 + HOUR_MS - 2, []),
    ],
    ids=[
        "everything",
        "to-last-ms-of-dec-31",
        "to-one-ms-before-close",
        "from-midnight",
        "straddling-midnight",
        "from-one-ms-after-midnight",
        "bound-before-first-close",
    ],
)
def test_range_read_at_utc_midnight(
    lake: BarLake,
    from_open_time: int | None,
    to_close_time: int | None,
    expected_hours: list[int],
) -> None:
    lake.append("BTCUSDT", _hourly(MIDNIGHT_2024 - 2 * HOUR_MS, 4))

    read = lake.read("BTCUSDT", from_open_time, to_close_time)

    assert read.open_time.tolist() == [MIDNIGHT_2024 + h * HOUR_MS for h in expected_hours]


@pytest.fixture(scope="module")
def three_day_lake(tmp_path_factory: pytest.TempPathFactory) -> BarLake:
    """72 hourly bars from 2023-12-31T00:00Z, appended in 5 uneven chunks."""
    lake = BarLake(tmp_path_factory.mktemp("lake"))
    bars = _hourly(MIDNIGHT_2024 - DAY_MS, 72)
    for start, stop in [(0, 7), (7, 30), (30, 31), (31, 60), (60, 72)]:
        lake.append("BTCUSDT", bars[start:stop])
    return lake


@settings(max_examples=200)
@given(
    from_open_time=st.none() | st.integers(MIDNIGHT_2024 - 2 * DAY_MS, MIDNIGHT_2024 + 3 * DAY_MS),
    to_close_time=st.none() | st.integers(MIDNIGHT_2024 - 2 * DAY_MS, MIDNIGHT_2024 + 3 * DAY_MS),
)
def test_read_returns_exactly_the_bars_inside_the_bounds(
    three_day_lake: BarLake, from_open_time: int | None, to_close_time: int | None
) -> None:
    stored = _hourly(MIDNIGHT_2024 - DAY_MS, 72)
    expected = [
        b.open_time
        for b in stored
        if (from_open_time is None or b.open_time >= from_open_time)
        and (to_close_time is None or b.close_time <= to_close_time)
    ]

    read = three_day_lake.read("BTCUSDT", from_open_time, to_close_time)

    assert read.open_time.tolist() == expected
    if to_close_time is not None:
        assert (read.close_time <= to_close_time).all()


def test_last_close_time_is_the_latest_bar_close(lake: BarLake) -> None:
    lake.append("BTCUSDT", _hourly(MIDNIGHT_2024 - 2 * HOUR_MS, 4))

    # The last bar opens at 01:00 on Jan 1 and closes 1 ms before 02:00.
    assert lake.last_close_time("BTCUSDT") == MIDNIGHT_2024 + 2 * HOUR_MS - 1


def test_symbols_lists_each_symbol_once_sorted(lake: BarLake) -> None:
    lake.append("ETHUSDT", [_bar(MIDNIGHT_2024)])
    lake.append("BTCUSDT", [_bar(MIDNIGHT_2024)])
    lake.append("BTCUSDT", [_bar(MIDNIGHT_2024 + DAY_MS)])

    assert lake.symbols() == ["BTCUSDT", "ETHUSDT"]
    assert BarLake(lake.root / "missing").symbols() == []


@pytest.mark.parametrize(
    "symbol", ["../BTCUSDT", "BTC/USDT", "", "symbol=X"], ids=["parent", "slash", "empty", "equals"]
)
def test_symbol_that_is_not_a_plain_name_is_rejected(lake: BarLake, symbol: str) -> None:
    with pytest.raises(ValueError, match="invalid symbol"):
        lake.append(symbol, [_bar(MIDNIGHT_2024)])


def test_bar_closing_before_it_opens_is_rejected(lake: BarLake) -> None:
    with pytest.raises(ValueError, match="closes before it opens"):
        lake.append("BTCUSDT", [_bar(MIDNIGHT_2024, close_time=MIDNIGHT_2024 - 1)])

    assert lake.read("BTCUSDT").to_bars() == []


# -- idempotence and later-append-wins --------------------------------------------------------


def test_duplicate_append_is_idempotent(lake: BarLake) -> None:
    bars = _hourly(MIDNIGHT_2024 - 2 * HOUR_MS, 4)
    lake.append("BTCUSDT", bars)

    lake.append("BTCUSDT", bars)  # replay after a crash before the stream ack

    assert len(_part_files(lake.root)) == 4  # both appends wrote their two partitions
    assert lake.read("BTCUSDT").to_bars() == bars


def test_later_append_wins_for_the_same_open_time(lake: BarLake) -> None:
    first = _hourly(MIDNIGHT_2024, 3)
    corrected = _bar(MIDNIGHT_2024 + HOUR_MS, close=999.0, mid=None, jump_count=1)
    lake.append("BTCUSDT", first)

    lake.append("BTCUSDT", [corrected])

    assert lake.read("BTCUSDT").to_bars() == [first[0], corrected, first[2]]


def test_reappending_the_original_after_a_correction_wins_again(lake: BarLake) -> None:
    original = _bar(MIDNIGHT_2024)
    lake.append("BTCUSDT", [original])
    lake.append("BTCUSDT", [_bar(MIDNIGHT_2024, close=1.0)])

    lake.append("BTCUSDT", [original])

    assert lake.read("BTCUSDT").to_bars() == [original]


def test_later_bar_of_one_append_wins(lake: BarLake) -> None:
    lake.append("BTCUSDT", [_bar(MIDNIGHT_2024, close=1.0), _bar(MIDNIGHT_2024, close=2.0)])

    assert lake.read("BTCUSDT").close.tolist() == [2.0]


def test_superseded_row_is_not_returned_by_a_tighter_bound(lake: BarLake) -> None:
    # The first version of the 00:00 bar claimed to close early (00:29:59.999); the correction
    # closes at 00:59:59.999. A read up to 00:30 must not fall back to the superseded version.
    lake.append("BTCUSDT", [_bar(MIDNIGHT_2024, close_time=MIDNIGHT_2024 + 30 * MINUTE_MS - 1)])
    lake.append("BTCUSDT", [_bar(MIDNIGHT_2024)])

    assert len(lake.read("BTCUSDT", to_close_time=MIDNIGHT_2024 + 30 * MINUTE_MS)) == 0
    assert lake.last_close_time("BTCUSDT") == MIDNIGHT_2024 + HOUR_MS - 1


# -- compaction -------------------------------------------------------------------------------


def test_compaction_merges_parts_and_preserves_content(lake: BarLake) -> None:
    lake.append("BTCUSDT", _hourly(MIDNIGHT_2024, 5))
    lake.append("BTCUSDT", [_bar(MIDNIGHT_2024 + 2 * HOUR_MS, close=7.0)])
    lake.append("BTCUSDT", _hourly(MIDNIGHT_2024 + 4 * HOUR_MS, 3))
    before = lake.read("BTCUSDT").to_bars()

    lake.compact("BTCUSDT", dt.date(2024, 1, 1))

    # The merged part keeps the name of the newest part it replaced, and holds one row per hour:
    # hours 0..6, hour 2 in its corrected version, hour 4 (appended twice) once.
    [merged] = _part_files(lake.root)
    assert merged.name == "part-000000000003.parquet"
    assert pq.read_metadata(merged).num_rows == 7
    assert lake.read("BTCUSDT").to_bars() == before
    assert len(before) == 7


def test_append_after_compaction_still_wins(lake: BarLake) -> None:
    lake.append("BTCUSDT", _hourly(MIDNIGHT_2024, 2))
    lake.append("BTCUSDT", _hourly(MIDNIGHT_2024, 2))
    lake.compact("BTCUSDT", "2024-01-01")
    corrected = _bar(MIDNIGHT_2024, close=5.0)

    lake.append("BTCUSDT", [corrected])

    assert lake.read("BTCUSDT").to_bars() == [corrected, _bar(MIDNIGHT_2024 + HOUR_MS)]


def test_compacting_an_absent_partition_is_a_no_op(lake: BarLake) -> None:
    lake.compact("BTCUSDT", "2024-01-01")

    assert lake.read("BTCUSDT").to_bars() == []


# -- crashes ----------------------------------------------------------------------------------


def test_leftover_temp_file_of_a_crashed_append_is_ignored(lake: BarLake) -> None:
    bars = _hourly(MIDNIGHT_2024, 2)
    lake.append("BTCUSDT", bars)
    partition = lake.root / "symbol=BTCUSDT" / "date=2024-01-01"
    # What a crash in the middle of writing the next part leaves behind: a truncated file.
    [part] = _part_files(lake.root)
    (partition / ".tmp-0123abcd-part-000000000002.parquet").write_bytes(part.read_bytes()[:100])
    # And a crash before any part of a new day was renamed into place.
    next_day = lake.root / "symbol=BTCUSDT" / "date=2024-01-02"
    next_day.mkdir()
    (next_day / ".tmp-4567cdef-part-000000000001.parquet").write_bytes(b"PAR1")

    assert lake.read("BTCUSDT").to_bars() == bars
    assert lake.last_close_time("BTCUSDT") == MIDNIGHT_2024 + 2 * HOUR_MS - 1

    more = _hourly(MIDNIGHT_2024 + 2 * HOUR_MS, 1)
    lake.append("BTCUSDT", more)
    lake.compact("BTCUSDT", "2024-01-01")

    assert lake.read("BTCUSDT").to_bars() == bars + more
    assert sorted(p.name for p in partition.iterdir()) == ["part-000000000002.parquet"]


# -- many small appends -----------------------------------------------------------------------


@pytest.mark.parametrize("auto_compact_parts", [None, 16], ids=["off", "beyond-16-parts"])
def test_many_single_bar_appends_read_back_in_order(
    tmp_path: Path, auto_compact_parts: int | None
) -> None:
    lake = BarLake(tmp_path, auto_compact_parts=auto_compact_parts)
    # 180 one-minute bars from 23:00 on Dec 31: 60 on Dec 31, 120 on Jan 1.
    bars = [_bar(MIDNIGHT_2024 - HOUR_MS + i * MINUTE_MS, interval=MINUTE_MS) for i in range(180)]

    for bar in bars:
        lake.append("BTCUSDT", [bar])

    assert lake.read("BTCUSDT").to_bars() == bars
    threshold = lake.compaction_threshold("BTCUSDT")
    if threshold is None:  # one part per append
        assert len(_part_files(lake.root)) == 180
    else:
        # The (threshold + 1)th part of a partition compacts it back to 1, so after n appends
        # a partition holds ((n - 1) % threshold) + 1 parts.
        assert 16 <= threshold < 32
        expected = (59 % threshold + 1) + (119 % threshold + 1)
        assert len(_part_files(lake.root)) == expected


def test_symbols_reach_their_compaction_at_different_part_counts(tmp_path: Path) -> None:
    # Appended in step (one part per checkpoint each), symbols must not all compact at once.
    lake = BarLake(tmp_path, auto_compact_parts=64)
    thresholds = [lake.compaction_threshold(f"SYM{i:03d}USDT") for i in range(100)]
    assert all(t is not None and 64 <= t < 128 for t in thresholds)
    assert len(set(thresholds)) >= 40  # spread over the 64 values
    assert lake.compaction_threshold("SYM000USDT") == thresholds[0]  # stable
    assert BarLake(tmp_path, auto_compact_parts=None).compaction_threshold("X") is None


# -- model-based property ---------------------------------------------------------------------

_append_op = st.tuples(
    st.just("append"),
    st.lists(
        st.tuples(st.integers(0, 5), st.floats(1.0, 1e6, allow_nan=False)), min_size=1, max_size=4
    ),
)
_compact_op = st.tuples(st.just("compact"), st.integers(0, 1))


@settings(max_examples=30)
@given(ops=st.lists(st.one_of(_append_op, _compact_op), min_size=1, max_size=6))
def test_lake_reads_like_a_last_write_wins_map(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[str, Any]],
) -> None:
    lake = BarLake(tmp_path_factory.mktemp("lake"), auto_compact_parts=3)
    # Slots 0..5 are 12-hour bars: 0 and 1 on Dec 31, 2 and 3 on Jan 1, 4 and 5 on Jan 2.
    first_open = MIDNIGHT_2024 - DAY_MS
    model: dict[int, Bar] = {}
    for kind, payload in ops:
        if kind == "append":
            bars = [
                _bar(first_open + slot * 12 * HOUR_MS, interval=12 * HOUR_MS, close=close)
                for slot, close in payload
            ]
            lake.append("BTCUSDT", bars)
            model.update((bar.open_time, bar) for bar in bars)
        else:
            lake.compact("BTCUSDT", utc_date_of(first_open + payload * DAY_MS))

    assert lake.read("BTCUSDT").to_bars() == [model[t] for t in sorted(model)]


def test_read_closes_equals_the_columns_of_read_with_the_latest_append_winning(
    lake: BarLake,
) -> None:
    bars = _hourly(MIDNIGHT_2024 - 5 * HOUR_MS, 60)  # across two UTC midnights
    lake.append("BTCUSDT", bars)
    lake.append("BTCUSDT", [_bar(bars[30].open_time, close=1.0, high=200.0)])  # a correction
    for lo, hi in [(0, 10**15), (bars[3].open_time, bars[40].close_time), (bars[7].open_time, 0)]:
        full = lake.read("BTCUSDT", from_open_time=lo, to_close_time=hi)
        close_time, close = lake.read_closes("BTCUSDT", from_open_time=lo, to_close_time=hi)
        assert close_time.tolist() == full.close_time.tolist()
        assert close.tolist() == full.close.tolist()
    _, close = lake.read_closes("BTCUSDT", 0, 10**15)
    assert close.tolist()[30] == 1.0
    assert lake.read_closes("ETHUSDT", 0, 10**15)[0].tolist() == []


def test_read_span_equals_read_with_the_latest_append_winning(lake: BarLake) -> None:
    bars = _hourly(MIDNIGHT_2024 - 5 * HOUR_MS, 60)  # across two UTC midnights
    lake.append("BTCUSDT", bars)
    lake.append("BTCUSDT", [_bar(bars[30].open_time, close=1.0, high=200.0)])  # a correction
    for lo, hi in [(0, 10**15), (bars[3].open_time, bars[40].close_time), (bars[7].open_time, 0)]:
        full = lake.read("BTCUSDT", from_open_time=lo, to_close_time=hi)
        assert lake.read_span("BTCUSDT", lo, hi).to_bars() == full.to_bars()
    assert lake.read_span("BTCUSDT", 0, 10**15).to_bars()[30].close == 1.0
    assert len(lake.read_span("ETHUSDT", 0, 10**15)) == 0
