"""One behaviour suite for every store backend (SQLite always; ArangoDB with a test server).

The ArangoDB parameter runs when `S2_TEST_ARANGO_URL` is set (e.g. `http://127.0.0.1:8529`, with
optional `S2_TEST_ARANGO_USER` / `S2_TEST_ARANGO_PASSWORD`); each test then works in a fresh,
uniquely named database that is dropped afterwards.
"""

from __future__ import annotations

import math
import os
import random
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from s2feature.domain import WINDOWS
from s2feature.store import (
    SqliteStore,
    Store,
    StoreError,
    StoreSettings,
    StoreUnavailable,
    dqc_fail_event_id,
    open_store,
    recompute_event_id,
)
from s2feature.store.base import prepare_signal

ARANGO_URL = os.environ.get("S2_TEST_ARANGO_URL", "")
ARANGO_USER = os.environ.get("S2_TEST_ARANGO_USER", "root")
ARANGO_PASSWORD = os.environ.get("S2_TEST_ARANGO_PASSWORD", "")

DAY_END = 1_735_689_599_999  # 2024-12-31T23:59:59.999Z: the close of a 1m, 5m, 1h, 4h and 1d bar
HOUR = 3_600_000

OpenStore = Callable[[], Store]


@contextmanager
def _sqlite_location(tmp_path: Path) -> Iterator[OpenStore]:
    yield lambda: SqliteStore(tmp_path / "nested" / "s2.db")


@contextmanager
def _arango_location(tmp_path: Path) -> Iterator[OpenStore]:
    from arango.client import ArangoClient

    from s2feature.store.arango import ArangoStore

    database = f"s2_test_{uuid.uuid4().hex[:16]}"
    try:
        yield lambda: ArangoStore(ARANGO_URL, database, ARANGO_USER, ARANGO_PASSWORD)
    finally:
        client = ArangoClient(hosts=ARANGO_URL)
        try:
            system_db = client.db("_system", username=ARANGO_USER, password=ARANGO_PASSWORD)
            system_db.delete_database(database, ignore_missing=True)
        finally:
            client.close()


