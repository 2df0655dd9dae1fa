"""The store: one interface over the images table, used by the pipeline, services and entry points.

Claiming is one short transaction: pick claimable ids in id order (``FOR UPDATE SKIP LOCKED`` where the
database has it, ``BEGIN IMMEDIATE`` on SQLite), mark them processing with a lease, commit. An item is
claimable when queued, when a retryable failure's back-off has passed, or when the lease of the worker
holding it has expired (the worker died).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol
from urllib.parse import unquote_to_bytes

import numpy as np
from sqlalchemy import and_, case, delete, func, insert, or_, select, text, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from imgaudit.errors import ImgauditError, NotFound
from imgaudit.signals.hashes import from_signed, to_signed
from imgaudit.store.db import make_engine, migrate
from imgaudit.store.schema import EventRow, ImageRow, IndexLogRow, SearchLogRow, SourceStateRow, utcnow
from imgaudit.types import (
    DedupSignals,
    ImageRef,
    ModerationSignals,
    ModerationVerdict,
    Status,
    Verdict,
    moderation_signals_json,
    reasons_json,
)

RETRY_BACKOFF_SECONDS = 30.0
KEY_MAX = 255  # images.external_key is VARCHAR(255)
DEDUP_LOCK_KEY = 0x1A6A0D17  # PostgreSQL advisory lock serialising dedup decisions across workers


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    ref: ImageRef
    attempts: int


@dataclass(frozen=True, slots=True)
class Lease:
    """The items one claimer holds and has not finished or given back."""

    worker: str
    items: int
    until: datetime  # the latest of their leases


class Enqueued(tuple[int, int]):
    """``(added, skipped)``, so callers unpacking two numbers keep working, plus the entries recorded as
    failed at once (``refusals``: reason -> count): these are in neither number."""

    refusals: Counter[str]

    def __new__(cls, added: int, skipped: int, refusals: Counter[str] | None = None) -> Enqueued:
        self = super().__new__(cls, (added, skipped))
        self.refusals = Counter(refusals or {})
        return self

    @property
    def added(self) -> int:
        return self[0]

    @property
    def skipped(self) -> int:
        return self[1]

    @property
    def refused(self) -> int:
        return sum(self.refusals.values())


@dataclass(frozen=True, slots=True)
class ItemRecord:
    id: int
    source: str
    uri: str  # as stored: a path that is not valid UTF-8 is a ``file:`` URI (see ``stored_uri``)
    kind: str
    external_key: str | None
    status: str
    attempts: int
    error_reason: str | None
    last_error: str | None
    sha256: str | None
    format: str | None
    width: int | None
    height: int | None
    phash: int | None
    decision: str | None
    duplicate_of: int | None
    score: float | None
    stage: str | None
    evidence: dict[str, float] | None
    indexed: bool
    processed_by: str | None
    writeback: str | None
    created_at: datetime
    processed_at: datetime | None
    moderation: str | None = None  # pass | review | violate; None: moderation did not run
    reasons: list[dict[str, object]] | None = None
    moderation_signals: dict[str, object] | None = None
    ocr_text: str | None = None
    caption: str | None = None
    meta: dict[str, object] | None = None
    labels: list[list[float]] | None = None
    colours: list[list[object]] | None = None
    clip_embedding: bytes | None = None
    ai_caption: str | None = None

    def as_dict(self) -> dict[str, object]:
        d = {k: getattr(self, k) for k in self.__slots__}
        d["phash"] = f"{self.phash:016x}" if self.phash is not None else None
        d.pop("clip_embedding", None)  # binary, and only for the search indexes
        for key in ("created_at", "processed_at"):
            d[key] = d[key].isoformat() if d[key] else None
        return d


@dataclass(frozen=True, slots=True)
class Facets:
    """The filterable attributes of an item (search filters many candidates before fetching a page)."""

    id: int
    status: str
    decision: str | None
    moderation: str | None
    source: str
    has_text: bool
    created_at: datetime
    labels: list[list[float]] | None


@dataclass(frozen=True, slots=True)
class Completion:
    """What the pipeline learned about one claimed item."""

    id: int
    signals: DedupSignals
    verdict: Verdict
    format: str
    width: int
    height: int
    indexed: bool
    moderation_signals: ModerationSignals | None = None
    moderation: ModerationVerdict | None = None
    labels: list[list[float]] | None = None  # top ImageNet [index, probability], for search
    colours: list[tuple[str, str, float]] | None = None  # dominant colours (english, chinese, share)
    clip_embedding: np.ndarray | None = None  # image-text embedding, when a CLIP model is configured
    ai_caption: str | None = None  # the remote captioner's description, when enabled


@dataclass(frozen=True, slots=True)
class Failure:
    id: int
    error: ImgauditError


@dataclass(frozen=True, slots=True)
class IndexChange:
    seq: int
    image_id: int
    op: str  # add | remove
    phash: int | None
    embedding: np.ndarray | None


def uri_hash(uri: str) -> str:
    """The item's identity. A path holding surrogate escapes (a file name that is not valid UTF-8) hashes
    as its real bytes, and every other string as its UTF-8, as always, so existing stores still match."""
    try:
        raw = uri.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no file name decodes to: any injective form will do
        raw = uri.encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()


RAW_PATH_PREFIX = "file:"
"""Marks a stored path written as a ``file:`` URI with ``%XX`` escapes (see ``stored_uri``)."""


def stored_uri(uri: str, kind: str) -> str:
    """The text the store keeps for ``uri``: itself, except a path that is not valid UTF-8 (or that starts
    with ``file:``), which becomes ``file:`` + the path with each undecodable byte as ``%XX`` and ``%`` as
    ``%25``: no database text column holds surrogate escapes, and ``real_uri`` gives the exact path back.
    Any other string that cannot be stored is returned unchanged (``_storable`` says no)."""
    if kind != "path" or (_storable(uri) and not uri.startswith(RAW_PATH_PREFIX)):
        return uri
    out = []
    for ch in uri:
        if ch == "%":
            out.append("%25")
        elif "\udc80" <= ch <= "\udcff":  # os.fsdecode's escape of the byte ch - 0xdc00
            out.append(f"%{ord(ch) - 0xDC00:02X}")
        else:
            out.append(ch)
    return RAW_PATH_PREFIX + "".join(out)


def real_uri(stored: str, kind: str) -> str:
    """The inverse of ``stored_uri``: the path to open (with surrogate escapes where it is not UTF-8)."""
    if kind == "path" and stored.startswith(RAW_PATH_PREFIX):
        return unquote_to_bytes(stored[len(RAW_PATH_PREFIX) :]).decode("utf-8", "surrogateescape")
    return stored


def _storable(text_: str) -> bool:
    """Whether a database text column takes ``text_`` as it is (no NUL, no lone surrogate)."""
    if "\x00" in text_:
        return False
    try:
        text_.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def pack_embedding(v: np.ndarray) -> bytes:
    return np.asarray(v, np.float16).tobytes()


def unpack_embedding(b: bytes) -> np.ndarray:
    return np.frombuffer(b, np.float16).astype(np.float32)


class Store(Protocol):
    def enqueue(self, refs: Iterable[ImageRef], source: str) -> Enqueued: ...
    def claim(self, worker: str, limit: int, lease_seconds: int) -> list[Claimed]: ...
    def leases(self) -> list[Lease]: ...
    def expire_leases(self, workers: Sequence[str]) -> int: ...
    def decision_lock(self) -> contextlib.AbstractContextManager[DecisionTx]: ...
    def finish(
        self,
        completions: Sequence[Completion],
        failures: Sequence[Failure],
        max_attempts: int,
        worker: str | None = None,
    ) -> list[int]: ...
    def release(self, ids: Sequence[int]) -> None: ...
    def extend_leases(self, worker: str, ids: Sequence[int], lease_seconds: int) -> int: ...
    def find_exact(self, sha256: str, pixel_sha256: str) -> tuple[int, str] | None: ...
    def index_changes(self, after: int) -> list[IndexChange]: ...
    def last_index_seq(self) -> int: ...
    def get(self, item_id: int) -> ItemRecord: ...
    def get_many(self, ids: Sequence[int]) -> dict[int, ItemRecord]: ...
    def facets(self, ids: Sequence[int]) -> dict[int, Facets]: ...
    def find_by_uri(self, uri: str) -> ItemRecord | None: ...
    def iter_indexed(self, batch: int = 10_000) -> Iterator[tuple[np.ndarray, list[int], np.ndarray]]: ...
    def count_indexed(self) -> int: ...
    def counts(self, since: datetime | None = None) -> dict[str, dict[str, int]]: ...
    def activity(self, since: datetime | None = None) -> dict[str, object]: ...
    def duplicate_pairs(self, limit: int | None = None) -> list[tuple[ItemRecord, ItemRecord]]: ...
    def requeue_failed(self, permanent: bool = False) -> int: ...
    def reset(self) -> None: ...
    def get_cursor(self, name: str) -> str | None: ...
    def set_cursor(self, name: str, value: str) -> None: ...
    def pending_writebacks(self, limit: int) -> list[tuple[ItemRecord, str | None]]: ...
    def mark_written(self, ids: Sequence[int]) -> None: ...
    def events(self, item_id: int) -> list[dict[str, object]]: ...
    def find(self, key: str) -> ItemRecord | None: ...
    def search_feed(self, after: int, limit: int = 1000) -> list[tuple[int, ItemRecord]]: ...
    def copies_of(self, ids: Sequence[int]) -> dict[int, list[int]]: ...
    def last_search_seq(self) -> int: ...


class _ExternalMixin:
    """Cursors and write-back bookkeeping for external sources, and item history."""

    def get_cursor(self: SqlStore, name: str) -> str | None:  # type: ignore[misc]
        with self._session() as s:
            return s.scalar(select(SourceStateRow.value).where(SourceStateRow.name == name))

    def set_cursor(self: SqlStore, name: str, value: str) -> None:  # type: ignore[misc]
        now = utcnow()
        stmt = (
            self._insert(SourceStateRow)
            .values(name=name, value=value, updated_at=now)
            .on_conflict_do_update(index_elements=["name"], set_={"value": value, "updated_at": now})
        )
        with self._session() as s, s.begin():
            s.execute(stmt)

    def pending_writebacks(self: SqlStore, limit: int) -> list[tuple[ItemRecord, str | None]]:  # type: ignore[misc]
        """Finished external items whose verdict is not yet in the business table, with the external
        key of their original (for duplicates)."""
        original = aliased(ImageRow)
        with self._session() as s:
            rows = s.execute(
                # The original's key means something to the business table only if it came from it.
                select(
                    ImageRow, case((original.source == ImageRow.source, original.external_key), else_=None)
                )
                .join(original, ImageRow.duplicate_of == original.id, isouter=True)
                .where(ImageRow.writeback == "pending")
                .order_by(ImageRow.id)
                .limit(limit)
            ).all()
            return [(_record(r), key) for r, key in rows]

    def mark_written(self: SqlStore, ids: Sequence[int]) -> None:  # type: ignore[misc]
        if not ids:
            return
        now = utcnow()
        with self._session() as s, s.begin():
            s.execute(
                update(ImageRow).where(ImageRow.id.in_(list(ids))).values(writeback="done", updated_at=now)
            )
            for i in ids:
                s.add(EventRow(image_id=i, at=now, event="written_back"))

    def events(self: SqlStore, item_id: int) -> list[dict[str, object]]:  # type: ignore[misc]
        with self._session() as s:
            rows = s.scalars(select(EventRow).where(EventRow.image_id == item_id).order_by(EventRow.id))
            return [
                {"at": r.at.isoformat(), "event": r.event, "worker": r.worker, "detail": r.detail}
                for r in rows
            ]

    def find(self: SqlStore, key: str) -> ItemRecord | None:  # type: ignore[misc]
        """An item by id (digits), external key, or path/URL."""
        with self._session() as s:
            conds = [ImageRow.external_key == key, ImageRow.uri_hash == uri_hash(key)]
            if key.startswith(RAW_PATH_PREFIX):  # a path as stored (and printed) when it is not UTF-8
                conds.append(ImageRow.uri_hash == uri_hash(real_uri(key, "path")))
            if key.isdigit():
                conds.insert(0, ImageRow.id == int(key))
            row = s.scalars(select(ImageRow).where(or_(*conds)).order_by(ImageRow.id).limit(1)).first()
            return _record(row) if row else None


class SqlStore(_ExternalMixin):
    """The SQLAlchemy implementation: SQLite by default, PostgreSQL for many workers."""

    def __init__(self, url: str, *, auto_migrate: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        if auto_migrate:
            migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._skip_locked = self.engine.dialect.name == "postgresql"

    def close(self) -> None:
        self.engine.dispose()

    @property
    def _insert(self):
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert

    def _session(self) -> Session:
        return self._sessions()

    # -- queue -----------------------------------------------------------------------------------------

    def enqueue(self, refs: Iterable[ImageRef], source: str) -> Enqueued:
        """Add new items; items already known (same URI) are skipped, which makes ingest resumable.

        An entry its source refused (``ref.error_reason``), or one the database cannot hold (a NUL, a
        lone surrogate in a URL or key), is recorded at once as a permanent failure of its own, with its
        reason, so one bad entry never costs the others and ``status`` shows it like any failure."""
        added = skipped = 0
        refusals: Counter[str] = Counter()
        chunk: list[ImageRef] = []

        def flush() -> None:
            nonlocal added, skipped
            now = utcnow()
            # External rows are identified by their key (two rows may share an image URL).
            rows = {row["uri_hash"]: row for row in (_enqueue_row(r, source, now) for r in chunk)}
            # INSERT ... ON CONFLICT DO NOTHING: concurrent enqueues of the same items (two feeders, a
            # re-run while a worker feeds) skip what the other inserted instead of failing the chunk.
            stmt = (
                self._insert(ImageRow)
                .values(list(rows.values()))
                .on_conflict_do_nothing(index_elements=["uri_hash"])
                .returning(ImageRow.id, ImageRow.error_reason, ImageRow.last_error)
            )
            with self._session() as s, s.begin():
                new = s.execute(stmt).all()
                failed = [r for r in new if r.error_reason is not None]
                if failed:
                    s.execute(
                        insert(EventRow),
                        [
                            {
                                "image_id": r.id,
                                "at": now,
                                "event": Status.FAILED_PERMANENT.value,
                                "detail": f"refused at enqueue: {r.error_reason}: {r.last_error}",
                            }
                            for r in failed
                        ],
                    )
            refusals.update(r.error_reason for r in failed)
            added += len(new) - len(failed)
            skipped += len(chunk) - len(new)
            chunk.clear()

        for ref in refs:
            chunk.append(ref)
            if len(chunk) >= 1000:
                flush()
        if chunk:
            flush()
        return Enqueued(added, skipped, refusals)

    def claim(self, worker: str, limit: int, lease_seconds: int) -> list[Claimed]:
        now = utcnow()
        claimable = or_(
            and_(ImageRow.status.in_([Status.QUEUED, Status.FAILED_RETRYABLE]), ImageRow.available_at <= now),
            and_(ImageRow.status == Status.PROCESSING, ImageRow.lease_until < now),
        )
        with self._session() as s, s.begin():
            q = select(ImageRow).where(claimable).order_by(ImageRow.id).limit(limit)
            if self._skip_locked:
                q = q.with_for_update(skip_locked=True)
            rows = list(s.scalars(q))
            for row in rows:
                if row.status == Status.PROCESSING:
                    s.add(EventRow(image_id=row.id, at=now, event="lease_expired", worker=row.claimed_by))
                row.status = Status.PROCESSING
                row.claimed_by = worker
                row.lease_until = now + timedelta(seconds=lease_seconds)
                row.attempts += 1
                row.updated_at = now
                s.add(
                    EventRow(
                        image_id=row.id,
                        at=now,
                        event="claimed",
                        worker=worker,
                        detail=f"attempt {row.attempts}",
                    )
                )
            return [
                Claimed(r.id, ImageRef(real_uri(r.uri, r.kind), r.kind, r.external_key), r.attempts)
                for r in rows
            ]

    def leases(self) -> list[Lease]:
        """Who holds items right now (unexpired leases), with how many and until when."""
        now = utcnow()
        with self._session() as s:
            rows = s.execute(
                select(ImageRow.claimed_by, func.count(), func.max(ImageRow.lease_until))
                .where(
                    ImageRow.status == Status.PROCESSING,
                    ImageRow.claimed_by.is_not(None),
                    ImageRow.lease_until >= now,
                )
                .group_by(ImageRow.claimed_by)
                .order_by(ImageRow.claimed_by)
            ).all()
        return [Lease(w, int(n), until) for w, n, until in rows]

    def expire_leases(self, workers: Sequence[str]) -> int:
        """End now the leases of ``workers`` (processes known to be gone), so the next claim takes their
        items instead of waiting out the lease. As after an expiry, the interrupted attempt counts: an
        image that kills its process still runs out of attempts."""
        if not workers:
            return 0
        now = utcnow()
        held = and_(ImageRow.status == Status.PROCESSING, ImageRow.claimed_by.in_(list(workers)))
        with self._session() as s, s.begin():
            rows = s.execute(select(ImageRow.id, ImageRow.claimed_by).where(held).with_for_update()).all()
            if not rows:
                return 0
            s.execute(
                update(ImageRow)
                .where(held, ImageRow.id.in_([r.id for r in rows]))
                .values(lease_until=now, updated_at=now)
            )
            s.execute(
                insert(EventRow),
                [
                    {
                        "image_id": r.id,
                        "at": now,
                        "event": "claimer_gone",
                        "worker": r.claimed_by,
                        "detail": "the claiming process no longer runs; lease ended early",
                    }
                    for r in rows
                ],
            )
            return len(rows)

    @contextmanager
    def decision_lock(self) -> Iterator[DecisionTx]:
        """A transaction holding the store-wide dedup lock: at most one worker decides at a time, so two
        copies processed by two workers at once cannot both be called unique. Only the cheap part of a
        batch (replaying the index log, lookups, writing results) runs under it."""
        with self._session() as s, s.begin():
            if self.engine.dialect.name == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": DEDUP_LOCK_KEY})
            # SQLite: every transaction here starts with BEGIN IMMEDIATE, which is already exclusive.
            yield DecisionTx(s)

    def finish(
        self,
        completions: Sequence[Completion],
        failures: Sequence[Failure],
        max_attempts: int,
        worker: str | None = None,
    ) -> list[int]:
        """Write a batch's results in one transaction; returns the ids whose lease was lost."""
        with self.decision_lock() as tx:
            return tx.finish(completions, failures, max_attempts, worker)

    def index_changes(self, after: int) -> list[IndexChange]:
        with self._session() as s:
            return _index_changes(s, after)

    def last_index_seq(self) -> int:
        with self._session() as s:
            return int(s.scalar(select(func.coalesce(func.max(IndexLogRow.seq), 0))) or 0)

    def release(self, ids: Sequence[int]) -> None:
        """Give claimed items back untouched (graceful shutdown): the attempt does not count."""
        if not ids:
            return
        with self._session() as s, s.begin():
            s.execute(
                update(ImageRow)
                .where(ImageRow.id.in_(ids), ImageRow.status == Status.PROCESSING)
                .values(
                    status=Status.QUEUED,
                    claimed_by=None,
                    lease_until=None,
                    attempts=ImageRow.attempts - 1,
                    updated_at=utcnow(),
                )
            )

    def extend_leases(self, worker: str, ids: Sequence[int], lease_seconds: int) -> int:
        """Heartbeat: keep the items this worker still holds from being taken as abandoned."""
        if not ids:
            return 0
        now = utcnow()
        with self._session() as s, s.begin():
            res = s.execute(
                update(ImageRow)
                .where(
                    ImageRow.id.in_(list(ids)),
                    ImageRow.status == Status.PROCESSING,
                    ImageRow.claimed_by == worker,
                )
                .values(lease_until=now + timedelta(seconds=lease_seconds))
            )
            return res.rowcount or 0

    def requeue_failed(self, permanent: bool = False) -> int:
        """Queue failed items again. Entries refused at enqueue (the only failures with no attempt) stay:
        trying them cannot succeed, and would read an ``outside_root`` link's target after all; an ingest
        rerun with the cause fixed (``fetch.cdn_base``, ``sources.follow_symlinks``) adds them anew."""
        statuses = [Status.FAILED_RETRYABLE] + ([Status.FAILED_PERMANENT] if permanent else [])
        with self._session() as s, s.begin():
            res = s.execute(
                update(ImageRow)
                .where(ImageRow.status.in_(statuses), ImageRow.attempts > 0)
                .values(status=Status.QUEUED, attempts=0, available_at=utcnow(), updated_at=utcnow())
            )
            return res.rowcount or 0

    # -- lookups ---------------------------------------------------------------------------------------

    def find_exact(self, sha256: str, pixel_sha256: str) -> tuple[int, str] | None:
        """The original of a finished image with the same bytes (or else the same pixels)."""
        with self._session() as s:
            return _find_exact(s, sha256, pixel_sha256)

    def get(self, item_id: int) -> ItemRecord:
        rec = self.get_many([item_id]).get(item_id)
        if rec is None:
            raise NotFound(f"no image with id {item_id}")
        return rec

    def get_many(self, ids: Sequence[int]) -> dict[int, ItemRecord]:
        if not ids:
            return {}
        with self._session() as s:
            return {r.id: _record(r) for r in s.scalars(select(ImageRow).where(ImageRow.id.in_(list(ids))))}

    def facets(self, ids: Sequence[int]) -> dict[int, Facets]:
        """Just what search filters on, for many candidates: no JSON blobs but the small labels list."""
        if not ids:
            return {}
        with self._session() as s:
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
        with self._session() as s:
            row = s.scalars(select(ImageRow).where(ImageRow.uri_hash == uri_hash(uri))).first()
            return _record(row) if row else None

    def iter_indexed(self, batch: int = 10_000) -> Iterator[tuple[np.ndarray, list[int], np.ndarray]]:
        """(ids, phashes, embeddings) of everything that belongs in the indexes, in id order."""
        last = 0
        while True:
            with self._session() as s:
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
        with self._session() as s:
            return int(s.scalar(select(func.count()).where(ImageRow.indexed == 1)) or 0)

    def counts(self, since: datetime | None = None) -> dict[str, dict[str, int]]:
        """Current queue states, and decisions / deciding stages / failure reasons (of items processed
        since ``since`` when given)."""
        recent = ImageRow.processed_at >= since if since is not None else True

        def grouped(column, *where):
            q = select(column, func.count()).where(*where).group_by(column).order_by(func.count().desc())
            with self._session() as s:
                return {k: int(v) for k, v in s.execute(q).all()}

        return {
            "status": grouped(ImageRow.status),
            "decision": grouped(ImageRow.decision, ImageRow.decision.is_not(None), recent),
            "duplicate_stage": grouped(ImageRow.stage, ImageRow.decision == "duplicate", recent),
            "moderation": grouped(ImageRow.moderation, ImageRow.moderation.is_not(None), recent),
            "error": grouped(ImageRow.error_reason, ImageRow.error_reason.is_not(None), recent),
        }

    def activity(self, since: datetime | None = None) -> dict[str, object]:
        """Throughput over the last minute / hour / day, and per-worker totals (since ``since``)."""
        now = utcnow()
        windows = {"last_minute": 60, "last_hour": 3600, "last_day": 86400}
        out: dict[str, object] = {}
        with self._session() as s:
            done = (ImageRow.status.in_([Status.DONE, Status.FAILED_PERMANENT, Status.FAILED_RETRYABLE]),)
            for name, seconds in windows.items():
                n = s.scalar(
                    select(func.count()).where(
                        *done, ImageRow.processed_at >= now - timedelta(seconds=seconds)
                    )
                )
                out[name] = {"processed": int(n or 0), "per_minute": round(int(n or 0) / (seconds / 60), 2)}
            q = (
                select(ImageRow.processed_by, func.count(), func.max(ImageRow.processed_at))
                .where(ImageRow.processed_by.is_not(None))
                .group_by(ImageRow.processed_by)
                .order_by(func.count().desc())
            )
            if since is not None:
                q = q.where(ImageRow.processed_at >= since)
            out["workers"] = [
                {"worker": w, "processed": int(n), "last_at": at.isoformat() if at else None}
                for w, n, at in s.execute(q).all()
            ]
            claimed = s.execute(
                select(ImageRow.claimed_by, func.count())
                .where(ImageRow.status == Status.PROCESSING)
                .group_by(ImageRow.claimed_by)
            ).all()
            out["in_flight"] = {w: int(n) for w, n in claimed}
        return out

    def duplicate_pairs(self, limit: int | None = None) -> list[tuple[ItemRecord, ItemRecord]]:
        original = aliased(ImageRow)
        with self._session() as s:
            q = (
                select(ImageRow, original)
                .join(original, ImageRow.duplicate_of == original.id)
                .where(ImageRow.decision == "duplicate")
                .order_by(ImageRow.id)
            )
            if limit:
                q = q.limit(limit)
            return [(_record(a), _record(b)) for a, b in s.execute(q).all()]

    def copies_of(self, ids: Sequence[int]) -> dict[int, list[int]]:
        """The images recorded as duplicates of each of ``ids`` (not indexed themselves), in id order."""
        out: dict[int, list[int]] = {}
        if not ids:
            return out
        with self._session() as s:
            rows = s.execute(
                select(ImageRow.duplicate_of, ImageRow.id)
                .where(ImageRow.duplicate_of.in_(list(ids)), ImageRow.status == Status.DONE)
                .order_by(ImageRow.id)
            ).all()
        for original, copy in rows:
            out.setdefault(int(original), []).append(int(copy))
        return out

    def search_feed(self, after: int, limit: int = 1000) -> list[tuple[int, ItemRecord]]:
        """Finished items logged after sequence ``after`` (the search indexes' cursor), oldest first;
        an item finished twice appears twice (the later entry wins)."""
        with self._session() as s:
            rows = s.execute(
                select(SearchLogRow.seq, ImageRow)
                .join(ImageRow, ImageRow.id == SearchLogRow.image_id)
                .where(SearchLogRow.seq > after)
                .order_by(SearchLogRow.seq)
                .limit(limit)
            ).all()
            return [(int(seq), _record(r)) for seq, r in rows]

    def last_search_seq(self) -> int:
        with self._session() as s:
            return int(s.scalar(select(func.coalesce(func.max(SearchLogRow.seq), 0))) or 0)

    def reset(self) -> None:
        with self._session() as s, s.begin():
            s.execute(update(ImageRow).values(duplicate_of=None))
            s.execute(delete(ImageRow))
            s.execute(delete(IndexLogRow))
            s.execute(delete(SearchLogRow))
            s.execute(delete(EventRow))
            s.execute(delete(SourceStateRow))


