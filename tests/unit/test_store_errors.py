"""Store errors and keys: what is fatal, what is retryable, and how documents reach the backends.

The ArangoDB backend is exercised here without a server: through a closed local port, and
through the driver itself fed with canned ArangoDB responses (`CannedArango`), so that request
building, response parsing and error translation all run the real driver code.
"""

from __future__ import annotations

import enum
import json
import multiprocessing
import socket
import sqlite3
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from arango.exceptions import (
    ArangoClientError,
    ArangoServerError,
    DocumentInsertError,
    ServerConnectionError,
)
from arango.http import HTTPClient
from arango.request import Request
from arango.response import Response
from hypothesis import given
from hypothesis import strategies as st

from s2feature.store import (
    SqliteStore,
    StoreError,
    StoreUnavailable,
    dqc_fail_event_id,
    is_valid_key,
    recompute_event_id,
    sanitize_key,
)
from s2feature.store.arango import (
    ArangoStore,
    check_bulk_results,
    from_arango_document,
    is_retryable,
    to_arango_document,
    translate_arango_errors,
)
from s2feature.store.base import prepare_signal
from s2feature.store.sqlite import translate_sqlite_errors

T0 = 1_735_689_599_999
SIGNAL_ID = f"BTCUSDT:1h:{T0}"


def signal_doc() -> dict[str, Any]:
    return {
        "signal_id": SIGNAL_ID,
        "t0": T0,
        "symbol": "BTCUSDT",
        "window": "1h",
        "features": {"atr_14": 812.5, "rv_30d": None},
    }


# --------------------------------------------------------------------------- the error tree


def test_unavailable_is_a_store_error_so_one_except_catches_both() -> None:
    assert issubclass(StoreUnavailable, StoreError)
    assert not issubclass(StoreError, StoreUnavailable)


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("BTCUSDT:1h:1735689599999", True),
        ("dqc_fail:a-b.c@(d)+e,f=g;h$i!j*k'l%m", True),
        ("x" * 254, True),
        ("x" * 255, False),
        ("", False),
        ("a/b", False),
        ("a b", False),
        ("BTC€", False),
    ],
    ids=[
        "signal-id",
        "every-punctuation",
        "254-bytes",
        "255-bytes",
        "empty",
        "slash",
        "space",
        "euro",
    ],
)
def test_key_validity_follows_arangodb_rules(key: str, valid: bool) -> None:
    assert is_valid_key(key) is valid


@pytest.mark.parametrize(
    ("make_id", "argument", "expected"),
    [
        (dqc_fail_event_id, "BTCUSDT:1h:1735689599999", "dqc_fail:BTCUSDT:1h:1735689599999"),
        (recompute_event_id, "3f2a-77", "recompute:3f2a-77"),
        # '/' is replaced by '_'; the suffix is sha256("dqc_fail:mkt:events:b:fut:X/1-0")[:16]
        (
            dqc_fail_event_id,
            "mkt:events:b:fut:X/1-0",
            "dqc_fail:mkt:events:b:fut:X_1-0@196e7f820d42f4f4",
        ),
        # two characters replaced; suffix is sha256("recompute:a b/c")[:16]
        (recompute_event_id, "a b/c", "recompute:a_b_c@7841ab2c8c42d2ba"),
    ],
    ids=["signal-id-kept", "task-id-kept", "entry-with-slash", "space-and-slash"],
)
def test_event_ids_keep_valid_text_and_hash_what_they_replace(
    make_id: Callable[[str], str], argument: str, expected: str
) -> None:
    assert make_id(argument) == expected
    assert is_valid_key(expected)


def test_replaced_characters_do_not_make_different_ids_collide() -> None:
    # both clean to "a_b": only the hash of the original text tells them apart
    assert recompute_event_id("a/b") != recompute_event_id("a b")


def test_too_long_text_is_cut_to_the_key_limit_with_its_hash() -> None:
    key = recompute_event_id("t" * 300)
    assert len(key) == 254
    assert key.startswith("recompute:ttt")
    assert key != recompute_event_id("t" * 301)


@given(st.text(max_size=300))
def test_sanitized_keys_are_valid_and_deterministic(text: str) -> None:
    key = sanitize_key(text)
    assert is_valid_key(key)
    assert sanitize_key(text) == key
    if is_valid_key(text):
        assert key == text


