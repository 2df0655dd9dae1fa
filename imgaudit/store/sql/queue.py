"""The queue over the images table.

Claiming is one short transaction: pick claimable ids in id order (``FOR UPDATE SKIP LOCKED`` where the
database has it, ``BEGIN IMMEDIATE`` on SQLite), mark them processing with a lease, commit. An item is
claimable when queued, when a retryable failure's back-off has passed, or when the lease of the worker
holding it has expired (the worker died).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, func, insert, or_, select, update

from imgaudit.store.encoding import real_uri
from imgaudit.store.schema import EventRow, ImageRow, utcnow
from imgaudit.store.sql.base import SqlBase
from imgaudit.store.writes import enqueue_row, refused_event
from imgaudit.types import Claimed, Enqueued, ImageRef, Lease, Status

ENQUEUE_CHUNK = 1000  # entries per INSERT: duplicates within one chunk count once, across chunks as skips


class SqlQueue(SqlBase):
    def enqueue(self, refs: Iterable[ImageRef], source: str) -> Enqueued:
        """Add new items; items already known (same URI) are skipped, which makes ingest resumable.

        An entry its source refused (``ref.error_reason``), or one the database cannot hold (a NUL, a
        lone surrogate in a URL or key), is recorded at once as a permanent failure of its own, with its
        reason, so one bad entry never costs the others and ``status`` shows it like any failure."""
        total = Enqueued(0, 0)
        chunk: list[ImageRef] = []
        for ref in refs:
            chunk.append(ref)
            if len(chunk) >= ENQUEUE_CHUNK:
                total = _plus(total, self._enqueue_chunk(chunk, source))
                chunk = []
        if chunk:
            total = _plus(total, self._enqueue_chunk(chunk, source))
        return total

    def _enqueue_chunk(self, chunk: list[ImageRef], source: str) -> Enqueued:
        now = utcnow()
        rows = {row["uri_hash"]: row for row in (enqueue_row(r, source, now) for r in chunk)}
        # INSERT ... ON CONFLICT DO NOTHING: concurrent enqueues of the same items (two feeders, a
        # re-run while a worker feeds) skip what the other inserted instead of failing the chunk.
        stmt = (
            self._insert(ImageRow)
            .values(list(rows.values()))
            .on_conflict_do_nothing(index_elements=["uri_hash"])
            .returning(ImageRow.id, ImageRow.error_reason, ImageRow.last_error)
        )
        with self._writing() as s:
            new = s.execute(stmt).all()
            failed = [r for r in new if r.error_reason is not None]
            if failed:
                s.execute(
                    insert(EventRow), [refused_event(r.id, r.error_reason, r.last_error, now) for r in failed]
                )
        return Enqueued(
            len(new) - len(failed), len(chunk) - len(new), Counter(r.error_reason for r in failed)
        )

    def claim(self, worker: str, limit: int, lease_seconds: int) -> list[Claimed]:
        now = utcnow()
        claimable = or_(
            and_(ImageRow.status.in_([Status.QUEUED, Status.FAILED_RETRYABLE]), ImageRow.available_at <= now),
            and_(ImageRow.status == Status.PROCESSING, ImageRow.lease_until < now),
        )
        with self._writing() as s:
            q = select(ImageRow).where(claimable).order_by(ImageRow.id).limit(limit)
            if self._postgres:
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
        with self._reading() as s:
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
        # Both are set on every row the query kept (a processing row has a claimer and a lease).
        return [Lease(cast(str, w), int(n), cast(datetime, until)) for w, n, until in rows]

    def expire_leases(self, workers: Sequence[str]) -> int:
        """End now the leases of ``workers`` (processes known to be gone), so the next claim takes their
        items instead of waiting out the lease. As after an expiry, the interrupted attempt counts: an
        image that kills its process still runs out of attempts."""
        if not workers:
            return 0
        now = utcnow()
        held = and_(ImageRow.status == Status.PROCESSING, ImageRow.claimed_by.in_(list(workers)))
        with self._writing() as s:
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

    def release(self, ids: Sequence[int]) -> None:
        """Give claimed items back untouched (graceful shutdown): the attempt does not count."""
        if not ids:
            return
        with self._writing() as s:
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
        with self._writing() as s:
            res = s.execute(
                update(ImageRow)
                .where(
                    ImageRow.id.in_(list(ids)),
                    ImageRow.status == Status.PROCESSING,
                    ImageRow.claimed_by == worker,
                )
                .values(lease_until=now + timedelta(seconds=lease_seconds))
            )
            return cast(CursorResult[Any], res).rowcount or 0  # an UPDATE's result has one

    def requeue_failed(self, permanent: bool = False) -> int:
        """Queue failed items again. Entries refused at enqueue (the only failures with no attempt) stay:
        trying them cannot succeed, and would read an ``outside_root`` link's target after all; an ingest
        rerun with the cause fixed (``fetch.cdn_base``, ``sources.follow_symlinks``) adds them anew."""
        statuses = [Status.FAILED_RETRYABLE] + ([Status.FAILED_PERMANENT] if permanent else [])
        with self._writing() as s:
            res = s.execute(
                update(ImageRow)
                .where(ImageRow.status.in_(statuses), ImageRow.attempts > 0)
                .values(status=Status.QUEUED, attempts=0, available_at=utcnow(), updated_at=utcnow())
            )
            return cast(CursorResult[Any], res).rowcount or 0  # an UPDATE's result has one


def _plus(a: Enqueued, b: Enqueued) -> Enqueued:
    return Enqueued(a.added + b.added, a.skipped + b.skipped, a.refusals + b.refusals)
