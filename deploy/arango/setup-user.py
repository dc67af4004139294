"""Set up ArangoDB for the S2 feature service with least privilege (SPEC §13).

As an administrator, creates (when missing) the service's database, its collections `signals`,
`strategy_events` and `recompute_tasks` with the store's indexes, and a user that can read and
write those three collections and nothing else; then reads the effective permissions back and fails if any is
wider. Idempotent: run it again after an upgrade or to reset a user's grants.

    ARANGO_ADMIN_PASSWORD=... S2_DB_ARANGO_PASSWORD=... \\
        python deploy/arango/setup-user.py --url http://arangodb:8529 --user s2-feature

Why these grants. ArangoDB resolves a collection's access level as: the collection's own grant,
else the database's `*` (default collection) grant, else the server-wide `*`/`*` grant. A
database-level `rw` ("administrate": create and drop collections and indexes) is not needed by the
service once this script has made the collections and indexes (the store tolerates a refusal to
create them), and a wildcard grant left at `rw` or `ro` would open every collection added later.
So the user gets:

- `*` (every database) and `_system`: none;
- the service database: `ro` (it can open it, not change its collections);
- that database's `*` collection default: none (a collection added later stays closed);
- `signals`, `strategy_events` and `recompute_tasks`: `rw`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from arango.client import ArangoClient
from arango.database import StandardDatabase

from s2feature.store.arango import INDEXES
from s2feature.store.base import RECOMPUTE_TASKS, SIGNALS, STRATEGY_EVENTS

Level = Literal["rw", "ro", "none"]
COLLECTIONS: Final = (SIGNALS, STRATEGY_EVENTS, RECOMPUTE_TASKS)


@dataclass(frozen=True)
class Grant:
    """One permission: `collection` None is the database level; "*" is a wildcard."""

    database: str
    collection: str | None
    level: Level


def plan(database: str) -> list[Grant]:
    """The grants, in the order they are applied: the wildcards closed first, then opened
    where needed, so there is never a moment with more access than the end state."""
    return [
        Grant("*", None, "none"),
        Grant("_system", None, "none"),
        Grant(database, "*", "none"),
        Grant(database, None, "ro"),
        *(Grant(database, name, "rw") for name in COLLECTIONS),
    ]


def ensure_schema(
    sys_db: StandardDatabase,
    client: ArangoClient,
    database: str,
    admin_user: str,
    admin_password: str,
) -> None:
    """The database, its collections and the store's indexes (the same as `ArangoStore`)."""
    if not sys_db.has_database(database):
        sys_db.create_database(database)
    db = client.db(database, username=admin_user, password=admin_password, verify=True)
    for name in COLLECTIONS:
        if not db.has_collection(name):
            db.create_collection(name)
        index_name, fields = INDEXES[name]
        db.collection(name).add_index(
            {"type": "persistent", "fields": list(fields), "name": index_name}
        )


def ensure_user(sys_db: StandardDatabase, username: str, password: str) -> None:
    if sys_db.has_user(username):
        sys_db.update_user(username, password=password, active=True)
    else:
        sys_db.create_user(username, password=password, active=True)


def apply_grants(sys_db: StandardDatabase, username: str, grants: Sequence[Grant]) -> None:
    for grant in grants:
        sys_db.update_permission(username, grant.level, grant.database, grant.collection)


def check_grants(
    sys_db: StandardDatabase,
    client: ArangoClient,
    username: str,
    database: str,
    admin_user: str,
    admin_password: str,
) -> list[str]:
    """What is wider (or narrower) than the plan, read back from the server; empty when right.
    Every collection of the database is checked, not only the service's."""
    problems: list[str] = []

    def expect(level: Level, db_name: str, collection: str | None = None) -> None:
        got = sys_db.permission(username, db_name, collection)
        if got != level:
            where = db_name if collection is None else f"{db_name}/{collection}"
            problems.append(f"{where}: {got}, expected {level}")

    expect("none", "_system")
    expect("ro", database)
    db = client.db(database, username=admin_user, password=admin_password, verify=True)
    collections: list[dict[str, Any]] = db.collections()  # type: ignore[assignment]
    for info in collections:
        name = str(info["name"])
        if name.startswith("_"):
            continue  # system collections: reached through the database level only
        expect("rw" if name in COLLECTIONS else "none", database, name)
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="ArangoDB endpoint(s), comma-separated")
    parser.add_argument("--database", default="s2", help="the service's database [s2]")
    parser.add_argument("--user", default="s2-feature", help="the service's user [s2-feature]")
    parser.add_argument("--admin-user", default="root", help="an administrator [root]")
    parser.add_argument(
        "--admin-password-env",
        default="ARANGO_ADMIN_PASSWORD",
        help="variable holding the administrator's password [ARANGO_ADMIN_PASSWORD]",
    )
    parser.add_argument(
        "--password-env",
        default="S2_DB_ARANGO_PASSWORD",
        help="variable holding the service user's password [S2_DB_ARANGO_PASSWORD]",
    )
    args = parser.parse_args(argv)
    admin_password = os.environ.get(args.admin_password_env, "")
    password = os.environ.get(args.password_env, "")
    if not password:
        print(
            f"setup-user: {args.password_env} is empty: set the user's password there",
            file=sys.stderr,
        )
        return 2
    client = ArangoClient(hosts=args.url)
    try:
        sys_db = client.db(
            "_system", username=args.admin_user, password=admin_password, verify=True
        )
        ensure_schema(sys_db, client, args.database, args.admin_user, admin_password)
        ensure_user(sys_db, args.user, password)
        apply_grants(sys_db, args.user, plan(args.database))
        problems = check_grants(
            sys_db, client, args.user, args.database, args.admin_user, admin_password
        )
    finally:
        client.close()
    for problem in problems:
        print(f"setup-user: permission {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"user {args.user}: rw on {args.database}/{', '.join(COLLECTIONS)}, nothing else")
    return 0


if __name__ == "__main__":
    sys.exit(main())
