"""ArangoDB store: the production backend, through the official `python-arango` driver.

The driver reports failures three ways, all translated here into StoreError / StoreUnavailable:
raised `ArangoServerError`s (with HTTP and ArangoDB error codes), per-document errors *returned*
inside a successful bulk response, and transport errors (`requests` exceptions, or the builtin
`ConnectionAbortedError` the driver raises once it has tried every host).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final, cast

import requests
from arango.client import ArangoClient
from arango.cursor import Cursor
from arango.database import StandardDatabase
from arango.errno import (
    CLUSTER_BACKEND_UNAVAILABLE,
    CLUSTER_CONNECTION_LOST,
    CLUSTER_LEADERSHIP_CHALLENGE_ONGOING,
    CLUSTER_NOT_LEADER,
    CLUSTER_TIMEOUT,
    CONFLICT,
    DUPLICATE_NAME,
    LOCK_TIMEOUT,
    QUEUE_FULL,
    QUEUE_TIME_REQUIREMENT_VIOLATED,
    READ_ONLY,
    SHUTTING_DOWN,
    UNIQUE_CONSTRAINT_VIOLATED,
)
from arango.exceptions import ArangoError, ArangoServerError, ServerConnectionError
from arango.http import DefaultHTTPClient, HTTPClient

from s2feature.domain import WINDOWS
from s2feature.redact import redact_urls
from s2feature.store.base import (
    RECOMPUTE_TASKS,
    SIGNALS,
    STRATEGY_EVENTS,
    EventRow,
    SignalDoc,
    SignalRow,
    StoreError,
    StoreUnavailable,
    is_valid_key,
    prepare_events,
    prepare_signals,
    prepare_task,
)

DEFAULT_REQUEST_TIMEOUT_S: Final = 10.0
# The driver's own retries (urllib3) are kept short: the pipeline retries whole batches with
# capped backoff, and a store that is down must be reported promptly.
_HTTP_RETRY_ATTEMPTS: Final = 1
_HTTP_BACKOFF_FACTOR: Final = 0.1
_CURSOR_BATCH_SIZE: Final = 1000
_MAX_KEYS_IN_MESSAGE: Final = 10

SYSTEM_FIELDS: Final[frozenset[str]] = frozenset({"_key", "_id", "_rev"})
INDEXES: Final[Mapping[str, tuple[str, tuple[str, ...]]]] = {
    SIGNALS: ("signals_by_series", ("symbol", "window", "t0")),
    STRATEGY_EVENTS: ("strategy_events_by_kind", ("kind", "symbol", "ts")),
    RECOMPUTE_TASKS: ("recompute_tasks_by_owner", ("owner", "state")),
}

_PERMISSION_HTTP: Final = frozenset({401, 403})
_RETRYABLE_HTTP: Final = frozenset({408, 429, 502, 503, 504})
_RETRYABLE_ERRNO: Final = frozenset(
    {
        LOCK_TIMEOUT,
        SHUTTING_DOWN,
        READ_ONLY,  # server switched to read-only for maintenance
        CONFLICT,  # write-write conflict with a concurrent writer of the same key
        CLUSTER_TIMEOUT,
        CLUSTER_CONNECTION_LOST,
        CLUSTER_BACKEND_UNAVAILABLE,
        CLUSTER_LEADERSHIP_CHALLENGE_ONGOING,
        CLUSTER_NOT_LEADER,
        QUEUE_FULL,
        QUEUE_TIME_REQUIREMENT_VIOLATED,
    }
)
_RETRYABLE_TRANSPORT: Final = (
    ConnectionError,  # builtin: the driver's ConnectionAbortedError after its host tries
    TimeoutError,
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.RetryError,
    requests.exceptions.ChunkedEncodingError,
)


def is_retryable(error: BaseException) -> bool:
    """Whether a driver or transport error is transient (StoreUnavailable) rather than fatal."""
    if isinstance(error, ArangoServerError):
        if error.http_code in _PERMISSION_HTTP:
            return False
        if isinstance(error, ServerConnectionError):
            return True
        return error.http_code in _RETRYABLE_HTTP or error.error_code in _RETRYABLE_ERRNO
    return isinstance(error, _RETRYABLE_TRANSPORT)


def _is_permission_error(error: ArangoError) -> bool:
    return isinstance(error, ArangoServerError) and error.http_code in _PERMISSION_HTTP


def _is_duplicate_name(error: ArangoError) -> bool:
    return isinstance(error, ArangoServerError) and error.error_code == DUPLICATE_NAME


@contextmanager
def translate_arango_errors(action: str) -> Iterator[None]:
    """The one boundary where driver and transport errors become StoreError / StoreUnavailable."""
    try:
        yield
    except StoreError:
        raise
    except (ArangoError, OSError) as e:  # requests' exceptions are OSErrors too
        error_type = StoreUnavailable if is_retryable(e) else StoreError
        raise error_type(f"arangodb {action}: {redact_urls(str(e))}") from e


def to_arango_document(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The document sent to ArangoDB: the payload plus its `_key`."""
    return {**doc, "_key": key}


