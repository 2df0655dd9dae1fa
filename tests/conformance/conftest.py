"""The store under test: each conformance test runs once per implementation of ``Store``.

The in-memory twin and SQLite always; PostgreSQL when a server is configured (``IMGAUDIT_TEST_PG_URL``,
see tests/support/dbs.py), a fresh database per test. ``SqlStore`` is the reference: a test states what it
observes, and the memory store must answer the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dbs
import pytest

from imgaudit.store.memory import MemoryStore
from imgaudit.store.ports import Store
from imgaudit.store.sql import SqlStore

BACKENDS = ["memory", "sqlite"] + (["postgresql"] if dbs.PG_URL else [])


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
    elif request.param == "sqlite":
        sql = SqlStore(dbs.sqlite_url(tmp_path))
        yield sql
        sql.close()
    else:
        with dbs.postgres().database() as url:
            sql = SqlStore(url)
            yield sql
            sql.close()