LOCATIONS: dict[str, Callable[[Path], AbstractContextManager[OpenStore]]] = {
    "sqlite": _sqlite_location,
    "arangodb": _arango_location,
}


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "arangodb",
            marks=pytest.mark.skipif(not ARANGO_URL, reason="S2_TEST_ARANGO_URL is not set"),
        ),
    ]
)
def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens a store on one fresh location; every call opens it again (a restart)."""
    opened: list[Store] = []
    with LOCATIONS[request.param](tmp_path) as open_at_location:

        def open_tracked() -> Store:
            opened.append(open_at_location())
            return opened[-1]

        try:
            yield open_tracked
        finally:
            for store in opened:
                store.close()


@pytest.fixture
def store(open_backend: OpenStore) -> Store:
    return open_backend()


def signal(
    symbol: str = "BTCUSDT",
    window: str = "1h",
    t0: int = DAY_END,
    **overrides: Any,
) -> dict[str, Any]:
    """A snapshot payload shaped like `Snapshot.to_payload` (SPEC §4)."""
    doc: dict[str, Any] = {
        "signal_id": f"{symbol}:{window}:{t0}",
        "t0": t0,
        "symbol": symbol,
        "venue": "binance",
        "market": "fut",
        "window": window,
        "features": {"atr_14": 812.5, "spread_bps": 0.25, "rv_30d": None, "regime_label": "NORMAL"},
        "meta": {"calc": {"depth_top1_usdt": "sum"}, "bar_coverage": 1.0, "inputs_until": t0},
        "config_rev": "rev-1",
        "dqc": {
            "pass": True,
            "missing": False,
            "jump": False,
            "bounds": False,
            "note": "",
            "reasons": [],
        },
        "source": "s2",
        "mode": "realtime",
        "computed_at": t0 + 1_234,
    }
    doc.update(overrides)
    return doc


def event(event_id: str, ts: int, kind: str = "FEATURE_DQC_FAIL", **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "kind": kind, "symbol": "BTCUSDT", "ts": ts, **extra}


def ids_of(docs: list[dict[str, Any]]) -> list[str]:
    return [doc["signal_id"] for doc in docs]


# --------------------------------------------------------------------------- signals


def test_store_satisfies_the_protocol(store: Store) -> None:
    assert isinstance(store, Store)
    assert store.name in ("sqlite", "arangodb")


def test_upsert_then_get_round_trips_exactly(store: Store) -> None:
    doc = signal(
        features={
            "atr_14": 0.1,
            "atr_14_pct": 1 / 3,
            "rv_1d": 1e-12,
            "depth_top1_usdt": 123_456_789.125,
            "rv_30d": None,
            "regime_label": "EXTREME",
        },
        meta={
            "calc": {"depth_top1_usdt": "split", "note": "ünïcødé ✓ 比特幣"},
            "bar_coverage": 0.95,
            "inputs_until": DAY_END,
            "nested": {"deeper": {"list": [1, None, "x", {"k": [2.5]}]}},
        },
        computed_at=2**53 - 1,  # the largest integer every backend keeps exactly
    )
    store.upsert_signals([doc])
    assert store.get_signal(doc["signal_id"]) == doc


def test_a_prepared_row_is_stored_as_its_document(store: Store) -> None:
    # The service prepares each payload once (checked, encoded) and hands over the row.
    doc, plain = signal(t0=DAY_END - HOUR), signal()
    store.upsert_signals([prepare_signal(doc), plain])
    assert store.query_signals("BTCUSDT") == [doc, plain]


def test_get_of_an_unknown_signal_is_none(store: Store) -> None:
    store.upsert_signals([signal()])
    assert store.get_signal("ETHUSDT:1h:1735689599999") is None
    assert store.get_signal("not a/valid key") is None


def test_replaying_a_batch_changes_nothing(store: Store) -> None:
    batch = [signal(t0=DAY_END - k * HOUR) for k in range(5)]
    store.upsert_signals(batch)
    first = store.query_signals("BTCUSDT")
    store.upsert_signals(batch)
    assert store.query_signals("BTCUSDT") == first
    assert store.count_signals() == 5


def test_upsert_replaces_the_whole_document(store: Store) -> None:
    store.upsert_signals([signal(features={"atr_14": 1.0, "rv_1d": 2.0}, extra_field="old")])
    replacement = signal(features={"atr_14": 3.0}, mode="recompute")
    store.upsert_signals([replacement])
    stored = store.get_signal(replacement["signal_id"])
    # replaced, not merged: neither rv_1d nor extra_field survives
    assert stored == replacement
    assert store.count_signals() == 1


def test_last_duplicate_in_one_batch_wins(store: Store) -> None:
    store.upsert_signals([signal(config_rev="rev-1"), signal(config_rev="rev-2")])
    assert store.get_signal(signal()["signal_id"]) == signal(config_rev="rev-2")


def test_query_orders_by_t0_then_window_index(store: Store) -> None:
    # DAY_END closes a bar of every window; the hour before it closes 1m, 5m and 1h bars only
    earlier = DAY_END - HOUR
    docs = [signal(window=w, t0=DAY_END) for w in WINDOWS]
    docs += [signal(window=w, t0=earlier) for w in ("1m", "5m", "1h")]
    random.Random(7).shuffle(docs)
    store.upsert_signals(docs)
    assert ids_of(store.query_signals("BTCUSDT")) == [
        f"BTCUSDT:1m:{earlier}",
        f"BTCUSDT:5m:{earlier}",
        f"BTCUSDT:1h:{earlier}",
        f"BTCUSDT:1m:{DAY_END}",
        f"BTCUSDT:5m:{DAY_END}",
        f"BTCUSDT:1h:{DAY_END}",
        f"BTCUSDT:4h:{DAY_END}",
        f"BTCUSDT:1d:{DAY_END}",
    ]


@pytest.mark.parametrize(
    ("window", "from_t0", "to_t0", "expected_hours_before_end"),
    [
        ("1h", None, None, [3, 2, 1, 0]),
        ("4h", None, None, []),
        ("1h", DAY_END - 2 * HOUR, None, [2, 1, 0]),
        ("1h", None, DAY_END - 2 * HOUR, [3, 2]),
        ("1h", DAY_END - 2 * HOUR, DAY_END - HOUR, [2, 1]),  # both bounds inclusive
        ("1h", DAY_END - HOUR, DAY_END - HOUR, [1]),
        ("1h", DAY_END + 1, None, []),
        (None, DAY_END - HOUR, DAY_END - HOUR, [1]),
    ],
    ids=[
        "window",
        "no-such-window",
        "from-only",
        "to-only",
        "inclusive-range",
        "single-t0",
        "after-all",
        "any-window-in-range",
    ],
)
def test_query_filters_by_window_and_t0_range(
    store: Store,
    window: str | None,
    from_t0: int | None,
    to_t0: int | None,
    expected_hours_before_end: list[int],
) -> None:
    store.upsert_signals([signal(t0=DAY_END - k * HOUR) for k in range(4)])
    store.upsert_signals([signal(symbol="ETHUSDT", t0=DAY_END - k * HOUR) for k in range(4)])
    found = store.query_signals("BTCUSDT", window=window, from_t0=from_t0, to_t0=to_t0)
    assert ids_of(found) == [f"BTCUSDT:1h:{DAY_END - k * HOUR}" for k in expected_hours_before_end]


def test_query_of_an_unknown_symbol_is_empty(store: Store) -> None:
    store.upsert_signals([signal()])
    assert store.query_signals("SOLUSDT") == []


def test_empty_batches_are_fine(store: Store) -> None:
    store.upsert_signals([])
    store.upsert_strategy_events([])
    assert store.count_signals() == 0
    assert store.strategy_events() == []


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "minus-inf"])
def test_non_finite_feature_rejects_the_whole_batch(store: Store, bad: float) -> None:
    kept = signal(t0=DAY_END - 2 * HOUR)
    store.upsert_signals([kept])
    poisoned = signal(features={"atr_14": bad})
    batch = [signal(t0=DAY_END - HOUR, config_rev="rev-2"), poisoned, signal(window="4h")]
    with pytest.raises(StoreError, match=r"BTCUSDT:1h:1735689599999.*features\.atr_14") as info:
        store.upsert_signals(batch)
    assert not isinstance(info.value, StoreUnavailable)  # retrying cannot help
    # nothing of the batch was written, and what was there before is untouched
    assert store.query_signals("BTCUSDT") == [kept]


def test_non_finite_value_rejects_an_event_batch(store: Store) -> None:
    batch = [event("dqc_fail:a", 1), event("dqc_fail:b", 2, detail={"z": math.nan})]
    with pytest.raises(StoreError, match=r"dqc_fail:b.*detail\.z"):
        store.upsert_strategy_events(batch)
    assert store.strategy_events() == []


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        ({"t0": None}, "'t0' must be an integer"),
        ({"t0": True}, "'t0' must be an integer"),
        ({"window": "2h"}, "window must be one of"),
        ({"signal_id": "BTCUSDT:1h:1"}, "signal_id must be"),
        ({"signal_id": "BTC/USDT:1h:1"}, "not a valid document key"),
        ({"_key": "x"}, "reserved field"),
        ({"features": {"atr_14": object()}}, r"at \.features\.atr_14"),
    ],
    ids=[
        "no-t0",
        "bool-t0",
        "unknown-window",
        "id-not-matching",
        "id-not-a-key",
        "reserved-field",
        "not-json",
    ],
)
def test_malformed_signal_is_rejected_before_writing(
    store: Store, broken: dict[str, Any], reason: str
) -> None:
    with pytest.raises(StoreError, match=reason):
        store.upsert_signals([signal(t0=DAY_END - HOUR), {**signal(), **broken}])
    assert store.count_signals() == 0


def test_two_thousand_documents_in_one_batch(store: Store) -> None:
    minute = 60_000
    batch = [signal(window="1m", t0=DAY_END - k * minute) for k in range(2_000)]
    store.upsert_signals(batch)
    assert store.count_signals() == 2_000
    found = store.query_signals("BTCUSDT", window="1m")
    assert [doc["t0"] for doc in found] == sorted(doc["t0"] for doc in batch)
    assert found[0] == batch[-1]
    assert found[-1] == batch[0]


def test_stored_signals_survive_reopening(open_backend: OpenStore) -> None:
    first = open_backend()
    first.upsert_signals([signal()])
    first.close()
    assert open_backend().get_signal(signal()["signal_id"]) == signal()


def test_reads_and_writes_from_two_threads(store: Store) -> None:
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for k in range(20):
                store.upsert_signals([signal(t0=DAY_END - k * HOUR)])
        except BaseException as e:  # reported to the main thread below
            errors.append(e)

    writer = threading.Thread(target=write)
    writer.start()
    while writer.is_alive():
        assert len(store.query_signals("BTCUSDT")) <= 20
    writer.join()
    assert errors == []
    assert store.count_signals() == 20


# --------------------------------------------------------------------------- strategy events


def test_a_service_batch_writes_signals_and_events_together(store: Store) -> None:
    signals = [signal(t0=DAY_END - HOUR), prepare_signal(signal(window="4h"))]
    events = [event("dqc_fail:a", 1), event("dqc_fail:b", 2)]
    store.write_batch(signals, events)
    store.write_batch(signals, events)  # a retried batch changes nothing
    assert store.query_signals("BTCUSDT") == [signal(t0=DAY_END - HOUR), signal(window="4h")]
    assert store.strategy_events() == events
    store.write_batch([], [])
    assert store.count_signals() == 2


def test_a_bad_event_rejects_the_whole_service_batch(store: Store) -> None:
    events = [event("dqc_fail:a", 1), event("dqc_fail:b", 2, detail={"z": math.nan})]
    with pytest.raises(StoreError, match=r"dqc_fail:b.*detail\.z"):
        store.write_batch([signal()], events)
    assert store.count_signals() == 0  # checked before anything was written
    assert store.strategy_events() == []


def test_strategy_events_dedupe_by_id(store: Store) -> None:
    failed = event(dqc_fail_event_id("BTCUSDT:1h:1735689599999"), DAY_END, reasons=["missing"])
    recompute = event(
        recompute_event_id("task/42"),
        DAY_END + 5,
        kind="FEATURE_RECOMPUTE",
        symbol=None,
        scope={"symbols": ["BTCUSDT", "ETHUSDT"], "windows": ["1h"]},
    )
    store.upsert_strategy_events([failed, recompute])
    store.upsert_strategy_events([failed, recompute])  # a replay
    assert store.strategy_events() == [failed, recompute]


def test_strategy_events_order_by_ts_then_event_id_code_points(store: Store) -> None:
    # same ts: "B" (U+0042) sorts before "a" (U+0061) by code point, whatever the collation
    events = [event("dqc_fail:a", 10), event("dqc_fail:B", 10), event("dqc_fail:c", 5)]
    store.upsert_strategy_events(events)
    assert [e["event_id"] for e in store.strategy_events()] == [
        "dqc_fail:c",
        "dqc_fail:B",
        "dqc_fail:a",
    ]


@pytest.mark.parametrize(
    ("kind", "symbol", "expected"),
    [
        (None, None, ["e1", "e2", "e3"]),
        ("FEATURE_DQC_FAIL", None, ["e1", "e3"]),
        (None, "ETHUSDT", ["e3"]),
        ("FEATURE_RECOMPUTE", "BTCUSDT", []),
        ("FEATURE_DQC_FAIL", "BTCUSDT", ["e1"]),
    ],
    ids=["all", "by-kind", "by-symbol", "recompute-has-no-symbol", "kind-and-symbol"],
)
def test_strategy_events_filter_by_kind_and_symbol(
    store: Store, kind: str | None, symbol: str | None, expected: list[str]
) -> None:
    store.upsert_strategy_events(
        [
            event("e1", 1),
            event("e2", 2, kind="FEATURE_RECOMPUTE", symbol=None),
            event("e3", 3, symbol="ETHUSDT"),
        ]
    )
    found = store.strategy_events(kind=kind, symbol=symbol)
    assert [e["event_id"] for e in found] == expected


def test_strategy_event_with_unknown_kind_is_rejected(store: Store) -> None:
    with pytest.raises(StoreError, match="kind"):
        store.upsert_strategy_events([event("e1", 1, kind="SOMETHING_ELSE")])


def test_replacing_an_event_keeps_one_copy_with_the_new_content(store: Store) -> None:
    store.upsert_strategy_events([event("e1", 1, reasons=["jump"])])
    store.upsert_strategy_events([event("e1", 1, reasons=["jump", "bounds"])])
    assert store.strategy_events() == [event("e1", 1, reasons=["jump", "bounds"])]


# --------------------------------------------------------------------------- lifecycle


def test_ping_answers_and_close_is_final(store: Store) -> None:
    store.ping()
    store.close()
    store.close()  # closing twice is harmless
    with pytest.raises(StoreError) as info:
        store.ping()
    # a closed store is a programming error: a retry loop must not spin on it
    assert not isinstance(info.value, StoreUnavailable)
    with pytest.raises(StoreError):
        store.upsert_signals([signal()])


# --------------------------------------------------------------------------- choosing the backend


def _closed_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_factory_defaults_to_sqlite_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(StoreSettings())
    try:
        assert isinstance(store, SqliteStore)
        store.upsert_signals([signal()])
    finally:
        store.close()
    assert (tmp_path / "data" / "s2.db").is_file()


def test_factory_uses_the_configured_sqlite_path(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "signals.db"
    store = open_store(StoreSettings(sqlite_path=path))
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == path
    finally:
        store.close()
    assert path.is_file()


@pytest.mark.timeout(30)
def test_factory_opens_arangodb_when_chosen() -> None:
    # nothing listens there: the ArangoDB backend was chosen and reports itself unavailable
    with pytest.raises(StoreUnavailable, match="arangodb"):
        open_store(
            StoreSettings(backend="arango", arango_uri=f"http://127.0.0.1:{_closed_local_port()}")
        )


# --------------------------------------------------------------------------- recompute tasks


def task(task_id: str = "recomp-20250105-0001", **overrides: Any) -> dict[str, Any]:
    """A task document shaped like the task registry's."""
    doc: dict[str, Any] = {
        "task_id": task_id,
        "owner": "s2-a",
        "origin": "api",
        "state": "running",
        "request": {
            "symbols": ["BTCUSDT"],
            "windows": ["1m", "1h"],
            "from_ts": DAY_END - 2 * 86_400_000 + 1,
            "to_ts": DAY_END,
            "force": False,
        },
        "config_rev": "rev-1",
        "batches_done": 1,
        "batches_total": 2,
        "signals_written": 1464,
        "signals_skipped": 0,
        "errors": [],
        "submitted_at": 1_736_035_200_000,
        "started_at": 1_736_035_200_100,
        "finished_at": None,
        "run_s": 0.25,
    }
    return doc | overrides