# --------------------------------------------------------------------------- documents in and out


def test_arango_document_carries_the_key_and_comes_back_without_system_fields() -> None:
    doc = signal_doc()
    sent = to_arango_document(doc, SIGNAL_ID)
    assert sent == {**doc, "_key": SIGNAL_ID}
    assert "_key" not in doc  # the caller's payload is not modified
    stored = {**sent, "_id": f"signals/{SIGNAL_ID}", "_rev": "_hV2oH9y---"}
    assert from_arango_document(stored) == doc


class Minute(enum.IntEnum):
    END = 60_000 - 1


def test_a_valid_signal_of_unusual_types_is_prepared_like_the_plain_one() -> None:
    # An int subclass for t0 misses the fast check of a service payload but obeys every rule.
    plain = {**signal_doc(), "t0": 59_999, "window": "1m", "signal_id": "BTCUSDT:1m:59999"}
    unusual = {**plain, "t0": Minute.END}
    assert prepare_signal(unusual) == prepare_signal(plain)


# --------------------------------------------------------------------------- ArangoDB error mapping


def server_error(
    http_code: int, errno: int | None, error_type: type[ArangoServerError] = DocumentInsertError
) -> ArangoServerError:
    body = {} if errno is None else {"error": True, "errorNum": errno, "errorMessage": "boom"}
    response = Response("post", "http://db/_api/document/signals", {}, http_code, "", "")
    response.body = body
    response.error_code = errno
    response.error_message = "boom" if errno else None
    return error_type(response, Request("post", "/_api/document/signals"))


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (server_error(503, 503), True),
        (server_error(503, None), True),
        (server_error(504, None), True),
        (server_error(500, 1478), True),  # cluster backend unavailable
        (server_error(409, 1200), True),  # write-write conflict
        (server_error(408, 18), True),  # lock timeout
        (server_error(503, 1004), True),  # read-only mode
        (server_error(400, 1221), False),  # illegal document key
        (server_error(404, 1203), False),  # collection not found
        (server_error(401, 11), False),
        (server_error(403, 11), False),
        (server_error(500, 4), False),  # internal error
        (server_error(500, None, ServerConnectionError), True),
        (server_error(401, None, ServerConnectionError), False),  # bad password
        (ConnectionAbortedError("Can't connect to host(s) within limit (3)"), True),
        (requests.ConnectionError("reset"), True),
        (requests.ReadTimeout("read timed out"), True),
        (requests.exceptions.ChunkedEncodingError("cut"), True),
        (requests.exceptions.InvalidSchema("no adapter for 'localhost'"), False),
        (ArangoClientError("bad collection name in document ID"), False),
    ],
    ids=[
        "503",
        "503-no-errno",
        "504",
        "cluster-backend-unavailable",
        "write-conflict",
        "lock-timeout",
        "read-only-mode",
        "illegal-key",
        "collection-not-found",
        "401",
        "403",
        "internal-error",
        "server-connection-error",
        "server-connection-error-401",
        "driver-gave-up-connecting",
        "connection-reset",
        "read-timeout",
        "truncated-response",
        "bad-uri",
        "client-error",
    ],
)
def test_arango_errors_are_split_into_retryable_and_fatal(
    error: Exception, retryable: bool
) -> None:
    assert is_retryable(error) is retryable
    with pytest.raises(StoreError) as info, translate_arango_errors("upsert signals"):
        raise error
    assert isinstance(info.value, StoreUnavailable) is retryable
    assert info.value.__cause__ is error
    assert str(info.value).startswith("arangodb upsert signals: ")


def test_bulk_result_with_a_fatal_document_error_fails_the_batch_naming_the_key() -> None:
    results = [{"_id": "signals/a", "_key": "a", "_rev": "1"}, server_error(400, 1221)]
    with pytest.raises(StoreError, match=r"1 of 2 documents failed: b \(") as info:
        check_bulk_results("upsert signals", ["a", "b"], results)
    assert not isinstance(info.value, StoreUnavailable)


def test_bulk_result_with_only_transient_errors_is_retryable() -> None:
    results = [server_error(409, 1200), server_error(503, 1478)]
    with pytest.raises(StoreUnavailable, match=r"2 of 2 documents failed: a .*, b "):
        check_bulk_results("upsert signals", ["a", "b"], results)


