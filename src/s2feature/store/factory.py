"""Open the configured store: SQLite (the default) or ArangoDB, chosen explicitly by
`S2_DB_BACKEND` (never inferred from which other variables happen to be set)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from s2feature.store.base import Store
from s2feature.store.sqlite import SqliteStore


@dataclass(frozen=True)
class StoreSettings:
    """`S2_DB_BACKEND` [sqlite]; SQLite at `S2_DB_SQLITE_PATH` [./data/s2.db], relative to the
    working directory; ArangoDB at `S2_DB_ARANGO_URI` with `S2_DB_ARANGO_DATABASE` [s2],
    `S2_DB_ARANGO_USER` [root] and `S2_DB_ARANGO_PASSWORD` [empty]."""

    backend: Literal["sqlite", "arango"] = "sqlite"
    sqlite_path: Path = Path("./data/s2.db")
    arango_uri: str | None = None
    arango_database: str = "s2"
    arango_user: str = "root"
    arango_password: str = ""


def open_store(settings: StoreSettings) -> Store:
    """Open the configured store. ArangoDB raises `StoreUnavailable` when it cannot be reached
    (the caller retries), `StoreError` when it refuses the credentials or the database."""
    if settings.backend == "arango":
        if not settings.arango_uri:
            raise ValueError("the ArangoDB store needs a URI")
        # imported here so that SQLite deployments never load the HTTP driver stack
        from s2feature.store.arango import ArangoStore

        return ArangoStore(
            settings.arango_uri,
            database=settings.arango_database,
            username=settings.arango_user,
            password=settings.arango_password,
        )
    return SqliteStore(settings.sqlite_path)