def test_a_task_id_is_inserted_once(store: Store) -> None:
    assert store.insert_task(task()) is True
    assert store.insert_task(task(owner="s2-b", state="queued")) is False  # taken: unchanged
    assert store.get_task("recomp-20250105-0001") == task()


def test_save_task_replaces_the_document_and_get_of_an_unknown_task_is_none(
    store: Store,
) -> None:
    store.insert_task(task())
    done = task(state="done", batches_done=2, signals_written=2928, finished_at=1_736_035_201_000)
    store.save_task(done)
    assert store.get_task("recomp-20250105-0001") == done
    assert store.get_task("recomp-20250105-0999") is None
    assert store.get_task("not a key/") is None


def test_tasks_query_by_owner_state_and_id_prefix_in_id_order(store: Store) -> None:
    for task_id, owner, state in [
        ("recomp-20250106-0001", "s2-a", "queued"),
        ("recomp-20250105-0002", "s2-a", "done"),
        ("recomp-20250105-0010", "s2-b", "running"),
        ("recomp-20250105-0001", "s2-a", "running"),
    ]:
        store.save_task(task(task_id, owner=owner, state=state))

    def ids(**query: Any) -> list[str]:
        return [t["task_id"] for t in store.query_tasks(**query)]

    assert ids() == [
        "recomp-20250105-0001",
        "recomp-20250105-0002",
        "recomp-20250105-0010",
        "recomp-20250106-0001",
    ]
    assert ids(owner="s2-a", states=["queued", "running"]) == [
        "recomp-20250105-0001",
        "recomp-20250106-0001",
    ]
    assert ids(id_prefix="recomp-20250105-") == [
        "recomp-20250105-0001",
        "recomp-20250105-0002",
        "recomp-20250105-0010",
    ]
    assert ids(states=[]) == []
    assert ids(id_prefix="recomp-2025010_") == []  # no wildcards in a prefix


