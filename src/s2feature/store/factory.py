"""Choose the store from the environment: ArangoDB when configured, else the SQLite file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from s2feature.store.base import Store
from s2feature.store.sqlite import SqliteStore

DEFAULT_SQLITE_PATH: Final = "./data/s2.db"
DEFAULT_ARANGO_DATABASE: Final = "s2"
DEFAULT_ARANGO_USER: Final = "root"


def open_store(env: Mapping[str, str]) -> Store:
    """Open the configured store.

    `S2_DB_ARANGO_URI` set (non-empty) selects ArangoDB with `S2_DB_ARANGO_DATABASE` [s2],
    `S2_DB_ARANGO_USER` [root] and `S2_DB_ARANGO_PASSWORD` [empty]; otherwise SQLite at
    `S2_DB_SQLITE_PATH` [./data/s2.db], relative to the working directory.
    """
    uri = env.get("S2_DB_ARANGO_URI", "").strip()
    if uri:
        # imported here so that SQLite deployments never load the HTTP driver stack
        from s2feature.store.arango import ArangoStore

        return ArangoStore(
            uri,
            database=env.get("S2_DB_ARANGO_DATABASE") or DEFAULT_ARANGO_DATABASE,
            username=env.get("S2_DB_ARANGO_USER") or DEFAULT_ARANGO_USER,
            password=env.get("S2_DB_ARANGO_PASSWORD", ""),
        )
    return SqliteStore(env.get("S2_DB_SQLITE_PATH") or DEFAULT_SQLITE_PATH)
