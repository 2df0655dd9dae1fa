"""An external source's bookkeeping: its read cursor, and the verdicts still to write back to it."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import case, select, update
from sqlalchemy.orm import aliased

from imgaudit.store.schema import EventRow, ImageRow, SourceStateRow, utcnow
from imgaudit.store.sql.base import SqlBase, item_record
from imgaudit.types import ItemRecord


class SqlCursors(SqlBase):
    def get_cursor(self, name: str) -> str | None:
        with self._reading() as s:
            return s.scalar(select(SourceStateRow.value).where(SourceStateRow.name == name))

    def set_cursor(self, name: str, value: str) -> None:
        now = utcnow()
        stmt = (
            self._insert(SourceStateRow)
            .values(name=name, value=value, updated_at=now)
            .on_conflict_do_update(index_elements=["name"], set_={"value": value, "updated_at": now})
        )
        with self._writing() as s:
            s.execute(stmt)

    def pending_writebacks(self, limit: int) -> list[tuple[ItemRecord, str | None]]:
        """Finished external items whose verdict is not yet in the business table, with the external
        key of their original (for duplicates)."""
        original = aliased(ImageRow)
        # The original's key means something to the business table only if it came from it.
        original_key = case((original.source == ImageRow.source, original.external_key), else_=None)
        q = (
            select(ImageRow, original_key)
            .join(original, ImageRow.duplicate_of == original.id, isouter=True)
            .where(ImageRow.writeback == "pending")
            .order_by(ImageRow.id)
            .limit(limit)
        )
        with self._reading() as s:
            return [(item_record(r), key) for r, key in s.execute(q).all()]

    def mark_written(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        now = utcnow()
        with self._writing() as s:
            s.execute(
                update(ImageRow).where(ImageRow.id.in_(list(ids))).values(writeback="done", updated_at=now)
            )
            for i in ids:
                s.add(EventRow(image_id=i, at=now, event="written_back"))