def test_delete_tasks_removes_only_finished_tasks_that_ended_before_the_cutoff(
    store: Store,
) -> None:
    cutoff = 1_736_035_300_000
    for task_id, state, finished_at in [
        ("recomp-20250105-0001", "done", cutoff - 1),  # goes
        ("recomp-20250105-0002", "failed", cutoff - 86_400_000),  # goes
        ("recomp-20250105-0003", "done", cutoff),  # not before the cutoff: kept
        ("recomp-20250105-0004", "interrupted", cutoff - 1),  # a state not asked for: kept
        ("recomp-20250105-0005", "running", None),  # unfinished: kept
        ("recomp-20250105-0006", "done", None),  # no end time recorded: kept
    ]:
        store.save_task(task(task_id, state=state, finished_at=finished_at))

    assert store.delete_tasks(cutoff, ["done", "failed"]) == 2
    assert [t["task_id"] for t in store.query_tasks()] == [
        "recomp-20250105-0003",
        "recomp-20250105-0004",
        "recomp-20250105-0005",
        "recomp-20250105-0006",
    ]
    assert store.delete_tasks(cutoff, ["done", "failed"]) == 0  # idempotent
    assert store.delete_tasks(cutoff + 1, []) == 0
    assert len(store.query_tasks()) == 4


def test_stored_tasks_survive_reopening(open_backend: OpenStore) -> None:
    open_backend().insert_task(task())
    reopened = open_backend()
    assert reopened.query_tasks(owner="s2-a", states=["running"]) == [task()]
    assert reopened.insert_task(task()) is False


@pytest.mark.parametrize(
    "bad",
    [{"owner": None}, {"state": ""}, {"task_id": "bad key/"}, {"run_s": math.nan}],
    ids=["no-owner", "no-state", "bad-key", "nan"],
)
def test_a_malformed_task_is_refused(store: Store, bad: dict[str, Any]) -> None:
    with pytest.raises(StoreError):
        store.save_task(task(**bad))
    with pytest.raises(StoreError):
        store.insert_task(task(**bad))
    assert store.query_tasks() == []
