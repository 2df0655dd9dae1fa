"""The store's in-memory twin: every port of ``Store`` over Python dicts, for tests and one-off runs.

It keeps what the SQL store's rows and logs keep and answers exactly as ``SqlStore`` does (the
conformance suite in ``tests/conformance`` runs both): same ids in insertion order, same refusals,
attempts, back-off, lease rules, events and sequence numbers (which, as with ``AUTOINCREMENT``, are never
reused, even after ``reset``). One re-entrant lock guards the state; ``decision_lock`` holds it for the
whole decision, which serialises deciders as the database lock does, and undoes the decision's writes
when the block raises, as the rolled-back transaction would.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from imgaudit.errors import NotFound
from imgaudit.signals.hashes import from_signed
from imgaudit.store.encoding import RAW_PATH_PREFIX, real_uri, unpack_embedding, uri_hash
from imgaudit.store.ports import ExactFinder, Store
from imgaudit.store.schema import utcnow
from imgaudit.store.writes import (
    done_event,
    done_values,
    enqueue_row,
    failed_event,
    failed_values,
    refused_event,
)
from imgaudit.types import (
    Claimed,
    Completion,
    Enqueued,
    Facets,
    Failure,
    ImageRef,
    IndexChange,
    ItemRecord,
    Lease,
    Status,
)

_ENQUEUE_CHUNK = 1000  # as SqlStore: duplicates within one chunk count once, across chunks as skips
_FINISHED = (Status.DONE, Status.FAILED_PERMANENT, Status.FAILED_RETRYABLE)
_JSON_COLUMNS = frozenset({"evidence", "reasons", "signals", "labels", "colours", "meta"})


@dataclass(slots=True)
class _Row:
    """One item, as the images table holds it: the values ``store.writes`` gives every store, with the
    JSON columns kept as JSON text (so that what reads back is what a database gives back, and no caller
    shares our state) and the perceptual hash signed, as in the BIGINT column."""

    id: int
    source: str
    kind: str
    uri: str
    uri_hash: str
    external_key: str | None
    status: str
    attempts: int
    error_reason: str | None
    last_error: str | None
    available_at: datetime
    created_at: datetime
    updated_at: datetime
    processed_at: datetime | None
    writeback: str | None
    indexed: int
    caption: str | None
    meta: str | None
    sha256: str | None = None
    pixel_sha256: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    phash: int | None = None
    embedding: bytes | None = None
    claimed_by: str | None = None
    lease_until: datetime | None = None
    decision: str | None = None
    duplicate_of: int | None = None
    score: float | None = None
    stage: str | None = None
    evidence: str | None = None
    moderation: str | None = None
    reasons: str | None = None
    signals: str | None = None
    ocr_text: str | None = None
    labels: str | None = None
    colours: str | None = None
    clip_embedding: bytes | None = None
    ai_caption: str | None = None
    processed_by: str | None = None

    @classmethod
    def new(cls, item_id: int, values: dict[str, object]) -> _Row:
        """A row from ``writes.enqueue_row``'s values."""
        return cls(id=item_id, **cast(dict[str, Any], {k: _column(k, v) for k, v in values.items()}))

    def set(self, values: dict[str, object]) -> None:
        """An UPDATE by primary key with ``values`` (``writes.done_values``, ``writes.failed_values``)."""
        for name, value in values.items():
            if name != "id":
                setattr(self, name, _column(name, value))

    def record(self) -> ItemRecord:
        return ItemRecord(
            id=self.id,
            source=self.source,
            uri=self.uri,
            kind=self.kind,
            external_key=self.external_key,
            status=self.status,
            attempts=self.attempts,
            error_reason=self.error_reason,
            last_error=self.last_error,
            sha256=self.sha256,
            format=self.format,
            width=self.width,
            height=self.height,
            phash=from_signed(self.phash) if self.phash is not None else None,
            decision=self.decision,
            duplicate_of=self.duplicate_of,
            score=self.score,
            stage=self.stage,
            evidence=_loads(self.evidence),
            indexed=bool(self.indexed),
            processed_by=self.processed_by,
            writeback=self.writeback,
            created_at=self.created_at,
            processed_at=self.processed_at,
            moderation=self.moderation,
            reasons=_loads(self.reasons),
            moderation_signals=_loads(self.signals),
            ocr_text=self.ocr_text,
            caption=self.caption,
            meta=_loads(self.meta),
            labels=_loads(self.labels),
            colours=_loads(self.colours),
            clip_embedding=self.clip_embedding,
            ai_caption=self.ai_caption,
        )


