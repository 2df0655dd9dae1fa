"""Dedup decisions: the store-wide decision lock, the batch's write of results, the index log."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import func, insert, or_, select, text, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from imgaudit.signals.hashes import from_signed
from imgaudit.store.encoding import unpack_embedding
from imgaudit.store.outages import unavailable_on_outage
from imgaudit.store.ports import ExactFinder
from imgaudit.store.schema import EventRow, ImageRow, IndexLogRow, SearchLogRow, utcnow
from imgaudit.store.sql.base import SqlBase
from imgaudit.store.sql.items import indexed_count
from imgaudit.store.writes import done_event, done_values, failed_event, failed_values
from imgaudit.types import Completion, Failure, IndexChange, Status

DEDUP_LOCK_KEY = 0x1A6A0D17  # PostgreSQL advisory lock serialising dedup decisions across workers


class SqlDecisions(SqlBase):
    @contextmanager
    def decision_lock(self) -> Iterator[SqlDecisionTx]:
        """A transaction holding the store-wide dedup lock: at most one worker decides at a time, so two
        copies processed by two workers at once cannot both be called unique. Only the cheap part of a
        batch (replaying the index log, lookups, writing results) runs under it."""
        with self._writing() as s:
            if self._postgres:
                s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": DEDUP_LOCK_KEY})
            # SQLite: every transaction here starts with BEGIN IMMEDIATE, which is already exclusive.
            yield SqlDecisionTx(s)

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

    def find_exact(self, sha256: str, pixel_sha256: str) -> tuple[int, str] | None:
        """The original of a finished image with the same bytes (or else the same pixels)."""
        with self._reading() as s:
            return _find_exact(s, sha256, pixel_sha256)

    def index_changes(self, after: int) -> list[IndexChange]:
        with self._reading() as s:
            return _index_changes(s, after)

    def last_index_seq(self) -> int:
        with self._reading() as s:
            return _last_index_seq(s)


class SqlDecisionTx:
    """The dedup decision step of one batch, inside ``SqlDecisions.decision_lock``. Its methods report
    an outage as ``StoreUnavailable`` themselves, so a caller inside the lock sees what callers outside do."""

    def __init__(self, session: Session) -> None:
        self.s = session

    @unavailable_on_outage()
    def index_changes(self, after: int) -> list[IndexChange]:
        return _index_changes(self.s, after)

    @unavailable_on_outage()
    def find_exact(self, sha256: str, pixel_sha256: str) -> tuple[int, str] | None:
        return _find_exact(self.s, sha256, pixel_sha256)

    @unavailable_on_outage()
    def exact_finder(self, sha256s: Sequence[str], pixel_sha256s: Sequence[str]) -> ExactFinder:
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

    @unavailable_on_outage()
    def last_seq(self) -> int:
        self.s.flush()
        return _last_index_seq(self.s)

    @unavailable_on_outage()
    def count_indexed(self) -> int:
        return indexed_count(self.s)

    @unavailable_on_outage()
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
        ids = [c.id for c in completions] + [f.id for f in failures]
        if not ids:
            return []
        now = utcnow()
        ours = self._still_ours(ids, worker)
        done = [c for c in completions if c.id in ours]
        failed = [
            (f, failed_values(f, ours[f.id].attempts, ours[f.id].kind, max_attempts, worker, now))
            for f in failures
            if f.id in ours
        ]
        # Rows first (verdicts, signals, write-back), then the logs that index replicas and search
        # follow, then the history: all in this transaction, so a reader sees all of it or none.
        self._update_rows([done_values(c, ours[c.id].kind, worker, now) for c in done])
        self._update_rows([values for _, values in failed])
        self._log_for_index([c for c in done if c.indexed], now)
        self._log_for_search(done)
        events = [done_event(c, worker, now) for c in done]
        self._add_events(events + [failed_event(values, f, worker, now) for f, values in failed])
        return [i for i in ids if i not in ours]

    def _still_ours(self, ids: list[int], worker: str | None) -> dict[int, Row[int, int, str]]:
        """``id -> (id, attempts, kind)`` of the rows among ``ids`` still processing (by ``worker``), locked:
        a claim racing for an expired lease skips these rows until we commit."""
        q = select(ImageRow.id, ImageRow.attempts, ImageRow.kind).where(
            ImageRow.id.in_(ids), ImageRow.status == Status.PROCESSING
        )
        if worker:
            q = q.where(ImageRow.claimed_by == worker)
        return {r.id: r for r in self.s.execute(q.with_for_update())}

    def _update_rows(self, rows: list[dict[str, object]]) -> None:
        if rows:
            self.s.execute(update(ImageRow), rows)  # executemany by primary key

    def _log_for_index(self, indexed: list[Completion], now: datetime) -> None:
        if indexed:
            self.s.execute(insert(IndexLogRow), [{"image_id": c.id, "op": "add", "at": now} for c in indexed])

    def _log_for_search(self, done: list[Completion]) -> None:
        if done:
            self.s.execute(insert(SearchLogRow), [{"image_id": c.id} for c in done])

    def _add_events(self, events: list[dict[str, object]]) -> None:
        if events:
            self.s.execute(insert(EventRow), events)


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


def _last_index_seq(s: Session) -> int:
    return int(s.scalar(select(func.coalesce(func.max(IndexLogRow.seq), 0))) or 0)
