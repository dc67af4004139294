"""SQLite store: the embedded default, one file and zero setup.

One connection in WAL mode, shared by the threads of one process behind a lock (the consumer
writes while the HTTP API reads). Each batch is one `BEGIN IMMEDIATE` transaction, so a batch is
written completely or not at all (`write_batch`: a service batch's signals and strategy events
together). Documents are stored as compact JSON next to the columns the
queries filter and sort on.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final

from s2feature.domain import WINDOWS
from s2feature.store.base import (
    SignalDoc,
    SignalRow,
    StoreError,
    StoreUnavailable,
    TaskRow,
    is_valid_key,
    prepare_events,
    prepare_signals,
    prepare_task,
)
from s2feature.store.wal_checkpoint import WalCheckpointer

DEFAULT_BUSY_TIMEOUT_S: Final = 5.0

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS signals (
        signal_id TEXT PRIMARY KEY,
        symbol TEXT NOT NULL,
        "window" TEXT NOT NULL,
        t0 INTEGER NOT NULL,
        doc TEXT NOT NULL
    )""",
    'CREATE INDEX IF NOT EXISTS signals_by_series ON signals (symbol, "window", t0)',
    """CREATE TABLE IF NOT EXISTS strategy_events (
        event_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        symbol TEXT,
        ts INTEGER NOT NULL,
        doc TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS strategy_events_by_kind ON strategy_events (kind, symbol, ts)",
    """CREATE TABLE IF NOT EXISTS recompute_tasks (
        task_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        state TEXT NOT NULL,
        doc TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS recompute_tasks_by_owner ON recompute_tasks (owner, state)",
)

_UPSERT_SIGNAL: Final = """
    INSERT INTO signals (signal_id, symbol, "window", t0, doc) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (signal_id) DO UPDATE SET
        symbol = excluded.symbol, "window" = excluded."window", t0 = excluded.t0, doc = excluded.doc
"""
_UPSERT_EVENT: Final = """
    INSERT INTO strategy_events (event_id, kind, symbol, ts, doc) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (event_id) DO UPDATE SET
        kind = excluded.kind, symbol = excluded.symbol, ts = excluded.ts, doc = excluded.doc
"""
_INSERT_TASK: Final = (
    "INSERT INTO recompute_tasks (task_id, owner, state, doc) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (task_id) DO NOTHING"
)
_UPSERT_TASK: Final = """
    INSERT INTO recompute_tasks (task_id, owner, state, doc) VALUES (?, ?, ?, ?)
    ON CONFLICT (task_id) DO UPDATE SET
        owner = excluded.owner, state = excluded.state, doc = excluded.doc
"""
# Order windows by their position in 1m,5m,1h,4h,1d, not alphabetically.
_WINDOW_ORDER: Final = (
    'CASE "window" '
    + " ".join(f"WHEN '{w}' THEN {i}" for i, w in enumerate(WINDOWS))
    + f" ELSE {len(WINDOWS)} END"
)


def _is_retryable(error: sqlite3.OperationalError) -> bool:
    message = str(error).lower()
    return "locked" in message or "busy" in message


@contextmanager
def translate_sqlite_errors(action: str) -> Iterator[None]:
    """Turn sqlite3 errors into StoreUnavailable (locked/busy) or StoreError (the rest)."""
    try:
        yield
    except sqlite3.OperationalError as e:
        if _is_retryable(e):
            raise StoreUnavailable(f"sqlite {action}: {e}") from e
        raise StoreError(f"sqlite {action}: {e}") from e
    except (sqlite3.Error, OSError) as e:
        raise StoreError(f"sqlite {action}: {e}") from e


@contextmanager
def _immediate_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction. IMMEDIATE takes the write lock up front, so the busy timeout
    covers the wait; on any failure (a failed COMMIT too, which leaves the transaction open) it
    is rolled back and the cause re-raised."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _initialise(conn: sqlite3.Connection, deadline: float) -> None:
    """Switch to WAL and create the schema, retrying while another process does the same.

    Two processes opening a fresh file at once can get SQLITE_BUSY at once, without the busy
    handler ever waiting: switching the journal mode needs an exclusive lock, and a read lock
    upgraded to a write lock is refused rather than risk a deadlock. Both steps are idempotent,
    so they are retried with a short random pause until the busy timeout is spent.
    """
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            with _immediate_transaction(conn):
                for statement in _SCHEMA:
                    conn.execute(statement)
            return
        except sqlite3.OperationalError as e:
            if not _is_retryable(e) or time.monotonic() >= deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))