def _column(name: str, value: object) -> object:
    """``value`` as the column ``name`` keeps it: JSON as text, a Status as its plain string."""
    if name in _JSON_COLUMNS:
        return None if value is None else json.dumps(value)
    return value.value if isinstance(value, StrEnum) else value


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@dataclass(frozen=True, slots=True)
class _Event:
    """One row of the events table (``writes``' event dicts have these keys)."""

    image_id: int
    at: datetime
    event: str
    worker: str | None = None
    detail: str | None = None

    @classmethod
    def of(cls, e: dict[str, object]) -> _Event:
        """From one of ``writes``' event dicts."""
        worker, detail = e.get("worker"), e.get("detail")
        return cls(
            int(cast(int, e["image_id"])),
            cast(datetime, e["at"]),
            str(e["event"]),
            None if worker is None else str(worker),
            None if detail is None else str(detail),
        )


class _State:
    """Everything the store holds. ``rows`` is in id order (ids only grow), so iterating it is the SQL
    store's ``ORDER BY id``; the logs are ``(seq, image_id[, op])`` in sequence order."""

    def __init__(self) -> None:
        self.rows: dict[int, _Row] = {}
        self.by_hash: dict[str, int] = {}
        self.index_log: list[tuple[int, int, str]] = []
        self.search_log: list[tuple[int, int]] = []
        self.events: list[_Event] = []
        self.cursors: dict[str, str] = {}
        self.next_id = self.next_index_seq = self.next_search_seq = 1