def test_bulk_result_with_mixed_errors_is_fatal() -> None:
    results = [server_error(409, 1200), server_error(400, 1221)]
    with pytest.raises(StoreError) as info:
        check_bulk_results("upsert signals", ["a", "b"], results)
    assert not isinstance(info.value, StoreUnavailable)


def test_bulk_result_of_the_wrong_length_is_an_error() -> None:
    with pytest.raises(StoreError, match="unexpected bulk response"):
        check_bulk_results("upsert signals", ["a", "b"], [{"_key": "a"}])


def _closed_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.timeout(30)
def test_connecting_to_a_closed_port_is_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="arangodb") as info:
        ArangoStore(f"http://127.0.0.1:{_closed_local_port()}", request_timeout_s=1.0)
    assert isinstance(info.value.__cause__, ConnectionError)


def test_uri_without_scheme_is_fatal() -> None:
    with pytest.raises(StoreError) as info:
        ArangoStore("localhost:8529")
    assert not isinstance(info.value, StoreUnavailable)


# ----------------------------------------------------------------- ArangoDB, canned server

Route = tuple[int, Any] | Callable[[Any], tuple[int, Any]]


class CannedArango(HTTPClient):
    """The driver's HTTP transport, answering from a table of canned ArangoDB responses.

    Routes are keyed by (method, path); unknown routes answer 404. Every request is recorded
    with its decoded JSON body, so tests can check what the store sent.
    """

    def __init__(self, routes: dict[tuple[str, str], Route]) -> None:
        self.routes = routes
        self.sent: list[tuple[str, str, Any]] = []

    def create_session(self, host: str) -> requests.Session:
        return requests.Session()

    def send_request(
        self,
        session: requests.Session,
        method: str,
        url: str,
        headers: MutableMapping[str, str] | None = None,
        params: MutableMapping[str, str] | None = None,
        data: Any = None,
        auth: tuple[str, str] | None = None,
    ) -> Response:
        path = urlsplit(url).path
        body = json.loads(data) if isinstance(data, str) else data
        self.sent.append((method, path, body))
        route = self.routes.get((method, path))
        if route is None:
            status, payload = 404, {"error": True, "errorNum": 404, "errorMessage": "no route"}
        elif callable(route):
            status, payload = route(body)
        else:
            status, payload = route
        return Response(method, url, {}, status, "", json.dumps(payload))

    def paths(self, method: str) -> list[str]:
        return [path for m, path, _ in self.sent if m == method]


def ready_server(**overrides: Route) -> dict[tuple[str, str], Route]:
    """Routes of a server where database `s2` and its three collections exist."""
    index = {"id": "signals/1", "code": 200, "error": False, "isNewlyCreated": False}
    routes: dict[tuple[str, str], Route] = {
        ("get", "/_db/_system/_api/database"): (200, {"result": ["_system", "s2"]}),
        ("get", "/_db/s2/_api/collection"): (
            200,
            {
                "result": [
                    {"name": "signals"},
                    {"name": "strategy_events"},
                    {"name": "recompute_tasks"},
                ]
            },
        ),
        ("post", "/_db/s2/_api/index"): (200, index),
        ("get", "/_db/s2/_api/version"): (200, {"server": "arango", "version": "3.12.4"}),
    }
    for name, route in overrides.items():
        method, _, path = name.partition(" ")
        routes[(method, path)] = route
    return routes


@pytest.fixture
def open_canned() -> Iterator[Callable[[dict[tuple[str, str], Route]], ArangoStore]]:
    opened: list[ArangoStore] = []

    def open_with(routes: dict[tuple[str, str], Route]) -> ArangoStore:
        opened.append(ArangoStore("http://arango.test:8529", http_client=CannedArango(routes)))
        return opened[-1]

    yield open_with
    for store in opened:
        store.close()


def transport(store: ArangoStore) -> CannedArango:
    canned = store._client._http  # the one test-only peek: which requests were sent
    assert isinstance(canned, CannedArango)
    return canned


