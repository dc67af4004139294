"""WAL checkpoints of the SQLite store, run by a thread of their own.

In WAL mode a commit appends pages to the `-wal` file; a checkpoint copies them into the database
file and fsyncs both. SQLite's automatic checkpoint runs inside the COMMIT that crosses 1,000 WAL
pages, so the service's batch waited for that copy and its fsyncs: about 30% of its store time
(55 ms of 190 ms over 300 service batches replayed by a micro-benchmark). The store turns the
automatic checkpoint off on its connection and hands the work to `WalCheckpointer`, which runs a
PASSIVE checkpoint (it never blocks readers or writers) on its own connection at most once per
interval, and only after writes. Python's sqlite3 releases the GIL while SQLite works, so the copy
and the fsyncs overlap the service's computing instead of adding to it.

Durability is unchanged: with `synchronous=NORMAL` a commit is durable against a crash of the
process once it is in the WAL, and an OS crash can lose the commits not yet checkpointed either way.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Final

log = logging.getLogger("s2feature.store")

DEFAULT_INTERVAL_S: Final = 1.0


class WalCheckpointer:
    """A daemon thread checkpointing one SQLite file's WAL after writes (see the module doc)."""

    def __init__(
        self, path: Path, busy_timeout_s: float, interval_s: float = DEFAULT_INTERVAL_S
    ) -> None:
        self._interval_s = interval_s
        self._conn = sqlite3.connect(
            path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None
        )
        self._written = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"wal-checkpoint {path.name}", daemon=True
        )
        self._thread.start()

    def written(self) -> None:
        """Say that a transaction was committed: a checkpoint is due within the interval."""
        self._written.set()

    def _run(self) -> None:
        while True:
            self._written.wait()
            if self._closing.wait(self._interval_s):
                return  # closing: the store's connection checkpoints as it closes
            self._written.clear()
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as e:  # the next round tries again; the WAL only grows meanwhile
                log.warning("sqlite WAL checkpoint failed: %s", e)

    def close(self) -> None:
        """Stop the thread and close its connection. Closing twice is harmless."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._written.set()
        self._thread.join()
        self._conn.close()