class MemoryStore:
    """``Store`` in memory: nothing survives the process."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._s = _State()

    def close(self) -> None:
        """Nothing to release; here so that callers treat every store alike."""

    # -- queue -----------------------------------------------------------------------------------------

    def enqueue(self, refs: Iterable[ImageRef], source: str) -> Enqueued:
        """As ``SqlStore.enqueue``: known URIs (or keys) are skipped; refused or unstorable entries
        become permanent failures at once, counted in ``refusals`` only."""
        added = skipped = 0
        refusals: Counter[str] = Counter()
        chunk: list[ImageRef] = []

        def flush() -> None:
            nonlocal added, skipped
            now = utcnow()
            # The last entry of a URI within a chunk wins, in the place of its first (one multi-row
            # INSERT of a dict's values in SQL).
            rows = {str(row["uri_hash"]): row for row in (enqueue_row(r, source, now) for r in chunk)}
            new = failed = 0
            with self._lock:
                s = self._s
                for h, values in rows.items():
                    if h in s.by_hash:
                        continue
                    row = _Row.new(s.next_id, values)
                    s.next_id += 1
                    s.rows[row.id] = row
                    s.by_hash[h] = row.id
                    new += 1
                    if row.error_reason is not None:
                        s.events.append(
                            _Event.of(refused_event(row.id, row.error_reason, row.last_error, now))
                        )
                        refusals[row.error_reason] += 1
                        failed += 1
            added += new - failed
            skipped += len(chunk) - new
            chunk.clear()

        for ref in refs:
            chunk.append(ref)
            if len(chunk) >= _ENQUEUE_CHUNK:
                flush()
        if chunk:
            flush()
        return Enqueued(added, skipped, refusals)

    def claim(self, worker: str, limit: int, lease_seconds: int) -> list[Claimed]:
        now = utcnow()
        out: list[Claimed] = []
        with self._lock:
            s = self._s
            for row in s.rows.values():
                if len(out) >= limit:
                    break
                waiting = row.status in (Status.QUEUED, Status.FAILED_RETRYABLE) and row.available_at <= now
                abandoned = (
                    row.status == Status.PROCESSING and row.lease_until is not None and row.lease_until < now
                )
                if not (waiting or abandoned):
                    continue
                if abandoned:
                    s.events.append(_Event(row.id, now, "lease_expired", row.claimed_by))
                row.status = Status.PROCESSING.value
                row.claimed_by = worker
                row.lease_until = now + timedelta(seconds=lease_seconds)
                row.attempts += 1
                row.updated_at = now
                s.events.append(_Event(row.id, now, "claimed", worker, f"attempt {row.attempts}"))
                ref = ImageRef(real_uri(row.uri, row.kind), row.kind, row.external_key)
                out.append(Claimed(row.id, ref, row.attempts))
        return out

    def leases(self) -> list[Lease]:
        """Who holds items right now (unexpired leases), with how many and until when."""
        now = utcnow()
        held: dict[str, list[datetime]] = {}
        with self._lock:
            for row in self._s.rows.values():
                if (
                    row.status == Status.PROCESSING
                    and row.claimed_by is not None
                    and row.lease_until is not None
                    and row.lease_until >= now
                ):
                    held.setdefault(row.claimed_by, []).append(row.lease_until)
        return [Lease(w, len(until), max(until)) for w, until in sorted(held.items())]

    def expire_leases(self, workers: Sequence[str]) -> int:
        """End now the leases of ``workers`` (gone processes); the interrupted attempt still counts."""
        now = utcnow()
        gone = set(workers)
        n = 0
        with self._lock:
            for row in self._s.rows.values():
                if row.status == Status.PROCESSING and row.claimed_by in gone:
                    row.lease_until = row.updated_at = now
                    detail = "the claiming process no longer runs; lease ended early"
                    self._s.events.append(_Event(row.id, now, "claimer_gone", row.claimed_by, detail))
                    n += 1
        return n

    @contextmanager
    def decision_lock(self) -> Iterator[MemoryDecisionTx]:
        """The whole store, for one decision: nothing else reads or writes meanwhile. If the block
        raises, what it wrote is undone."""
        with self._lock:
            tx = MemoryDecisionTx(self._s)
            try:
                yield tx
            except BaseException:
                tx.rollback()
                raise

    def finish(
        self,
        completions: Sequence[Completion],
        failures: Sequence[Failure],
        max_attempts: int,
        worker: str | None = None,
    ) -> list[int]:
        """Write a batch's results at once; returns the ids whose lease was lost."""
        with self.decision_lock() as tx:
            return tx.finish(completions, failures, max_attempts, worker)

    def release(self, ids: Sequence[int]) -> None:
        """Give claimed items back untouched: the attempt does not count."""
        now = utcnow()
        with self._lock:
            for i in set(ids):
                row = self._s.rows.get(i)
                if row is not None and row.status == Status.PROCESSING:
                    row.status, row.claimed_by, row.lease_until = Status.QUEUED.value, None, None
                    row.attempts -= 1
                    row.updated_at = now

    def extend_leases(self, worker: str, ids: Sequence[int], lease_seconds: int) -> int:
        """Heartbeat: keep the items this worker still holds from being taken as abandoned."""
        until = utcnow() + timedelta(seconds=lease_seconds)
        n = 0
        with self._lock:
            for i in set(ids):
                row = self._s.rows.get(i)
                if row is not None and row.status == Status.PROCESSING and row.claimed_by == worker:
                    row.lease_until = until
                    n += 1
        return n

    def requeue_failed(self, permanent: bool = False) -> int:
        """Queue failed items again, except entries refused at enqueue (no attempt: they cannot succeed)."""
        statuses = {Status.FAILED_RETRYABLE} | ({Status.FAILED_PERMANENT} if permanent else set())
        now = utcnow()
        n = 0
        with self._lock:
            for row in self._s.rows.values():
                if row.status in statuses and row.attempts > 0:
                    row.status, row.attempts, row.available_at = Status.QUEUED.value, 0, now
                    row.updated_at = now
                    n += 1
        return n

    # -- decisions and the index log -------------------------------------------------------------------

    def find_exact(self, sha256: str, pixel_sha256: str) -> tuple[int, str] | None:
        """The original of a finished image with the same bytes (or else the same pixels)."""
        with self._lock:
            return _find_exact(self._s, sha256, pixel_sha256)

    def index_changes(self, after: int) -> list[IndexChange]:
        with self._lock:
            return _index_changes(self._s, after)

    def last_index_seq(self) -> int:
        with self._lock:
            return self._s.index_log[-1][0] if self._s.index_log else 0

    def iter_indexed(self, batch: int = 10_000) -> Iterator[tuple[np.ndarray, list[int], np.ndarray]]:
        """(ids, phashes, embeddings) of everything that belongs in the indexes, in id order."""
        last = 0
        while True:
            with self._lock:
                rows = [r for r in self._s.rows.values() if r.indexed and r.id > last][:batch]
                page = [
                    (r.id, r.phash, r.embedding)
                    for r in rows
                    if r.phash is not None and r.embedding is not None
                ]
            if not page:
                return
            last = page[-1][0]
            yield (
                np.array([i for i, _, _ in page], np.int64),
                [from_signed(p) for _, p, _ in page],
                np.stack([unpack_embedding(e) for _, _, e in page]),
            )

    def count_indexed(self) -> int:
        with self._lock:
            return _count_indexed(self._s)

    # -- items -----------------------------------------------------------------------------------------

    def get(self, item_id: int) -> ItemRecord:
        rec = self.get_many([item_id]).get(item_id)
        if rec is None:
            raise NotFound(f"no image with id {item_id}")
        return rec

    def get_many(self, ids: Sequence[int]) -> dict[int, ItemRecord]:
        with self._lock:
            rows = self._s.rows
            return {i: rows[i].record() for i in dict.fromkeys(ids) if i in rows}

    def facets(self, ids: Sequence[int]) -> dict[int, Facets]:
        """Just what search filters on, for many candidates."""
        with self._lock:
            rows = self._s.rows
            return {
                i: Facets(
                    i,
                    r.status,
                    r.decision,
                    r.moderation,
                    r.source,
                    r.ocr_text is not None,
                    r.created_at,
                    _loads(r.labels),
                )
                for i in dict.fromkeys(ids)
                if (r := rows.get(i)) is not None
            }

    def find_by_uri(self, uri: str) -> ItemRecord | None:
        with self._lock:
            i = self._s.by_hash.get(uri_hash(uri))
            return self._s.rows[i].record() if i is not None else None

    def find(self, key: str) -> ItemRecord | None:
        """An item by id (digits), external key, or path/URL: the lowest id that matches."""
        hashes = {uri_hash(key)}
        if key.startswith(RAW_PATH_PREFIX):  # a path as stored (and printed) when it is not UTF-8
            hashes.add(uri_hash(real_uri(key, "path")))
        with self._lock:
            for r in self._s.rows.values():
                if r.external_key == key or r.uri_hash in hashes or (key.isdigit() and r.id == int(key)):
                    return r.record()
            return None

    def events(self, item_id: int) -> list[dict[str, object]]:
        with self._lock:
            return [
                {"at": e.at.isoformat(), "event": e.event, "worker": e.worker, "detail": e.detail}
                for e in self._s.events
                if e.image_id == item_id
            ]

    def duplicate_pairs(self, limit: int | None = None) -> list[tuple[ItemRecord, ItemRecord]]:
        with self._lock:
            rows = self._s.rows
            pairs = [
                (r.record(), rows[r.duplicate_of].record())
                for r in rows.values()
                if r.decision == "duplicate" and r.duplicate_of in rows
            ]
        return pairs[:limit] if limit else pairs

    def copies_of(self, ids: Sequence[int]) -> dict[int, list[int]]:
        """The images recorded as duplicates of each of ``ids`` (not indexed themselves), in id order."""
        wanted = set(ids)
        out: dict[int, list[int]] = {}
        with self._lock:
            for r in self._s.rows.values():
                if r.duplicate_of in wanted and r.status == Status.DONE:
                    out.setdefault(r.duplicate_of, []).append(r.id)
        return out

    # -- stats -----------------------------------------------------------------------------------------

    def counts(self, since: datetime | None = None) -> dict[str, dict[str, int]]:
        """Current queue states, and decisions / deciding stages / failure reasons (of items processed
        since ``since`` when given)."""

        def recent(r: _Row) -> bool:
            return since is None or _at_or_after(r.processed_at, since)

        def grouped(values: Iterable[str | None]) -> dict[str, int]:
            return dict(Counter(v for v in values if v is not None).most_common())

        with self._lock:
            rows = self._s.rows.values()
            return {
                "status": grouped(r.status for r in rows),
                "decision": grouped(r.decision for r in rows if recent(r)),
                "duplicate_stage": grouped(r.stage for r in rows if r.decision == "duplicate" and recent(r)),
                "moderation": grouped(r.moderation for r in rows if recent(r)),
                "error": grouped(r.error_reason for r in rows if recent(r)),
            }

    def activity(self, since: datetime | None = None) -> dict[str, object]:
        """Throughput over the last minute / hour / day, and per-worker totals (since ``since``)."""
        now = utcnow()
        out: dict[str, object] = {}
        workers: dict[str, list[datetime | None]] = {}
        with self._lock:
            rows = self._s.rows.values()
            for name, seconds in {"last_minute": 60, "last_hour": 3600, "last_day": 86400}.items():
                start = now - timedelta(seconds=seconds)
                n = sum(1 for r in rows if r.status in _FINISHED and _at_or_after(r.processed_at, start))
                out[name] = {"processed": n, "per_minute": round(n / (seconds / 60), 2)}
            for r in rows:
                if r.processed_by is not None and (since is None or _at_or_after(r.processed_at, since)):
                    workers.setdefault(r.processed_by, []).append(r.processed_at)
            out["in_flight"] = dict(Counter(r.claimed_by for r in rows if r.status == Status.PROCESSING))
        out["workers"] = [
            {"worker": w, "processed": len(at), "last_at": _latest(at)}
            for w, at in sorted(workers.items(), key=lambda kv: -len(kv[1]))
        ]
        return out

    # -- cursors and write-back ------------------------------------------------------------------------

    def get_cursor(self, name: str) -> str | None:
        with self._lock:
            return self._s.cursors.get(name)

    def set_cursor(self, name: str, value: str) -> None:
        with self._lock:
            self._s.cursors[name] = value

    def pending_writebacks(self, limit: int) -> list[tuple[ItemRecord, str | None]]:
        """Finished external items whose verdict is not yet in the business table, with the external
        key of their original when it came from the same source."""
        with self._lock:
            rows = self._s.rows
            out: list[tuple[ItemRecord, str | None]] = []
            for r in rows.values():
                if len(out) >= limit:
                    break
                if r.writeback == "pending":
                    original = rows.get(r.duplicate_of) if r.duplicate_of is not None else None
                    key = original.external_key if original and original.source == r.source else None
                    out.append((r.record(), key))
            return out

    def mark_written(self, ids: Sequence[int]) -> None:
        now = utcnow()
        with self._lock:
            for i in ids:  # an event per id given, as the SQL store inserts them
                if (row := self._s.rows.get(i)) is not None:
                    row.writeback, row.updated_at = "done", now
                self._s.events.append(_Event(i, now, "written_back"))

    # -- search feed -----------------------------------------------------------------------------------

    def search_feed(self, after: int, limit: int = 1000) -> list[tuple[int, ItemRecord]]:
        """Finished items logged after sequence ``after``, oldest first; an item finished twice appears
        twice (the later entry wins)."""
        with self._lock:
            rows = self._s.rows
            feed = [(seq, i) for seq, i in self._s.search_log if seq > after and i in rows][:limit]
            return [(seq, rows[i].record()) for seq, i in feed]

    def last_search_seq(self) -> int:
        with self._lock:
            return self._s.search_log[-1][0] if self._s.search_log else 0

    def reset(self) -> None:
        """Forget every item, log entry, event and cursor; sequence numbers go on from where they were."""
        with self._lock:
            s = self._s
            s.rows.clear()
            s.by_hash.clear()
            s.index_log.clear()
            s.search_log.clear()
            s.events.clear()
            s.cursors.clear()


