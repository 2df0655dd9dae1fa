"""SQLAlchemy 2 schema. Portable between SQLite and PostgreSQL: ids are BIGINT (INTEGER on SQLite so
that it is the rowid), hashes are signed BIGINT, times are timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

Id = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC; always gives back aware datetimes (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class ImageRow(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64), default="")
    kind: Mapped[str] = mapped_column(String(8))  # path | url | key
    uri: Mapped[str] = mapped_column(Text)
    uri_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of uri: indexable on any DB
    external_key: Mapped[str | None] = mapped_column(String(255), index=True)

    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    pixel_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    format: Mapped[str | None] = mapped_column(String(16))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    phash: Mapped[int | None] = mapped_column(BigInteger)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)  # float16 descriptor

    status: Mapped[str] = mapped_column(String(20), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_reason: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    available_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    decision: Mapped[str | None] = mapped_column(String(16))
    duplicate_of: Mapped[int | None] = mapped_column(Id, ForeignKey("images.id"), index=True)
    score: Mapped[float | None] = mapped_column(Float)
    stage: Mapped[str | None] = mapped_column(String(16))
    evidence: Mapped[dict[str, float] | None] = mapped_column(JSON)  # the verdict's detail
    indexed: Mapped[bool] = mapped_column(Integer, default=0)  # in the vector/hash indexes

    moderation: Mapped[str | None] = mapped_column(String(8))  # pass | review | violate
    reasons: Mapped[list[dict[str, object]] | None] = mapped_column(JSON)
    signals: Mapped[dict[str, object] | None] = mapped_column(JSON)  # OCR lines, codes, scores, labels
    ocr_text: Mapped[str | None] = mapped_column(Text)
    caption: Mapped[str | None] = mapped_column(Text)  # title / description given by the source
    meta: Mapped[dict[str, object] | None] = mapped_column(JSON)  # other fields given by the source
    labels: Mapped[list[list[float]] | None] = mapped_column(JSON)  # top ImageNet [index, probability]
    colours: Mapped[list[list[object]] | None] = mapped_column(JSON)  # [english, chinese, share]
    clip_embedding: Mapped[bytes | None] = mapped_column(LargeBinary)  # float16, when a CLIP is configured
    ai_caption: Mapped[str | None] = mapped_column(Text)  # from the remote captioner, when enabled

    processed_by: Mapped[str | None] = mapped_column(String(128))
    writeback: Mapped[str | None] = mapped_column(String(16))  # external sources: pending | done

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_images_claim", "status", "available_at", "id"),
        Index("ix_images_indexed", "indexed", "id"),
        Index("ix_images_processed", "processed_at"),
        Index("ix_images_writeback", "writeback", "id"),
        Index("ix_images_moderation", "moderation", "id"),
    )


class IndexLogRow(Base):
    """Append-only log of index membership changes. Every worker keeps its in-memory indexes as a view
    of this log: it applies the entries after the last sequence number it has seen."""

    __tablename__ = "index_log"

    seq: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(Id)
    op: Mapped[str] = mapped_column(String(8))  # add | remove
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = ({"sqlite_autoincrement": True},)  # never reuse a sequence number


class SearchLogRow(Base):
    """Append-only log of finished items, in the order they finished: the search indexes (text space,
    BM25) follow it from their own cursor, so workers never write to them."""

    __tablename__ = "search_log"

    seq: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(Id)

    __table_args__ = ({"sqlite_autoincrement": True},)


class EventRow(Base):
    """What happened to an item, for ``imgaudit status KEY``."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(Id, index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    event: Mapped[str] = mapped_column(String(24))
    worker: Mapped[str | None] = mapped_column(String(128))
    detail: Mapped[str | None] = mapped_column(Text)


class SourceStateRow(Base):
    """Per-source cursors (e.g. the last key read from an external table)."""

    __tablename__ = "source_state"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