def test_opening_creates_missing_database_collections_and_indexes(
    open_canned: Callable[[dict[tuple[str, str], Route]], ArangoStore],
) -> None:
    routes = ready_server(
        **{
            "get /_db/_system/_api/database": (200, {"result": ["_system"]}),
            "post /_db/_system/_api/database": (201, {"result": True}),
            "get /_db/s2/_api/collection": (200, {"result": []}),
            "post /_db/s2/_api/collection": (200, {"name": "created"}),
        }
    )
    canned = transport(open_canned(routes))
    posted = [(path, body) for method, path, body in canned.sent if method == "post"]
    assert posted == [
        ("/_db/_system/_api/database", {"name": "s2"}),
        ("/_db/s2/_api/collection", _collection_body("signals")),
        (
            "/_db/s2/_api/index",
            {
                "type": "persistent",
                "fields": ["symbol", "window", "t0"],
                "name": "signals_by_series",
            },
        ),
        ("/_db/s2/_api/collection", _collection_body("strategy_events")),
        (
            "/_db/s2/_api/index",
            {
                "type": "persistent",
                "fields": ["kind", "symbol", "ts"],
                "name": "strategy_events_by_kind",
            },
        ),
        ("/_db/s2/_api/collection", _collection_body("recompute_tasks")),
        (
            "/_db/s2/_api/index",
            {
                "type": "persistent",
                "fields": ["owner", "state"],
                "name": "recompute_tasks_by_owner",
            },
        ),
    ]


def _collection_body(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "waitForSync": False,
        "isSystem": False,
        "keyOptions": {"type": "traditional", "allowUserKeys": True},
        "type": 2,
    }


def test_user_without_admin_rights_works_in_the_existing_schema(
    open_canned: Callable[[dict[tuple[str, str], Route]], ArangoStore],
) -> None:
    forbidden = (403, {"error": True, "errorNum": 11, "errorMessage": "forbidden"})
    routes = ready_server(
        **{"get /_db/_system/_api/database": forbidden, "post /_db/s2/_api/index": forbidden}
    )
    open_canned(routes).ping()


def test_bad_credentials_fail_opening_as_fatal(
    open_canned: Callable[[dict[tuple[str, str], Route]], ArangoStore],
) -> None:
    unauthorized = (401, {"error": True, "errorNum": 11, "errorMessage": "not authorized"})
    with pytest.raises(StoreError) as info:
        open_canned(ready_server(**{"get /_db/s2/_api/version": unauthorized}))
    assert not isinstance(info.value, StoreUnavailable)


def test_upsert_sends_payloads_with_their_key_in_one_replace_request(
    open_canned: Callable[[dict[tuple[str, str], Route]], ArangoStore],
) -> None:
    stored = {"_id": f"signals/{SIGNAL_ID}", "_key": SIGNAL_ID, "_rev": "1"}
    store = open_canned(ready_server(**{"post /_db/s2/_api/document/signals": (202, [stored])}))
    store.upsert_signals([signal_doc()])
    method, path, body = transport(store).sent[-1]
    assert (method, path) == ("post", "/_db/s2/_api/document/signals")
    assert body == [{**signal_doc(), "_key": SIGNAL_ID}]


def test_a_service_batch_sends_signals_then_events_after_checking_both(
    open_canned: Callable[[dict[tuple[str, str], Route]], ArangoStore],
) -> None:
    stored = {"_id": f"signals/{SIGNAL_ID}", "_key": SIGNAL_ID, "_rev": "1"}
    event = {"event_id": "dqc_fail:a", "kind": "FEATURE_DQC_FAIL", "symbol": "BTCUSDT", "ts": 1}
    kept = {"_id": "strategy_events/dqc_fail:a", "_key": "dqc_fail:a", "_rev": "1"}
    routes = ready_server(
        **{
            "post /_db/s2/_api/document/signals": (202, [stored]),
            "post /_db/s2/_api/document/strategy_events": (202, [kept]),
        }
    )
    store = open_canned(routes)
    sent_before = len(transport(store).sent)
    with pytest.raises(StoreError, match="kind"):
        store.write_batch([signal_doc()], [{**event, "kind": "NOT_A_KIND"}])
    assert len(transport(store).sent) == sent_before  # nothing sent for a bad batch
    store.write_batch([signal_doc()], [event])
    posted = [(path, body) for method, path, body in transport(store).sent[sent_before:]]
    assert posted == [
        ("/_db/s2/_api/document/signals", [{**signal_doc(), "_key": SIGNAL_ID}]),
        ("/_db/s2/_api/document/strategy_events", [{**event, "_key": "dqc_fail:a"}]),
    ]


