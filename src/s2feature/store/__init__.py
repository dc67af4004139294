"""Persistence of snapshots and strategy events behind one `Store` protocol.

SQLite (`SqliteStore`) is the embedded default; ArangoDB (`s2feature.store.arango.ArangoStore`)
is the production store, imported on demand so that SQLite deployments do not load its driver.
`open_store(StoreSettings(...))` opens the one `S2_DB_BACKEND` names.
"""

from s2feature.store.base import (
    EVENT_KINDS,
    Store,
    StoreError,
    StoreUnavailable,
    dqc_fail_event_id,
    is_valid_key,
    recompute_event_id,
    sanitize_key,
)
from s2feature.store.factory import StoreSettings, open_store
from s2feature.store.sqlite import SqliteStore

__all__ = [
    "EVENT_KINDS",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreSettings",
    "StoreUnavailable",
    "dqc_fail_event_id",
    "is_valid_key",
    "open_store",
    "recompute_event_id",
    "sanitize_key",
]
