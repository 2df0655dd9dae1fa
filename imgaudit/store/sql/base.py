"""What every port's SQL implementation shares: the engine, sessions that turn an outage into
``StoreUnavailable``, the dialect's upsert, and the row-to-record mapping."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from imgaudit.signals.hashes import from_signed
from imgaudit.store.db import make_engine, migrate
from imgaudit.store.outages import unavailable_on_outage
from imgaudit.store.schema import Base, ImageRow
from imgaudit.types import ItemRecord


class SqlBase:
    """The engine of one database URL, migrated to the newest schema on open unless told not to."""

    def __init__(self, url: str, *, auto_migrate: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        if auto_migrate:
            with unavailable_on_outage():
                migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._postgres = self.engine.dialect.name == "postgresql"

    def close(self) -> None:
        self.engine.dispose()

    def _insert(self, table: type[Base]) -> postgresql.Insert | sqlite.Insert:
        """The dialect's ``insert``, which has ``on_conflict_do_*`` (the generic one has not)."""
        return postgresql.insert(table) if self._postgres else sqlite.insert(table)

    def _session(self) -> Session:
        """A bare session; store methods use ``_reading`` / ``_writing``, which report outages."""
        return self._sessions()

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        """A session for reads (closed, never committed, at the end)."""
        with unavailable_on_outage(), self._session() as s:
            yield s

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        """A transaction, committed when the block ends (rolled back when it raises); on SQLite it
        starts with BEGIN IMMEDIATE (see ``make_engine``)."""
        with unavailable_on_outage(), self._session() as s, s.begin():
            yield s


def item_record(r: ImageRow) -> ItemRecord:
    return ItemRecord(
        id=r.id,
        source=r.source,
        uri=r.uri,
        kind=r.kind,
        external_key=r.external_key,
        status=r.status,
        attempts=r.attempts,
        error_reason=r.error_reason,
        last_error=r.last_error,
        sha256=r.sha256,
        format=r.format,
        width=r.width,
        height=r.height,
        phash=from_signed(r.phash) if r.phash is not None else None,
        decision=r.decision,
        duplicate_of=r.duplicate_of,
        score=r.score,
        stage=r.stage,
        evidence=r.evidence,
        processed_by=r.processed_by,
        moderation=r.moderation,
        reasons=r.reasons,
        moderation_signals=r.signals,
        ocr_text=r.ocr_text,
        caption=r.caption,
        meta=r.meta,
        labels=r.labels,
        colours=r.colours,
        clip_embedding=r.clip_embedding,
        ai_caption=r.ai_caption,
        writeback=r.writeback,
        indexed=bool(r.indexed),
        created_at=r.created_at,
        processed_at=r.processed_at,
    )
