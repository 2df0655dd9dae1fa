"""The SQLAlchemy store: SQLite by default, PostgreSQL for many workers. One module per port, composed
into ``SqlStore``."""

from imgaudit.store.sql.store import SqlStore

__all__ = ["SqlStore"]
