"""WAL checkpoints of the SQLite store run on their own thread, not inside the writer's commit."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from s2feature.store.sqlite import SqliteStore


def payload(t0: int) -> dict[str, object]:
    return {
        "signal_id": f"BTCUSDT:1m:{t0}",
        "t0": t0,
        "symbol": "BTCUSDT",
        "window": "1m",
        "features": {"filler": "x" * 2000},  # a page of WAL per row or so
    }


def checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("wal-checkpoint")]


def test_the_writer_connection_never_checkpoints_itself(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s2.db")
    conn = sqlite3.connect(tmp_path / "s2.db")
    (pages,) = conn.execute("PRAGMA wal_autocheckpoint").fetchone()
    assert pages == 1000  # a new connection's default, which the store's connection turns off
    assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    conn.close()
    store.close()


def test_written_pages_reach_the_database_file_without_another_write(tmp_path: Path) -> None:
    path = tmp_path / "s2.db"
    store = SqliteStore(path)
    assert checkpoint_threads() == []  # started by the first write, not by opening
    empty_size = path.stat().st_size
    store.upsert_signals([payload(60_000 * i + 59_999) for i in range(200)])
    assert len(checkpoint_threads()) == 1
    # The checkpoint thread copies the pages from the WAL one after another, so the file grows
    # in steps: wait for all of them, not for the first.
    copied = 200 * 2000
    deadline = time.monotonic() + 30
    while path.stat().st_size <= copied and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.stat().st_size > max(copied, empty_size)
    store.close()
    assert checkpoint_threads() == []
    store.close()  # harmless
    reopened = SqliteStore(path)
    assert reopened.count_signals() == 200
    reopened.close()