def test_per_document_error_in_a_bulk_response_fails_the_upsert(
    open_canned: Callable[[dict[tuple[str, str], Route]], ArangoStore],
) -> None:
    illegal = {"error": True, "errorNum": 1221, "errorMessage": "illegal document key"}
    store = open_canned(ready_server(**{"post /_db/s2/_api/document/signals": (202, [illegal])}))
    with pytest.raises(StoreError, match=f"{SIGNAL_ID} .*illegal document key") as info:
        store.upsert_signals([signal_doc()])
    assert not isinstance(info.value, StoreUnavailable)


@pytest.mark.parametrize(
    ("status", "errno", "retryable"),
    [(503, 503, True), (503, 1478, True), (403, 11, False), (404, 1203, False)],
    ids=["service-unavailable", "cluster-unavailable", "forbidden", "no-collection"],
)
def test_failed_bulk_request_is_translated(
    open_canned: Callable[[dict[tuple[str, str], Route]], ArangoStore],
    status: int,
    errno: int,
    retryable: bool,
) -> None:
    failure = (status, {"error": True, "errorNum": errno, "errorMessage": "no", "code": status})
    store = open_canned(ready_server(**{"post /_db/s2/_api/document/signals": failure}))
    with pytest.raises(StoreError) as info:
        store.upsert_signals([signal_doc()])
    assert isinstance(info.value, StoreUnavailable) is retryable


def test_queries_bind_their_filters_and_strip_system_fields(
    open_canned: Callable[[dict[tuple[str, str], Route]], ArangoStore],
) -> None:
    row = {**signal_doc(), "_key": SIGNAL_ID, "_id": f"signals/{SIGNAL_ID}", "_rev": "1"}
    cursor = (201, {"result": [row], "hasMore": False, "cached": False, "error": False})
    store = open_canned(ready_server(**{"post /_db/s2/_api/cursor": cursor}))
    assert store.query_signals("BTCUSDT", window="1h", from_t0=T0, to_t0=T0) == [signal_doc()]
    query = transport(store).sent[-1][2]
    assert query["bindVars"] == {
        "symbol": "BTCUSDT",
        "window": "1h",
        "from_t0": T0,
        "to_t0": T0,
        "windows": ["1m", "5m", "1h", "4h", "1d"],
    }
    assert store.get_signal(SIGNAL_ID) == signal_doc()
    assert transport(store).sent[-1][2]["bindVars"] == {"key": SIGNAL_ID}


def test_strategy_events_are_sorted_by_code_point_whatever_the_server_order(
    open_canned: Callable[[dict[tuple[str, str], Route]], ArangoStore],
) -> None:
    # a server collation may put "a" before "B"; the store's order is (ts, code points)
    rows = [
        {"event_id": "dqc_fail:a", "kind": "FEATURE_DQC_FAIL", "ts": 1, "_key": "dqc_fail:a"},
        {"event_id": "dqc_fail:B", "kind": "FEATURE_DQC_FAIL", "ts": 1, "_key": "dqc_fail:B"},
    ]
    cursor = (201, {"result": rows, "hasMore": False, "cached": False, "error": False})
    store = open_canned(ready_server(**{"post /_db/s2/_api/cursor": cursor}))
    found = store.strategy_events(kind="FEATURE_DQC_FAIL")
    assert [e["event_id"] for e in found] == ["dqc_fail:B", "dqc_fail:a"]
    assert transport(store).sent[-1][2]["bindVars"] == {"kind": "FEATURE_DQC_FAIL"}


# --------------------------------------------------------------------------- SQLite error mapping


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("database table is locked: signals"), True),
        (sqlite3.OperationalError("database is busy"), True),
        (sqlite3.OperationalError("disk I/O error"), False),
        (sqlite3.OperationalError("unable to open database file"), False),
        (sqlite3.IntegrityError("NOT NULL constraint failed: signals.t0"), False),
        (sqlite3.DatabaseError("file is not a database"), False),
        (PermissionError("read-only directory"), False),
    ],
    ids=["locked", "table-locked", "busy", "io", "cannot-open", "integrity", "corrupt", "perm"],
)
def test_sqlite_errors_are_split_into_retryable_and_fatal(
    error: Exception, retryable: bool
) -> None:
    with pytest.raises(StoreError) as info, translate_sqlite_errors("upsert signals"):
        raise error
    assert isinstance(info.value, StoreUnavailable) is retryable
    assert info.value.__cause__ is error