def _record(r: ImageRow) -> ItemRecord:
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


class DecisionTx:
    """The dedup decision step of one batch, inside ``SqlStore.decision_lock``."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def index_changes(self, after: int) -> list[IndexChange]:
        return _index_changes(self.s, after)

    def find_exact(self, sha256: str, pixel_sha256: str) -> tuple[int, str] | None:
        return _find_exact(self.s, sha256, pixel_sha256)

    def exact_finder(self, sha256s: Sequence[str], pixel_sha256s: Sequence[str]):
        """``find_exact`` for a whole batch from one query: returns the same answers, one round trip."""
        rows = self.s.execute(
            select(ImageRow.id, ImageRow.duplicate_of, ImageRow.sha256, ImageRow.pixel_sha256)
            .where(
                ImageRow.status == Status.DONE,
                or_(ImageRow.sha256.in_(set(sha256s)), ImageRow.pixel_sha256.in_(set(pixel_sha256s))),
            )
            .order_by(ImageRow.id)
        ).all()
        by_bytes: dict[str, int] = {}
        by_pixels: dict[str, int] = {}
        for r in rows:  # lowest id first, as in find_exact
            by_bytes.setdefault(r.sha256, r.duplicate_of or r.id)
            by_pixels.setdefault(r.pixel_sha256, r.duplicate_of or r.id)

        def find(sha256: str, pixel_sha256: str) -> tuple[int, str] | None:
            if sha256 in by_bytes:
                return by_bytes[sha256], "exact_bytes"
            if pixel_sha256 in by_pixels:
                return by_pixels[pixel_sha256], "exact_pixels"
            return None

        return find

    def last_seq(self) -> int:
        self.s.flush()
        return int(self.s.scalar(select(func.coalesce(func.max(IndexLogRow.seq), 0))) or 0)

    def count_indexed(self) -> int:
        return int(self.s.scalar(select(func.count()).where(ImageRow.indexed == 1)) or 0)

    def finish(
        self,
        completions: Sequence[Completion],
        failures: Sequence[Failure],
        max_attempts: int,
        worker: str | None = None,
    ) -> list[int]:
        """Record results; an item is only written while still claimed by ``worker`` (when given): a
        worker whose lease expired must not overwrite the result of the worker that took over.

        A handful of statements per batch, whatever its size: one locking read of the rows still ours,
        then executemany updates and inserts (one round trip each with psycopg's pipelining)."""
        s, now = self.s, utcnow()
        ids = [c.id for c in completions] + [f.id for f in failures]
        if not ids:
            return []
        q = select(ImageRow.id, ImageRow.attempts, ImageRow.kind).where(
            ImageRow.id.in_(ids), ImageRow.status == Status.PROCESSING
        )
        if worker:
            q = q.where(ImageRow.claimed_by == worker)
        # FOR UPDATE: a claim racing for an expired lease skips these rows until we commit.
        ours = {r.id: r for r in s.execute(q.with_for_update())}
        lost = [i for i in ids if i not in ours]
        updates: list[dict[str, object]] = []
        log_rows: list[dict[str, object]] = []
        search_rows: list[dict[str, object]] = []
        events: list[dict[str, object]] = []
        for c in completions:
            if c.id not in ours:
                continue
            v = c.verdict
            updates.append(
                {
                    "id": c.id,
                    "status": Status.DONE,
                    "sha256": c.signals.sha256,
                    "pixel_sha256": c.signals.pixel_sha256,
                    "phash": to_signed(c.signals.phash),
                    "embedding": pack_embedding(c.signals.embedding),
                    "format": c.format,
                    "width": c.width,
                    "height": c.height,
                    "decision": v.decision.value,
                    "duplicate_of": v.duplicate_of,
                    "score": v.score,
                    "stage": v.stage.value,
                    "evidence": _finite(v.detail),
                    "moderation": c.moderation.decision.value if c.moderation else None,
                    "reasons": _json_safe(reasons_json(c.moderation)) if c.moderation else None,
                    "signals": _json_safe(moderation_signals_json(c.moderation_signals))
                    if c.moderation_signals
                    else None,
                    "ocr_text": "\n".join(ln.text for ln in c.moderation_signals.ocr)
                    if c.moderation_signals and c.moderation_signals.ocr
                    else None,
                    "labels": c.labels,
                    "colours": [list(x) for x in c.colours] if c.colours else None,
                    "clip_embedding": pack_embedding(c.clip_embedding)
                    if c.clip_embedding is not None
                    else None,
                    "ai_caption": _printable(c.ai_caption) if c.ai_caption else None,
                    "indexed": int(c.indexed),
                    "error_reason": None,
                    "last_error": None,
                    "claimed_by": None,
                    "lease_until": None,
                    "processed_at": now,
                    "processed_by": worker,
                    "updated_at": now,
                    "writeback": "pending" if ours[c.id].kind == "key" else None,
                }
            )
            if c.indexed:
                log_rows.append({"image_id": c.id, "op": "add", "at": now})
            search_rows.append({"image_id": c.id})
            of = f" of #{v.duplicate_of}" if v.duplicate_of else ""
            if c.moderation is not None:
                of += f"; moderation {c.moderation.decision.value}"
                if c.moderation.reasons:
                    of += ": " + "; ".join(f"{r.category}: {r.message}" for r in c.moderation.reasons[:5])
            events.append(
                {
                    "image_id": c.id,
                    "at": now,
                    "event": "done",
                    "worker": worker,
                    "detail": f"{v.decision.value} ({v.stage.value}){of}",
                }
            )
        failed: list[dict[str, object]] = []
        for f in failures:
            row = ours.get(f.id)
            if row is None:
                continue
            permanent = not f.error.retryable or row.attempts >= max_attempts
            status = Status.FAILED_PERMANENT if permanent else Status.FAILED_RETRYABLE
            message = _printable(f.error.message)[:2000]
            failed.append(
                {
                    "id": f.id,
                    "status": status,
                    "error_reason": f.error.reason,
                    "last_error": message,
                    "claimed_by": None,
                    "lease_until": None,
                    "available_at": now
                    + timedelta(seconds=RETRY_BACKOFF_SECONDS * 2 ** max(row.attempts - 1, 0)),
                    "processed_at": now,
                    "processed_by": worker,
                    "updated_at": now,
                    # Only a final verdict goes back to a business table; retryable failures are retried.
                    "writeback": "pending" if row.kind == "key" and permanent else None,
                }
            )
            events.append(
                {
                    "image_id": f.id,
                    "at": now,
                    "event": status.value,
                    "worker": worker,
                    "detail": f"{f.error.reason}: {message}",
                }
            )
        for rows in (updates, failed):
            if rows:
                s.execute(update(ImageRow), rows)  # executemany by primary key
        if log_rows:
            s.execute(insert(IndexLogRow), log_rows)
        if search_rows:
            s.execute(insert(SearchLogRow), search_rows)
        if events:
            s.execute(insert(EventRow), events)
        return lost


def _printable(text_: str) -> str:
    """PostgreSQL text cannot hold NUL, and no database text holds a lone surrogate (a file name that is
    not UTF-8, quoted in an error message or a caption): both are escaped (``\\x00``, ``\\xff``) so
    that one odd value cannot fail a batch."""
    text_ = text_.replace("\x00", "\\x00")
    if _storable(text_):
        return text_
    try:
        raw = text_.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text_.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def _enqueue_row(r: ImageRef, source: str, now: datetime) -> dict[str, object]:
    """The images row of a new entry: queued, or failed at once when refused or not storable."""
    identity = f"key:{source}:{r.external_key}" if r.kind == "key" else r.uri
    uri = stored_uri(r.uri, r.kind)
    reason, message = r.error_reason, r.error_message
    # A key not stored exactly (cut, escaped) would name another business row, or none.
    key_exact = r.external_key is None or (_storable(r.external_key) and len(r.external_key) <= KEY_MAX)
    if reason is None and not _storable(uri):
        reason, message = "bad_uri", f"cannot be stored as text (NUL or invalid Unicode): {r.uri!r}"
    elif reason is None and not key_exact:
        reason, message = "bad_key", f"external key longer than {KEY_MAX} or not text: {r.external_key!r}"
    return dict(
        source=source,
        kind=r.kind,
        uri=uri if _storable(uri) else _printable(uri),
        uri_hash=uri_hash(identity),
        external_key=_printable(r.external_key)[:KEY_MAX] if r.external_key is not None else None,
        status=Status.QUEUED if reason is None else Status.FAILED_PERMANENT,
        attempts=0,
        error_reason=reason[:64] if reason else None,
        last_error=_printable(message or reason or "")[:2000] if reason else None,
        available_at=now,
        created_at=now,
        updated_at=now,
        processed_at=now if reason else None,
        writeback="pending" if reason and r.kind == "key" and key_exact else None,  # its on_failure
        indexed=0,
        caption=_printable(r.caption)[:20_000] if r.caption else None,
        meta=_json_safe(r.meta) if r.meta else None,
    )


def _json_safe(value: object) -> object:
    """NaN/infinity become null and NUL characters are escaped: PostgreSQL's JSON refuses both."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _printable(value)
    if isinstance(value, dict):
        return {_printable(str(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _finite(detail: dict[str, float]) -> dict[str, float] | None:
    """JSON on PostgreSQL refuses NaN and infinities."""
    import math

    clean = {k: v for k, v in detail.items() if not (isinstance(v, float) and not math.isfinite(v))}
    return clean or None


def _find_exact(s: Session, sha256: str, pixel_sha256: str) -> tuple[int, str] | None:
    for column, value, stage in (
        (ImageRow.sha256, sha256, "exact_bytes"),
        (ImageRow.pixel_sha256, pixel_sha256, "exact_pixels"),
    ):
        row = s.execute(
            select(ImageRow.id, ImageRow.duplicate_of)
            .where(column == value, ImageRow.status == Status.DONE)
            .order_by(ImageRow.id)
            .limit(1)
        ).first()
        if row is not None:
            return (row.duplicate_of or row.id), stage
    return None


def _index_changes(s: Session, after: int) -> list[IndexChange]:
    rows = s.execute(
        select(IndexLogRow.seq, IndexLogRow.image_id, IndexLogRow.op, ImageRow.phash, ImageRow.embedding)
        .join(ImageRow, ImageRow.id == IndexLogRow.image_id, isouter=True)
        .where(IndexLogRow.seq > after)
        .order_by(IndexLogRow.seq)
    ).all()
    return [
        IndexChange(
            r.seq,
            r.image_id,
            r.op,
            from_signed(r.phash) if r.phash is not None else None,
            unpack_embedding(r.embedding) if r.embedding is not None else None,
        )
        for r in rows
    ]
