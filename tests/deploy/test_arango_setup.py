"""`deploy/arango/setup-user.py`: the grants it plans (offline), and, against a real ArangoDB
named by `S2_TEST_ARANGO_URL` (administrator password in `S2_TEST_ARANGO_ROOT_PASSWORD`), that
the user it sets up can write the store's collections and nothing else. No ArangoDB runs here:
that part is skipped unless the variable is set."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest

from s2feature.store.arango import INDEXES

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "arango" / "setup-user.py"
ARANGO_URL = os.environ.get("S2_TEST_ARANGO_URL")


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("s2_arango_setup", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_plan_opens_the_store_collections_and_closes_every_wildcard() -> None:
    setup = script()
    grants = [(g.database, g.collection, g.level) for g in setup.plan("s2")]
    assert grants == [
        ("*", None, "none"),
        ("_system", None, "none"),
        ("s2", "*", "none"),
        ("s2", None, "ro"),
        ("s2", "signals", "rw"),
        ("s2", "strategy_events", "rw"),
        ("s2", "recompute_tasks", "rw"),
    ]
    # never rw at the database level: that would let the user create and drop collections
    assert not [g for g in setup.plan("s2") if g.collection is None and g.level == "rw"]


def test_the_collections_are_the_store_ones() -> None:
    assert set(script().COLLECTIONS) == set(INDEXES)


def test_the_script_refuses_to_run_without_a_user_password() -> None:
    env = {k: v for k, v in os.environ.items() if k != "S2_DB_ARANGO_PASSWORD"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--url", "http://127.0.0.1:1"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "S2_DB_ARANGO_PASSWORD" in done.stderr


@pytest.mark.skipif(not ARANGO_URL, reason="S2_TEST_ARANGO_URL is not set (no ArangoDB here)")
def test_the_user_writes_its_collections_and_nothing_else() -> None:
    from arango.client import ArangoClient
    from arango.exceptions import ArangoServerError

    assert ARANGO_URL is not None
    admin_password = os.environ.get("S2_TEST_ARANGO_ROOT_PASSWORD", "")
    database, user, password = (
        f"s2test_{uuid.uuid4().hex[:8]}",
        "s2test-user",
        "pw-" + uuid.uuid4().hex,
    )
    env = {**os.environ, "ARANGO_ADMIN_PASSWORD": admin_password, "S2_DB_ARANGO_PASSWORD": password}
    command = [
        sys.executable,
        str(SCRIPT),
        "--url",
        ARANGO_URL,
        "--database",
        database,
        "--user",
        user,
    ]
    client = ArangoClient(hosts=ARANGO_URL)
    sys_db = client.db("_system", username="root", password=admin_password)
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        admin_db = client.db(database, username="root", password=admin_password)
        admin_db.create_collection("unrelated")
        db = client.db(database, username=user, password=password)
        db.collection("signals").insert({"_key": "k1", "v": 1})
        db.collection("strategy_events").insert({"_key": "k1", "v": 1})
        assert db.collection("signals").get("k1")["v"] == 1
        with pytest.raises(ArangoServerError):
            db.collection("unrelated").insert({"_key": "k1"})
        with pytest.raises(ArangoServerError):
            db.collection("unrelated").get("k1")
        with pytest.raises(ArangoServerError):
            db.create_collection("another")
        with pytest.raises(ArangoServerError):
            client.db("_system", username=user, password=password).collections()
        # Idempotent, and its own check still passes with the later collection present.
        again = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        assert again.returncode == 0, again.stderr
    finally:
        if sys_db.has_database(database):
            sys_db.delete_database(database)
        if sys_db.has_user(user):
            sys_db.delete_user(user)
        client.close()


def test_the_deploy_scripts_are_typed() -> None:
    # `make lint` covers src/, tests/ and benches/; the deploy scripts are checked here.
    scripts = [str(SCRIPT), str(ROOT / "deploy" / "grafana" / "generate.py")]
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *scripts],
        env={**os.environ, "MYPYPATH": str(ROOT / "src")},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