def from_arango_document(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The payload as it was stored: ArangoDB's `_key`, `_id` and `_rev` removed."""
    return {name: value for name, value in raw.items() if name not in SYSTEM_FIELDS}


def check_bulk_results(action: str, keys: Sequence[str], results: object) -> None:
    """Fail the batch when any document of a bulk write came back as an error.

    The driver returns per-document errors instead of raising them. Any fatal one makes the
    batch a StoreError; when every failure is transient it is a StoreUnavailable.
    """
    if not isinstance(results, list) or len(results) != len(keys):
        raise StoreError(f"arangodb {action}: unexpected bulk response {results!r:.200}")
    failures = [
        (key, result)
        for key, result in zip(keys, results, strict=True)
        if isinstance(result, ArangoError)
    ]
    if not failures:
        return
    error_type = (
        StoreUnavailable if all(is_retryable(error) for _, error in failures) else StoreError
    )
    shown = ", ".join(f"{key} ({error})" for key, error in failures[:_MAX_KEYS_IN_MESSAGE])
    more = len(failures) - _MAX_KEYS_IN_MESSAGE
    tail = f" and {more} more" if more > 0 else ""
    raise error_type(
        f"arangodb {action}: {len(failures)} of {len(keys)} documents failed: {shown}{tail}"
    ) from failures[0][1]


def _serialize(value: Any) -> str:
    # features are null, never NaN: refuse to send anything that is not strict JSON
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


class ArangoStore:
    """Store in an ArangoDB database, created with its collections and indexes when missing.

    `uri` may list several coordinators separated by commas. `http_client` replaces the
    driver's HTTP transport (tests use it to replay canned server responses).
    """

    name = "arangodb"

    def __init__(
        self,
        uri: str,
        database: str = "s2",
        username: str = "root",
        password: str = "",
        *,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        http_client: HTTPClient | None = None,
    ) -> None:
        self.uri = uri
        self.database = database
        self._closed = False
        transport = http_client or DefaultHTTPClient(
            request_timeout=request_timeout_s,
            retry_attempts=_HTTP_RETRY_ATTEMPTS,
            backoff_factor=_HTTP_BACKOFF_FACTOR,
        )
        with translate_arango_errors("connect"):
            self._client = ArangoClient(
                hosts=uri,
                http_client=transport,
                serializer=_serialize,
                # each host once: the driver's default of three rounds triples the wait
                # for an unresponsive server before it is reported
                resolver_max_tries=len(uri.split(",")),
            )
        try:
            with translate_arango_errors(f"open database {database!r}"):
                self._create_database(username, password)
                self._db = self._client.db(database, username=username, password=password)
                self._ensure_schema()
                self._db.version()  # fails with a clear error on bad credentials
        except BaseException:
            self._client.close()
            raise

    def __repr__(self) -> str:
        return f"ArangoStore({self.uri!r}, database={self.database!r})"

    def _create_database(self, username: str, password: str) -> None:
        system_db = self._client.db("_system", username=username, password=password)
        try:
            if not system_db.has_database(self.database):
                system_db.create_database(self.database)
        except ArangoError as e:
            # A user without rights on _system works in a database an operator created;
            # a concurrent instance may have created it first.
            if not (_is_permission_error(e) or _is_duplicate_name(e)):
                raise

    def _ensure_schema(self) -> None:
        for collection, (index_name, fields) in INDEXES.items():
            try:
                if not self._db.has_collection(collection):
                    self._db.create_collection(collection)
            except ArangoError as e:
                if not (_is_permission_error(e) or _is_duplicate_name(e)):
                    raise
            try:
                # creating an identical index again returns the existing one
                index = {"type": "persistent", "fields": list(fields), "name": index_name}
                self._db.collection(collection).add_index(index)
            except ArangoError as e:
                if not _is_permission_error(e):
                    raise

    def _check_open(self, action: str) -> None:
        if self._closed:
            raise StoreError(f"arangodb {action}: store is closed")

    @contextmanager
    def _guard(self, action: str) -> Iterator[StandardDatabase]:
        self._check_open(action)
        with translate_arango_errors(action):
            yield self._db

    def _upsert(self, collection: str, keys: list[str], docs: list[dict[str, Any]]) -> None:
        if not docs:
            return
        action = f"upsert {collection}"
        with self._guard(action) as db:
            results = db.collection(collection).insert_many(
                docs, overwrite_mode="replace", silent=False
            )
        check_bulk_results(action, keys, results)

    def upsert_signals(self, docs: Sequence[SignalDoc]) -> None:
        """Replace-or-insert snapshot payloads keyed by `signal_id` (`_key`), one request."""
        self._upsert_signal_rows(prepare_signals(docs))

    def upsert_strategy_events(self, docs: Sequence[Mapping[str, Any]]) -> None:
        """Replace-or-insert strategy events keyed by `event_id` (`_key`), one request."""
        self._upsert_event_rows(prepare_events(docs))

    def write_batch(
        self, signals: Sequence[SignalDoc], events: Sequence[Mapping[str, Any]]
    ) -> None:
        """Signals, then strategy events: two requests, both batches checked before either is
        sent. Not atomic across the two (a failure between them leaves the signals written);
        the service retries the whole batch, and upserts make the repeat harmless."""
        signal_rows, event_rows = prepare_signals(signals), prepare_events(events)
        self._upsert_signal_rows(signal_rows)
        self._upsert_event_rows(event_rows)

    def _upsert_signal_rows(self, rows: Sequence[SignalRow]) -> None:
        keys = [row.signal_id for row in rows]
        docs = [to_arango_document(json.loads(r.json_text), r.signal_id) for r in rows]
        self._upsert(SIGNALS, keys, docs)

    def _upsert_event_rows(self, rows: Sequence[EventRow]) -> None:
        keys = [row.event_id for row in rows]
        self._upsert(STRATEGY_EVENTS, keys, [to_arango_document(r.doc, r.event_id) for r in rows])

    def get_signal(self, signal_id: str) -> dict[str, Any] | None:
        """The stored payload of one signal, or None."""
        self._check_open("get signal")
        if not is_valid_key(signal_id):
            return None  # no stored signal can have this id
        # by AQL rather than GET /_api/document/<key>: the driver puts keys into URLs unescaped
        aql = (
            f"FOR d IN {SIGNALS} FILTER d._key == @key LIMIT 1 "
            'RETURN UNSET(d, "_key", "_id", "_rev")'
        )
        found = self._query("get signal", aql, {"key": signal_id})
        return found[0] if found else None

    def _query(self, action: str, aql: str, bind_vars: dict[str, Any]) -> list[dict[str, Any]]:
        with self._guard(action) as db:
            cursor = cast(
                Cursor, db.aql.execute(aql, bind_vars=bind_vars, batch_size=_CURSOR_BATCH_SIZE)
            )
            return [from_arango_document(raw) for raw in cursor]

    def query_signals(
        self,
        symbol: str,
        window: str | None = None,
        from_t0: int | None = None,
        to_t0: int | None = None,
    ) -> list[dict[str, Any]]:
        """Signals of a symbol with `from_t0 <= t0 <= to_t0`, ordered by (t0, window index)."""
        # `window` is an AQL keyword, hence the backticks
        filters = ["d.symbol == @symbol"]
        bind_vars: dict[str, Any] = {"symbol": symbol, "windows": list(WINDOWS)}
        if window is not None:
            filters.append("d.`window` == @window")
            bind_vars["window"] = window
        if from_t0 is not None:
            filters.append("d.t0 >= @from_t0")
            bind_vars["from_t0"] = from_t0
        if to_t0 is not None:
            filters.append("d.t0 <= @to_t0")
            bind_vars["to_t0"] = to_t0
        aql = (
            f"FOR d IN {SIGNALS} FILTER {' AND '.join(filters)} "
            "SORT d.t0, POSITION(@windows, d.`window`, true) "
            'RETURN UNSET(d, "_key", "_id", "_rev")'
        )
        return self._query("query signals", aql, bind_vars)

    def strategy_events(
        self, kind: str | None = None, symbol: str | None = None
    ) -> list[dict[str, Any]]:
        """Strategy events, optionally filtered, ordered by (ts, event_id)."""
        filters: list[str] = []
        bind_vars: dict[str, Any] = {}
        if kind is not None:
            filters.append("e.kind == @kind")
            bind_vars["kind"] = kind
        if symbol is not None:
            filters.append("e.symbol == @symbol")
            bind_vars["symbol"] = symbol
        where = f"FILTER {' AND '.join(filters)} " if filters else ""
        aql = f'FOR e IN {STRATEGY_EVENTS} {where}RETURN UNSET(e, "_key", "_id", "_rev")'
        events = self._query("query strategy events", aql, bind_vars)
        # sorted here: AQL compares strings by the server's collation, SQLite and Python by
        # code point, and the order of event_ids must not depend on the backend
        events.sort(key=lambda event: (event["ts"], event["event_id"]))
        return events

    def insert_task(self, doc: Mapping[str, Any]) -> bool:
        """Store a new task; False when its `task_id` (`_key`) is taken (nothing written)."""
        row = prepare_task(doc)
        try:
            with self._guard("insert task") as db:
                db.collection(RECOMPUTE_TASKS).insert(to_arango_document(row.doc, row.task_id))
        except StoreError as e:
            cause = e.__cause__
            if isinstance(cause, ArangoServerError) and (
                cause.error_code == UNIQUE_CONSTRAINT_VIOLATED
            ):
                return False
            raise
        return True

    def save_task(self, doc: Mapping[str, Any]) -> None:
        """Replace-or-insert a task document keyed by `task_id` (`_key`)."""
        row = prepare_task(doc)
        with self._guard("save task") as db:
            db.collection(RECOMPUTE_TASKS).insert(
                to_arango_document(row.doc, row.task_id), overwrite_mode="replace"
            )

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        """The stored task, or None."""
        self._check_open("get task")
        if not is_valid_key(task_id):
            return None  # no stored task can have this id
        aql = (
            f"FOR t IN {RECOMPUTE_TASKS} FILTER t._key == @key LIMIT 1 "
            'RETURN UNSET(t, "_key", "_id", "_rev")'
        )
        found = self._query("get task", aql, {"key": task_id})
        return found[0] if found else None

    def query_tasks(
        self,
        owner: str | None = None,
        states: Sequence[str] | None = None,
        id_prefix: str | None = None,
    ) -> list[dict[str, Any]]:
        """Tasks, optionally of one owner, in some states, with an id prefix; by `task_id`."""
        filters: list[str] = []
        bind_vars: dict[str, Any] = {}
        if owner is not None:
            filters.append("t.owner == @owner")
            bind_vars["owner"] = owner
        if states is not None:
            filters.append("t.state IN @states")
            bind_vars["states"] = list(states)
        if id_prefix is not None:
            filters.append("LEFT(t.task_id, @prefix_length) == @prefix")
            bind_vars["prefix_length"] = len(id_prefix)
            bind_vars["prefix"] = id_prefix
        where = f"FILTER {' AND '.join(filters)} " if filters else ""
        aql = f'FOR t IN {RECOMPUTE_TASKS} {where}RETURN UNSET(t, "_key", "_id", "_rev")'
        tasks = self._query("query tasks", aql, bind_vars)
        tasks.sort(key=lambda task: str(task["task_id"]))  # by code point, as on SQLite
        return tasks

    def delete_tasks(self, finished_before: int, states: Sequence[str]) -> int:
        """Delete finished tasks older than `finished_before` (epoch ms); how many went."""
        if not states:
            return 0
        # `null < number` holds in AQL, so a task never finished is excluded explicitly.
        aql = (
            f"FOR t IN {RECOMPUTE_TASKS} FILTER t.state IN @states "
            "AND IS_NUMBER(t.finished_at) AND t.finished_at < @before "
            f"REMOVE t IN {RECOMPUTE_TASKS} RETURN OLD._key"
        )
        bind_vars: dict[str, Any] = {"states": list(states), "before": finished_before}
        with self._guard("delete tasks") as db:
            cursor = cast(Cursor, db.aql.execute(aql, bind_vars=bind_vars))
            return sum(1 for _ in cursor)

    def count_signals(self) -> int:
        """Number of stored signals."""
        with self._guard("count signals") as db:
            return cast(int, db.collection(SIGNALS).count())

    def ping(self) -> None:
        """One round trip to the database; StoreUnavailable when the server cannot be reached."""
        with self._guard("ping") as db:
            db.version()

    def close(self) -> None:
        """Close the HTTP sessions; later calls raise StoreError."""
        if self._closed:
            return
        self._closed = True
        self._client.close()