def test_write_while_another_process_holds_the_lock_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "s2.db"
    store = SqliteStore(path, busy_timeout_s=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
        with pytest.raises(StoreUnavailable, match="locked"):
            store.upsert_signals([signal_doc()])
        store.ping()  # in WAL mode readers are not blocked by the writer
        other.execute("ROLLBACK")
        store.upsert_signals([signal_doc()])  # and the retry succeeds
        assert store.count_signals() == 1
    finally:
        other.close()
        store.close()


def _open_and_close(path: str, barrier: Any, errors: Any) -> None:
    barrier.wait()
    try:
        SqliteStore(path).close()
    except StoreError as e:
        errors.put(repr(e))


def test_processes_opening_one_fresh_file_at_once_all_succeed(tmp_path: Path) -> None:
    # Two service instances on one host share the default file. Switching a fresh file to WAL
    # races between them; before the open retried, about one start in five failed "locked".
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    for trial in range(15):
        path = str(tmp_path / f"s2-{trial}.db")
        barrier = context.Barrier(6)
        processes = [
            context.Process(target=_open_and_close, args=(path, barrier, errors)) for _ in range(6)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=30)
            assert process.exitcode == 0
    assert errors.empty(), errors.get()
    errors.close()
    errors.join_thread()


def test_open_while_another_connection_holds_an_exclusive_lock_waits_then_is_unavailable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s2.db"
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("CREATE TABLE t (x)")
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable, match="locked"):
            SqliteStore(path, busy_timeout_s=0.1)
        other.execute("ROLLBACK")
        store = SqliteStore(path, busy_timeout_s=0.1)
        store.upsert_signals([signal_doc()])
        assert store.count_signals() == 1
        store.close()
    finally:
        other.close()


def test_sqlite_path_that_is_a_directory_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        SqliteStore(tmp_path)
    assert not isinstance(info.value, StoreUnavailable)


TASK = {"task_id": "recomp-20250105-0001", "owner": "s2-a", "state": "queued", "batches_done": 0}


def test_inserting_a_task_whose_id_is_taken_is_false_not_an_error(
    open_canned: Callable[[dict[tuple[str, str], Route]], ArangoStore],
) -> None:
    taken = (
        409,
        {"error": True, "code": 409, "errorNum": 1210, "errorMessage": "unique constraint"},
    )
    stored = {"_id": "recompute_tasks/recomp-20250105-0001", "_key": TASK["task_id"], "_rev": "1"}
    path = "/_db/s2/_api/document/recompute_tasks"
    answers = iter([(201, stored), taken])
    store = open_canned(ready_server(**{f"post {path}": lambda _body: next(answers)}))
    assert store.insert_task(TASK) is True
    assert store.insert_task(TASK) is False
    posted = [body for method, p, body in transport(store).sent if (method, p) == ("post", path)]
    assert posted == [{**TASK, "_key": TASK["task_id"]}] * 2


def test_a_task_insert_refused_for_another_reason_is_an_error(
    open_canned: Callable[[dict[tuple[str, str], Route]], ArangoStore],
) -> None:
    busy = (503, {"error": True, "code": 503, "errorNum": 503, "errorMessage": "unavailable"})
    store = open_canned(ready_server(**{"post /_db/s2/_api/document/recompute_tasks": busy}))
    with pytest.raises(StoreUnavailable):
        store.insert_task(TASK)


def test_saving_a_task_replaces_it_by_key(
    open_canned: Callable[[dict[tuple[str, str], Route]], ArangoStore],
) -> None:
    stored = {"_id": "recompute_tasks/recomp-20250105-0001", "_key": TASK["task_id"], "_rev": "2"}
    path = "/_db/s2/_api/document/recompute_tasks"
    store = open_canned(ready_server(**{f"post {path}": (202, stored)}))
    store.save_task({**TASK, "state": "done"})
    method, sent_path, body = transport(store).sent[-1]
    assert (method, sent_path) == ("post", path)
    assert body == {**TASK, "state": "done", "_key": TASK["task_id"]}