class SqliteStore:
    """Store in one SQLite file; the parent directory is created when missing."""

    name = "sqlite"

    def __init__(self, path: str | Path, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._closed = False
        with translate_sqlite_errors("open"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; batches open their own.
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None
            )
            try:
                _initialise(self._conn, deadline=time.monotonic() + busy_timeout_s)
                # Checkpoints run on a thread of their own, started by the first write.
                self._conn.execute("PRAGMA wal_autocheckpoint=0")
            except BaseException:
                self._conn.close()
                raise
        self._busy_timeout_s = busy_timeout_s
        self._checkpointer: WalCheckpointer | None = None

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    @contextmanager
    def _locked(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreError(f"sqlite {action}: store is closed")
            with translate_sqlite_errors(action):
                yield self._conn

    def _write(self, action: str, *writes: tuple[str, Sequence[tuple[Any, ...]]]) -> None:
        """Run `(statement, rows)` writes in one transaction (none when there are no rows)."""
        writes = tuple((statement, rows) for statement, rows in writes if rows)
        if not writes:
            return
        with self._locked(action) as conn:
            with _immediate_transaction(conn):
                for statement, rows in writes:
                    conn.executemany(statement, rows)
            if self._checkpointer is None:
                self._checkpointer = WalCheckpointer(self.path, self._busy_timeout_s)
            self._checkpointer.written()

    def upsert_signals(self, docs: Sequence[SignalDoc]) -> None:
        """Replace-or-insert snapshot payloads keyed by `signal_id`, in one transaction."""
        self._write("upsert signals", (_UPSERT_SIGNAL, _signal_rows(docs)))

    def upsert_strategy_events(self, docs: Sequence[Mapping[str, Any]]) -> None:
        """Replace-or-insert strategy events keyed by `event_id`, in one transaction."""
        self._write("upsert strategy events", (_UPSERT_EVENT, _event_rows(docs)))

    def write_batch(
        self, signals: Sequence[SignalDoc], events: Sequence[Mapping[str, Any]]
    ) -> None:
        """Signals and strategy events of one service batch, in one transaction."""
        signal_rows, event_rows = _signal_rows(signals), _event_rows(events)
        self._write("write batch", (_UPSERT_SIGNAL, signal_rows), (_UPSERT_EVENT, event_rows))

    def get_signal(self, signal_id: str) -> dict[str, Any] | None:
        """The stored payload of one signal, or None."""
        with self._locked("get signal") as conn:
            if not is_valid_key(signal_id):
                return None  # no stored signal can have this id
            row = conn.execute("SELECT doc FROM signals WHERE signal_id = ?", (signal_id,))
            found = row.fetchone()
        return None if found is None else _decode(found[0])

    def query_signals(
        self,
        symbol: str,
        window: str | None = None,
        from_t0: int | None = None,
        to_t0: int | None = None,
    ) -> list[dict[str, Any]]:
        """Signals of a symbol with `from_t0 <= t0 <= to_t0`, ordered by (t0, window index)."""
        clauses = ["symbol = ?"]
        params: list[Any] = [symbol]
        if window is not None:
            clauses.append('"window" = ?')
            params.append(window)
        if from_t0 is not None:
            clauses.append("t0 >= ?")
            params.append(from_t0)
        if to_t0 is not None:
            clauses.append("t0 <= ?")
            params.append(to_t0)
        sql = (
            f"SELECT doc FROM signals WHERE {' AND '.join(clauses)} "
            f"ORDER BY t0, {_WINDOW_ORDER}, signal_id"
        )
        with self._locked("query signals") as conn:
            texts = [row[0] for row in conn.execute(sql, params)]
        return [_decode(text) for text in texts]

    def strategy_events(
        self, kind: str | None = None, symbol: str | None = None
    ) -> list[dict[str, Any]]:
        """Strategy events, optionally filtered, ordered by (ts, event_id)."""
        clauses: list[str] = []
        params: list[Any] = []
        if kind is not None:
            clauses.append("kind = ?")
            params.append(kind)
        if symbol is not None:
            clauses.append("symbol = ?")
            params.append(symbol)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        sql = f"SELECT doc FROM strategy_events {where}ORDER BY ts, event_id"
        with self._locked("query strategy events") as conn:
            texts = [row[0] for row in conn.execute(sql, params)]
        return [_decode(text) for text in texts]

    def insert_task(self, doc: Mapping[str, Any]) -> bool:
        """Store a new task; False when its `task_id` is taken (nothing is written then)."""
        row = prepare_task(doc)
        with self._locked("insert task") as conn, _immediate_transaction(conn):
            cursor = conn.execute(_INSERT_TASK, _task_columns(row))
            return cursor.rowcount == 1

    def save_task(self, doc: Mapping[str, Any]) -> None:
        """Replace-or-insert a task document keyed by `task_id`."""
        self._write("save task", (_UPSERT_TASK, [_task_columns(prepare_task(doc))]))

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        """The stored task, or None."""
        with self._locked("get task") as conn:
            found = conn.execute(
                "SELECT doc FROM recompute_tasks WHERE task_id = ?", (task_id,)
            ).fetchone()
        return None if found is None else _decode(found[0])

    def query_tasks(
        self,
        owner: str | None = None,
        states: Sequence[str] | None = None,
        id_prefix: str | None = None,
    ) -> list[dict[str, Any]]:
        """Tasks, optionally of one owner, in some states, with an id prefix; by `task_id`."""
        clauses: list[str] = []
        params: list[Any] = []
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
        if states is not None:
            clauses.append(f"state IN ({', '.join('?' for _ in states)})" if states else "0")
            params.extend(states)
        if id_prefix is not None:
            # substr rather than LIKE: `_` and `%` in a prefix are no wildcards
            clauses.append("substr(task_id, 1, ?) = ?")
            params.extend([len(id_prefix), id_prefix])
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        sql = f"SELECT doc FROM recompute_tasks {where}ORDER BY task_id"
        with self._locked("query tasks") as conn:
            texts = [row[0] for row in conn.execute(sql, params)]
        return [_decode(text) for text in texts]

    def delete_tasks(self, finished_before: int, states: Sequence[str]) -> int:
        """Delete finished tasks older than `finished_before` (epoch ms); how many went."""
        if not states:
            return 0
        marks = ", ".join("?" for _ in states)
        sql = (
            f"DELETE FROM recompute_tasks WHERE state IN ({marks}) "
            "AND json_extract(doc, '$.finished_at') < ?"  # NULL (never finished) is kept
        )
        with self._locked("delete tasks") as conn, _immediate_transaction(conn):
            return conn.execute(sql, [*states, finished_before]).rowcount

    def count_signals(self) -> int:
        """Number of stored signals."""
        with self._locked("count signals") as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM signals").fetchone()
        return int(count)

    def ping(self) -> None:
        """Check that the file is readable (a locked database raises StoreUnavailable)."""
        with self._locked("ping") as conn:
            conn.execute("SELECT 1 FROM signals LIMIT 1").fetchall()

    def close(self) -> None:
        """Close the connection; later calls raise StoreError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with translate_sqlite_errors("close"):
                if self._checkpointer is not None:
                    self._checkpointer.close()
                self._conn.close()  # the last connection to close checkpoints the whole WAL


def _signal_rows(docs: Sequence[SignalDoc]) -> list[SignalRow]:
    return prepare_signals(docs)  # rows are the table's columns, in its order


def _event_rows(docs: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r.event_id, r.kind, r.symbol, r.ts, r.json_text) for r in prepare_events(docs)]


def _task_columns(row: TaskRow) -> tuple[str, str, str, str]:
    return (row.task_id, row.owner, row.state, row.json_text)


def _decode(text: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(text)
    return doc
