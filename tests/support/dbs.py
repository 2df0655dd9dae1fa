"""Throwaway databases for the tests, on SQLite or on real servers.

The backend of the store under test is chosen once per pytest run by ``IMGAUDIT_TEST_BACKEND``:
``sqlite`` (default: a file per test) or ``postgresql`` (a fresh database per test on the server at
``IMGAUDIT_TEST_PG_URL``). MariaDB (``IMGAUDIT_TEST_MYSQL_URL``) is there for the tests of external
MySQL tables, whatever the store backend. ``scripts/dbs.sh start`` runs both servers and
``scripts/dbs.sh env`` prints the two URLs; ``make test-all`` does it all.

The variables are read when this module is imported, before the autouse fixture in conftest.py clears
every ``IMGAUDIT_*`` variable for the tests themselves.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

BACKENDS = ("sqlite", "postgresql")
BACKEND = os.environ.get("IMGAUDIT_TEST_BACKEND", "").strip().lower() or "sqlite"
PG_URL = os.environ.get("IMGAUDIT_TEST_PG_URL", "").strip()
MYSQL_URL = os.environ.get("IMGAUDIT_TEST_MYSQL_URL", "").strip()
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
CONNECT_TIMEOUT = 5
HOW_TO_START = (
    'start the servers with `scripts/dbs.sh start && eval "$(scripts/dbs.sh env)"`, or run `make test-all`'
)


class ServerUnavailable(Exception):
    """The configured database server cannot be reached (or no server is configured)."""


class Server:
    """A database server reached through an admin URL: creates and drops throwaway databases on it."""

    def __init__(self, name: str, admin_url: str) -> None:
        self.name = name
        self.admin_url = make_url(admin_url)
        self.dialect = self.admin_url.get_backend_name()
        self._engine: Engine | None = None
        self._error: str | None = None
        self._lock = threading.Lock()

    def __str__(self) -> str:
        return f"{self.name} at {self.admin_url.render_as_string(hide_password=True)}"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            connect_args = {"connect_timeout": CONNECT_TIMEOUT}
            self._engine = create_engine(
                self.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args=connect_args
            )
        return self._engine

    def check(self) -> None:
        """Raise ServerUnavailable (once per session, then remembered) unless the server answers."""
        with self._lock:
            if self._error is None:
                try:
                    with self.engine.connect() as conn:
                        conn.execute(text("SELECT 1"))
                except Exception as exc:  # the driver's own error classes differ per backend
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    self._error = f"{self} is unreachable ({type(exc).__name__}: {first}); {HOW_TO_START}"
                else:
                    self._error = ""
            if self._error:
                raise ServerUnavailable(self._error)

    def url_of(self, database: str) -> str:
        return self.admin_url.set(database=database).render_as_string(hide_password=False)

    def create(self, template: str | None = None) -> str:
        """A new empty database (or a copy of ``template``); returns its name."""
        self.check()
        name = f"t_{secrets.token_hex(6)}"
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                if template is None:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
                else:
                    self._terminate(conn, template)  # a template must have no other sessions
                    conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
            elif self.dialect in {"mysql", "mariadb"}:
                if template is not None:
                    raise NotImplementedError("copying a MariaDB database")
                charset = "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                conn.execute(text(f"CREATE DATABASE `{name}` {charset}"))
            else:
                raise NotImplementedError(f"throwaway databases on {self.dialect}")
        return name

    def drop(self, name: str) -> None:
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                if conn.dialect.server_version_info >= (13,):
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                else:
                    self._terminate(conn, name)
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            else:
                conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))

    @staticmethod
    def _terminate(conn, database: str) -> None:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": database},
        )

    @contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database for one test: yields its URL, drops it afterwards."""
        name = self.create()
        try:
            yield self.url_of(name)
        finally:
            self.drop(name)

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


_servers: dict[str, Server] = {}


def _server(name: str, url: str) -> Server:
    if name not in _servers:
        _servers[name] = Server(name, url)
    return _servers[name]


def postgres() -> Server:
    if not PG_URL:
        raise ServerUnavailable(f"the postgresql backend needs IMGAUDIT_TEST_PG_URL; {HOW_TO_START}")
    return _server("PostgreSQL", PG_URL)


def mysql() -> Server:
    if not MYSQL_URL:
        raise ServerUnavailable(f"IMGAUDIT_TEST_MYSQL_URL is not set; {HOW_TO_START}")
    return _server("MariaDB", MYSQL_URL)


def check_backend() -> str | None:
    """None when the chosen store backend is usable, else why not (checked once at session start)."""
    if BACKEND not in BACKENDS:
        return f"IMGAUDIT_TEST_BACKEND={BACKEND!r}: expected one of {', '.join(BACKENDS)}"
    if BACKEND == "postgresql":
        try:
            postgres().check()
        except ServerUnavailable as exc:
            return str(exc)
    return None


def describe() -> str:
    """One line for the pytest header, so that the two CI runs can be told apart."""
    store = BACKEND if BACKEND != "postgresql" else f"postgresql ({make_url(PG_URL).render_as_string()})"
    maria = make_url(MYSQL_URL).render_as_string() if MYSQL_URL else "not configured (its tests skip)"
    if not MYSQL_URL and IN_CI:
        maria = "not configured (its tests FAIL in CI)"
    return f"imgaudit store backend: {store}; MariaDB: {maria}"


def sqlite_url(directory: Path) -> str:
    """The SQLite file the store would use by default in ``directory/data``."""
    return f"sqlite:///{directory / 'data' / 'imgaudit.db'}"


# -- databases that belong to a data directory (the CLI tests) ---------------------------------------------


class DataDirDatabases:
    """On PostgreSQL, one database per data directory, created on first use and dropped at session end;
    on SQLite nothing (the store file lives in the data directory)."""

    def __init__(self) -> None:
        self._names: dict[Path, str] = {}
        self._lock = threading.Lock()

    def env(self, data_dir: Path) -> dict[str, str]:
        """The environment a CLI process needs to use the store of ``data_dir``."""
        if BACKEND != "postgresql":
            return {}
        key = Path(data_dir).resolve()
        with self._lock:
            if key not in self._names:
                self._names[key] = postgres().create()
            return {"IMGAUDIT_DATABASE_URL": postgres().url_of(self._names[key])}

    def copy(self, source: Path, dest: Path) -> None:
        """Give ``dest`` a copy of the store of ``source`` (after copying the directory itself)."""
        if BACKEND != "postgresql":
            return
        src, dst = Path(source).resolve(), Path(dest).resolve()
        with self._lock:
            if src in self._names:
                self._names[dst] = postgres().create(template=self._names[src])

    def drop_all(self) -> None:
        with self._lock:
            names, self._names = list(self._names.values()), {}
        for name in names:
            postgres().drop(name)


data_dirs = DataDirDatabases()


def db_env(data_dir: Path) -> dict[str, str]:
    """``IMGAUDIT_DATABASE_URL`` for a CLI run on ``data_dir`` when the store backend is a server."""
    return data_dirs.env(data_dir)


def cleanup() -> None:
    """End of session: drop the data directories' databases, close the admin engines."""
    data_dirs.drop_all()
    for server in _servers.values():
        server.dispose()
