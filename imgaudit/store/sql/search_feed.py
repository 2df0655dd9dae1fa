"""The log of finished items that the search indexes follow, by sequence number."""

from __future__ import annotations

from sqlalchemy import func, select

from imgaudit.store.schema import ImageRow, SearchLogRow
from imgaudit.store.sql.base import SqlBase, item_record
from imgaudit.types import ItemRecord


class SqlSearchFeed(SqlBase):
    def search_feed(self, after: int, limit: int = 1000) -> list[tuple[int, ItemRecord]]:
        """Finished items logged after sequence ``after`` (the search indexes' cursor), oldest first;
        an item finished twice appears twice (the later entry wins)."""
        q = (
            select(SearchLogRow.seq, ImageRow)
            .join(ImageRow, ImageRow.id == SearchLogRow.image_id)
            .where(SearchLogRow.seq > after)
            .order_by(SearchLogRow.seq)
            .limit(limit)
        )
        with self._reading() as s:
            return [(int(seq), item_record(r)) for seq, r in s.execute(q).all()]

    def last_search_seq(self) -> int:
        with self._reading() as s:
            return int(s.scalar(select(func.coalesce(func.max(SearchLogRow.seq), 0))) or 0)
