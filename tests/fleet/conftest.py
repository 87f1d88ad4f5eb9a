"""Fleet test fixtures: a database per dialect, a signed TUF repository with test bundles."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=3):
            return True
    except Exception:
        return False


PG_OK = _pg_available()


def make_db(kind: str, tmp_path: Path):
    """A fresh Database: a SQLite file, or a unique PostgreSQL schema (parallel runs never collide)."""
    from edgeops.fleet.db import Database

    if kind == "postgresql":
        if not PG_OK:
            pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
        db = Database(PG_URL, schema=f"edgeops_test_{uuid.uuid4().hex[:12]}")
    else:
        db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_all()
    return db


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """The data layer on SQLite and on PostgreSQL (each test gets its own schema)."""
    database = make_db(request.param, tmp_path)
    yield database
    database.drop_all()
    database.dispose()


@pytest.fixture
def sqlite_db(tmp_path):
    """The data layer on SQLite only (unit tests)."""
    database = make_db("sqlite", tmp_path)
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def fleet_repo(tmp_path_factory):
    """Keys and a TUF repository with digits 1.0.0 (good), 2.0.0 (good), 3.0.0 (NaN outputs)."""
    from edgeops.trust.keys import Keyring
    from edgeops.trust.repository import Repository
    from tests.support.bundles import write_test_bundle

    base = tmp_path_factory.mktemp("fleet-repo")
    ring = Keyring.create(base / "keys", root_keys=1, root_threshold=1)
    repo = Repository.init(base / "repo", ring)
    for version, release, variant in (("1.0.0", 1, "good"), ("2.0.0", 2, "good"), ("3.0.0", 3, "nan")):
        path = base / f"digits-{version}.bundle"
        write_test_bundle(path, name="digits", version=version, release=release, variant=variant)
        repo.publish(path, ring)
    return {"base": base, "keys": base / "keys", "repo": base / "repo"}
