"""Reading items: by id, key or URI, their history, what belongs in the dedup indexes, their copies."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import cast

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, aliased

from imgaudit.errors import NotFound
from imgaudit.signals.hashes import from_signed
from imgaudit.store.encoding import RAW_PATH_PREFIX, real_uri, unpack_embedding, uri_hash
from imgaudit.store.schema import EventRow, ImageRow
from imgaudit.store.sql.base import SqlBase, item_record
from imgaudit.types import Facets, ItemRecord, Status


class SqlItems(SqlBase):
    def get(self, item_id: int) -> ItemRecord:
        rec = self.get_many([item_id]).get(item_id)
        if rec is None:
            raise NotFound(f"no image with id {item_id}")
        return rec

    def get_many(self, ids: Sequence[int]) -> dict[int, ItemRecord]:
        if not ids:
            return {}
        with self._reading() as s:
            rows = s.scalars(select(ImageRow).where(ImageRow.id.in_(list(ids))))
            return {r.id: item_record(r) for r in rows}

    def facets(self, ids: Sequence[int]) -> dict[int, Facets]:
        """Just what search filters on, for many candidates: no JSON blobs but the small labels list."""
        if not ids:
            return {}
        with self._reading() as s:
            rows = s.execute(
                select(
                    ImageRow.id,
                    ImageRow.status,
                    ImageRow.decision,
                    ImageRow.moderation,
                    ImageRow.source,
                    ImageRow.ocr_text.is_not(None),
                    ImageRow.created_at,
                    ImageRow.labels,
                ).where(ImageRow.id.in_(list(ids)))
            ).all()
        return {r[0]: Facets(*r) for r in rows}

    def find_by_uri(self, uri: str) -> ItemRecord | None:
        with self._reading() as s:
            row = s.scalars(select(ImageRow).where(ImageRow.uri_hash == uri_hash(uri))).first()
            return item_record(row) if row else None

    def find(self, key: str) -> ItemRecord | None:
        """An item by id (digits), external key, or path/URL."""
        conds = [ImageRow.external_key == key, ImageRow.uri_hash == uri_hash(key)]
        if key.startswith(RAW_PATH_PREFIX):  # a path as stored (and printed) when it is not UTF-8
            conds.append(ImageRow.uri_hash == uri_hash(real_uri(key, "path")))
        if key.isdigit():
            conds.insert(0, ImageRow.id == int(key))
        with self._reading() as s:
            row = s.scalars(select(ImageRow).where(or_(*conds)).order_by(ImageRow.id).limit(1)).first()
            return item_record(row) if row else None

    def events(self, item_id: int) -> list[dict[str, object]]:
        with self._reading() as s:
            rows = s.scalars(select(EventRow).where(EventRow.image_id == item_id).order_by(EventRow.id))
            return [
                {"at": r.at.isoformat(), "event": r.event, "worker": r.worker, "detail": r.detail}
                for r in rows
            ]

    def iter_indexed(self, batch: int = 10_000) -> Iterator[tuple[np.ndarray, list[int], np.ndarray]]:
        """(ids, phashes, embeddings) of everything that belongs in the indexes, in id order."""
        last = 0
        while True:
            with self._reading() as s:
                rows = s.execute(
                    select(ImageRow.id, ImageRow.phash, ImageRow.embedding)
                    .where(ImageRow.indexed == 1, ImageRow.id > last)
                    .order_by(ImageRow.id)
                    .limit(batch)
                ).all()
            if not rows:
                return
            last = rows[-1].id
            yield (
                np.array([r.id for r in rows], np.int64),
                [from_signed(r.phash) for r in rows],
                np.stack([unpack_embedding(r.embedding) for r in rows]),
            )

    def count_indexed(self) -> int:
        with self._reading() as s:
            return indexed_count(s)

    def copies_of(self, ids: Sequence[int]) -> dict[int, list[int]]:
        """The images recorded as duplicates of each of ``ids`` (not indexed themselves), in id order."""
        out: dict[int, list[int]] = {}
        if not ids:
            return out
        with self._reading() as s:
            rows = s.execute(
                select(ImageRow.duplicate_of, ImageRow.id)
                .where(ImageRow.duplicate_of.in_(list(ids)), ImageRow.status == Status.DONE)
                .order_by(ImageRow.id)
            ).all()
        for original, copy in rows:  # duplicate_of is set on every row the query kept
            out.setdefault(cast(int, original), []).append(int(copy))
        return out

    def duplicate_pairs(self, limit: int | None = None) -> list[tuple[ItemRecord, ItemRecord]]:
        original = aliased(ImageRow)
        q = (
            select(ImageRow, original)
            .join(original, ImageRow.duplicate_of == original.id)
            .where(ImageRow.decision == "duplicate")
            .order_by(ImageRow.id)
        )
        if limit:
            q = q.limit(limit)
        with self._reading() as s:
            return [(item_record(a), item_record(b)) for a, b in s.execute(q).all()]


def indexed_count(s: Session) -> int:
    """How many items belong in the dedup indexes, as ``s`` sees it (inside the decision lock, too)."""
    return int(s.scalar(select(func.count()).where(ImageRow.indexed == 1)) or 0)