class MemoryDecisionTx:
    """The dedup decision step of one batch, inside ``MemoryStore.decision_lock``."""

    def __init__(self, state: _State) -> None:
        self._s = state
        self._saved: dict[int, _Row] = {}  # rows as they were before this transaction wrote them
        self._log_lengths = (len(state.index_log), len(state.search_log), len(state.events))

    def index_changes(self, after: int) -> list[IndexChange]:
        return _index_changes(self._s, after)

    def find_exact(self, sha256: str, pixel_sha256: str) -> tuple[int, str] | None:
        return _find_exact(self._s, sha256, pixel_sha256)

    def exact_finder(self, sha256s: Sequence[str], pixel_sha256s: Sequence[str]) -> ExactFinder:
        """``find_exact`` for a whole batch, from the state as it is now (as ``SqlStore``'s one query)."""
        bytes_, pixels = set(sha256s), set(pixel_sha256s)
        by_bytes: dict[str | None, int] = {}
        by_pixels: dict[str | None, int] = {}
        for r in self._s.rows.values():  # lowest id first, as in find_exact
            if r.status == Status.DONE and (r.sha256 in bytes_ or r.pixel_sha256 in pixels):
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
        return self._s.index_log[-1][0] if self._s.index_log else 0

    def count_indexed(self) -> int:
        return _count_indexed(self._s)

    def finish(
        self,
        completions: Sequence[Completion],
        failures: Sequence[Failure],
        max_attempts: int,
        worker: str | None = None,
    ) -> list[int]:
        """Record results; an item is only written while still claimed by ``worker`` (when given): a
        worker whose lease expired must not overwrite the result of the worker that took over."""
        s, now = self._s, utcnow()
        ids = [c.id for c in completions] + [f.id for f in failures]
        ours = {
            i: (r.attempts, r.kind)
            for i in ids
            if (r := s.rows.get(i)) is not None
            and r.status == Status.PROCESSING
            and (not worker or r.claimed_by == worker)
        }
        done = [c for c in completions if c.id in ours]
        failed = [
            (f, failed_values(f, *ours[f.id], max_attempts, worker, now)) for f in failures if f.id in ours
        ]
        for c in done:
            self._write(done_values(c, ours[c.id][1], worker, now))
            if c.indexed:
                s.index_log.append((s.next_index_seq, c.id, "add"))
                s.next_index_seq += 1
            s.search_log.append((s.next_search_seq, c.id))
            s.next_search_seq += 1
        for _, values in failed:
            self._write(values)
        events = [done_event(c, worker, now) for c in done]
        s.events.extend(_Event.of(e) for e in events + [failed_event(v, f, worker, now) for f, v in failed])
        return [i for i in ids if i not in ours]

    def _write(self, values: dict[str, object]) -> None:
        item_id = cast(int, values["id"])
        row = self._s.rows[item_id]
        self._saved.setdefault(item_id, replace(row))
        row.set(values)

    def rollback(self) -> None:
        """Undo this transaction's writes (the decision block raised)."""
        s = self._s
        s.rows.update(self._saved)
        n_index, n_search, n_events = self._log_lengths
        del s.index_log[n_index:], s.search_log[n_search:], s.events[n_events:]


