"""``SqlStore``: every port's SQL implementation over one engine."""

from __future__ import annotations

from sqlalchemy import delete, update

from imgaudit.store.schema import EventRow, ImageRow, IndexLogRow, SearchLogRow, SourceStateRow
from imgaudit.store.sql.cursors import SqlCursors
from imgaudit.store.sql.decisions import SqlDecisions
from imgaudit.store.sql.items import SqlItems
from imgaudit.store.sql.queue import SqlQueue
from imgaudit.store.sql.search_feed import SqlSearchFeed
from imgaudit.store.sql.stats import SqlStats


class SqlStore(SqlQueue, SqlDecisions, SqlItems, SqlStats, SqlCursors, SqlSearchFeed):
    """The SQLAlchemy implementation of ``imgaudit.store.ports.Store``: SQLite by default, PostgreSQL for
    many workers."""

    def reset(self) -> None:
        """Forget every item, log entry, event and cursor."""
        with self._writing() as s:
            s.execute(update(ImageRow).values(duplicate_of=None))
            s.execute(delete(ImageRow))
            s.execute(delete(IndexLogRow))
            s.execute(delete(SearchLogRow))
            s.execute(delete(EventRow))
            s.execute(delete(SourceStateRow))
