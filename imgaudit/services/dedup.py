"""Dedup: ingest (enqueue + process the queue), check, similar-image search, stats, rebuild, reset."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from imgaudit.config import Settings
from imgaudit.index.catalog import Indexes, load_indexes, save_indexes
from imgaudit.pipeline import BatchReport, Pipeline
from imgaudit.store.repo import Claimed, ItemRecord, Store
from imgaudit.store.thumbs import ThumbStore
from imgaudit.types import ImageRef, ModerationSignals, ModerationVerdict, Verdict

log = logging.getLogger("imgaudit.worker")

INGEST_BATCH = 64
SAVE_EVERY_SECONDS = 30.0


@dataclass
class IngestSummary:
    enqueued: int = 0
    skipped_known: int = 0
    processed: int = 0
    duplicates: int = 0
    failed: int = 0
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    stages: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    moderation: Counter[str] = field(default_factory=Counter)  # pass / review / violate
    reasons: Counter[str] = field(default_factory=Counter)  # reason categories

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "enqueued": self.enqueued,
            "skipped_known": self.skipped_known,
            "processed": self.processed,
            "duplicates": self.duplicates,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "duplicate_stages": dict(self.stages),
            "errors": dict(self.errors),
            "moderation": dict(self.moderation),
            "reasons": dict(self.reasons),
        }


@dataclass
class CheckResult:
    ref: ImageRef
    verdict: Verdict | None
    original: ItemRecord | None
    error: str | None
    error_reason: str | None
    moderation: ModerationVerdict | None = None
    signals: ModerationSignals | None = None


Progress = Callable[[int, BatchReport], None]


class DedupService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        indexes: Indexes,
        pipeline: Pipeline,
        thumbs: ThumbStore,
        index_dir: Path,
        descriptor: str,
        index_factory: Callable[[], Indexes],
    ) -> None:
        self.settings = settings
        self.store = store
        self.indexes = indexes
        self.pipeline = pipeline
        self.thumbs = thumbs
        self.index_dir = index_dir
        self.descriptor = descriptor
        self.index_factory = index_factory
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"

    # -- index life cycle --------------------------------------------------------------------------------

    def reconcile(self) -> bool:
        """Bring the indexes up to date with the store (the source of truth); True if rebuilt.

        A loaded snapshot is caught up by replaying the index log after its sequence number; if the
        result still disagrees with the store (snapshot lost or from another store, a reset), the
        indexes are rebuilt from the descriptors kept in the store."""
        with self.store.decision_lock() as tx:
            self.pipeline.sync(tx.index_changes(self.pipeline.synced_seq))
            if len(self.indexes) == len(self.indexes.hashes) == tx.count_indexed():
                return False
        self.rebuild_index()
        return True

    def rebuild_index(self) -> int:
        """Rebuild both indexes from the descriptors and hashes kept in the store, without stopping
        other workers: entries logged while this runs are replayed at the end."""
        seq = self.store.last_index_seq()
        fresh = self.index_factory()
        for ids, phashes, embeddings in self.store.iter_indexed():
            fresh.add(ids, phashes, embeddings)
        self.indexes = self.pipeline.indexes = fresh
        self.pipeline.synced_seq = seq
        self.pipeline.sync(self.store.index_changes(seq))
        self.save()
        return len(fresh)

    def save(self) -> None:
        if self.settings.index.backend != "faiss":  # the in-memory reference is rebuilt at each start
            return
        save_indexes(self.indexes, self.index_dir, descriptor=self.descriptor, seq=self.pipeline.synced_seq)

    # -- ingest --------------------------------------------------------------------------------------------

    def enqueue(self, refs: Iterable[ImageRef], source: str) -> tuple[int, int]:
        return self.store.enqueue(refs, source)

    def process_claimed(self, claimed: Sequence[Claimed]) -> BatchReport:
        """Process a claimed batch, the one way both ``ingest`` and the worker do it: its leases are
        extended while it runs (a heartbeat), and if processing fails the items go back to the queue."""
        try:
            with self._heartbeat([c.id for c in claimed]):
                return self.pipeline.process(claimed, self.worker_id)
        except BaseException:
            self.store.release([c.id for c in claimed])
            raise

    @contextmanager
    def _heartbeat(self, ids: list[int]) -> Iterator[None]:
        """Extend the batch's leases every third of a lease while it is processed, so a batch slowed
        down by slow servers is not taken for abandoned and processed twice."""
        stop = threading.Event()
        period = self.settings.lease_seconds / 3

        def beat() -> None:
            while not stop.wait(period):
                try:
                    self.store.extend_leases(self.worker_id, ids, self.settings.lease_seconds)
                except Exception:
                    log.warning("could not extend the leases of the batch in hand", exc_info=True)

        thread = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def process_queue(
        self, progress: Progress | None = None, batch_size: int = INGEST_BATCH, limit: int | None = None
    ) -> IngestSummary:
        """Claim and process until the queue is empty (items whose back-off has not passed wait)."""
        summary = IngestSummary()
        start = last_save = time.perf_counter()
        try:
            while limit is None or summary.processed < limit:
                n = batch_size if limit is None else min(batch_size, limit - summary.processed)
                claimed = self.store.claim(self.worker_id, n, self.settings.lease_seconds)
                if not claimed:
                    break
                report = self.process_claimed(claimed)
                summary.processed += len(claimed)
                summary.failed += len(report.failures)
                for c in report.completions:
                    if c.verdict.decision == "duplicate":
                        summary.duplicates += 1
                        summary.stages[c.verdict.stage.value] += 1
                    if c.moderation is not None:
                        summary.moderation[c.moderation.decision.value] += 1
                        for r in c.moderation.reasons:
                            summary.reasons[r.category] += 1
                for f in report.failures:
                    summary.errors[f.error.reason] += 1
                for k, v in report.timings.items():
                    summary.timings[k] += v
                if progress:
                    progress(len(claimed), report)
                if time.perf_counter() - last_save > SAVE_EVERY_SECONDS:
                    self.save()
                    last_save = time.perf_counter()
        finally:
            self.save()
            summary.seconds = time.perf_counter() - start
        return summary

    # -- queries -------------------------------------------------------------------------------------------

    def check(self, refs: list[ImageRef]) -> list[CheckResult]:
        results = []
        pairs = self.pipeline.check(refs)
        originals = self.store.get_many([v.duplicate_of for v, _ in pairs if v and v.duplicate_of])
        for ref, (verdict, analysed) in zip(refs, pairs, strict=True):
            err = analysed.error
            results.append(
                CheckResult(
                    ref,
                    verdict,
                    originals.get(verdict.duplicate_of) if verdict and verdict.duplicate_of else None,
                    err.message if err else None,
                    err.reason if err else None,
                    analysed.moderated.verdict if analysed.moderated else None,
                    analysed.moderated.signals if analysed.moderated else None,
                )
            )
        return results

    def similar(self, ref: ImageRef, k: int) -> list[tuple[ItemRecord, float]]:
        hits = self.pipeline.similar(ref, k)
        records = self.store.get_many([i for i, _ in hits])
        return [(records[i], s) for i, s in hits if i in records]

    def reset(self) -> None:
        self.store.reset()
        self.indexes = self.pipeline.indexes = self.index_factory()
        self.pipeline.synced_seq = self.store.last_index_seq()
        self.thumbs.clear()
        self.save()


def open_indexes(
    settings: Settings, descriptor: str, dim: int, factory: Callable[[], Indexes]
) -> tuple[Indexes, int]:
    """The newest saved snapshot and its log sequence number, or empty indexes at 0."""
    loaded = None
    if settings.index.backend == "faiss":
        loaded = load_indexes(
            settings.data_dir / "index",
            dim,
            descriptor=descriptor,
            exact_below=settings.index.exact_below,
            nprobe=settings.index.nprobe,
        )
    return loaded or (factory(), 0)