def _find_exact(s: _State, sha256: str, pixel_sha256: str) -> tuple[int, str] | None:
    done = [r for r in s.rows.values() if r.status == Status.DONE]
    for attr, value, stage in (
        ("sha256", sha256, "exact_bytes"),
        ("pixel_sha256", pixel_sha256, "exact_pixels"),
    ):
        for r in done:
            if getattr(r, attr) == value:
                return (r.duplicate_of or r.id), stage
    return None


def _index_changes(s: _State, after: int) -> list[IndexChange]:
    out: list[IndexChange] = []
    for seq, image_id, op in s.index_log:
        if seq > after:
            r = s.rows.get(image_id)
            embedding = r.embedding if r is not None else None
            out.append(
                IndexChange(
                    seq,
                    image_id,
                    op,
                    from_signed(r.phash) if r is not None and r.phash is not None else None,
                    unpack_embedding(embedding) if embedding is not None else None,
                )
            )
    return out


def _count_indexed(s: _State) -> int:
    return sum(1 for r in s.rows.values() if r.indexed)


def _at_or_after(t: datetime | None, start: datetime) -> bool:
    """SQL's ``t >= start``, where NULL is never true."""
    return t is not None and t >= start


def _latest(times: list[datetime | None]) -> str | None:
    known = [t for t in times if t is not None]
    return max(known).isoformat() if known else None


if TYPE_CHECKING:  # mypy checks that the twin provides every port
    _: Store = MemoryStore()
