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
from datetime import datetime

from imgaudit.config import Settings
from imgaudit.errors import InternalError
from imgaudit.index.replica import DedupReplica
from imgaudit.pipeline import BatchReport, Pipeline
from imgaudit.services.stats import queue_depth
from imgaudit.sources.files import Source
from imgaudit.store.outages import is_store_failure
from imgaudit.store.ports import Store
from imgaudit.store.thumbs import ThumbStore
from imgaudit.types import (
    Claimed,
    Enqueued,
    Failure,
    ImageRef,
    ItemRecord,
    Lease,
    ModerationSignals,
    ModerationVerdict,
    Verdict,
)

log = logging.getLogger("imgaudit.worker")


def _merge(a: BatchReport, b: BatchReport) -> BatchReport:
    a.completions += b.completions
    a.failures += b.failures
    a.lost += b.lost
    for stage, seconds in b.timings.items():
        a.timings[stage] += seconds
    return a


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
    refused: Counter[str] = field(default_factory=Counter)  # entries failed at enqueue, by reason
    reclaimed: int = 0  # items whose claimer had died, taken back at once instead of after the lease
    leased: list[Lease] = field(default_factory=list)  # items still held by other live or remote claimers

    @property
    def still_leased(self) -> int:
        return sum(lease.items for lease in self.leased)

    @property
    def leased_until(self) -> datetime | None:
        """When the last of the leases held elsewhere runs out (if its holder never finishes)."""
        return max((lease.until for lease in self.leased), default=None)

    def count_enqueue(self, result: Enqueued) -> None:
        """Take the numbers of the enqueue that preceded the processing."""
        self.enqueued, self.skipped_known = result
        self.refused = Counter(result.refusals)

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
            "refused": sum(self.refused.values()),
            "refusals": dict(self.refused),
            "reclaimed": self.reclaimed,
            "still_leased": self.still_leased,
            "leased_until": self.leased_until.isoformat() if self.leased_until else None,
            "leased_by": {lease.worker: lease.items for lease in self.leased},
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
        indexes: DedupReplica,
        pipeline: Pipeline,
        thumbs: ThumbStore,
    ) -> None:
        self.settings = settings
        self.store = store
        self.indexes = indexes  # the pipeline's replica: this service decides when it syncs, rebuilds, saves
        self.pipeline = pipeline
        self.thumbs = thumbs
        self.worker_id = worker_identity()

    # -- index life cycle --------------------------------------------------------------------------------

    def reconcile(self) -> bool:
        """Bring the indexes up to date with the store (the source of truth); True if rebuilt.

        A loaded snapshot is caught up by replaying the index log after its sequence number; if the
        result still disagrees with the store (snapshot lost or from another store, a reset), the
        indexes are rebuilt from the descriptors kept in the store."""
        with self.store.decision_lock() as tx:
            self.indexes.sync(tx)
            if self.indexes.agrees_with(tx):
                return False
        self.rebuild_index()
        return True

    def rebuild_index(self) -> int:
        """Rebuild both indexes from the store (other workers carry on meanwhile) and save them."""
        n = self.indexes.rebuild(self.store)
        self.save()
        return n

    def save(self) -> None:
        """A snapshot of the indexes, when the backend keeps them (the in-memory one is rebuilt)."""
        self.indexes.save()

    # -- ingest --------------------------------------------------------------------------------------------

    def enqueue(self, refs: Iterable[ImageRef], source: str) -> Enqueued:
        """``(added, skipped)``, and ``.refusals``: entries recorded as failed at once, by reason."""
        return self.store.enqueue(refs, source)

    def ingest(
        self,
        source: Source,
        *,
        batch_size: int = INGEST_BATCH,
        on_queued: Callable[[Enqueued, int], None] | None = None,
        progress: Progress | None = None,
    ) -> IngestSummary:
        """Queue everything ``source`` holds (a folder, an image file, a list of URLs), then process the
        queue. ``on_queued(enqueued, to_process)`` is called in between, so a caller can say what was
        queued and size its progress display before the long part starts."""
        enqueued = self.enqueue(source.refs(), source.name)
        if on_queued is not None:
            on_queued(enqueued, self.queue_depth())
        summary = self.process_queue(progress, batch_size=batch_size)
        summary.count_enqueue(enqueued)
        return summary

    def queue_depth(self) -> int:
        """Items still to process (queued, claimed, or waiting to be retried)."""
        return queue_depth(self.store.counts()["status"])

    def reclaim_dead_leases(self) -> int:
        """End the leases held by processes of this machine that no longer run (a killed ingest or
        worker), so their items are processed now rather than after ``lease_seconds``."""
        gone = [lease.worker for lease in self.store.leases() if claimer_gone(lease.worker, self.worker_id)]
        if gone:
            log.info("leases of %s ended early: those processes are gone", ", ".join(gone))
        return self.store.expire_leases(gone)

    def process_claimed(self, claimed: Sequence[Claimed]) -> BatchReport:
        """Process a claimed batch, the one way both ``ingest`` and the worker do it: its leases are
        extended while it runs (a heartbeat).

        If the store fails, the items go back to the queue and the error is raised. Any other error
        escaping the pipeline is some item's doing: the batch is split in halves until the item that
        raises is alone, and that item alone is recorded as failed, so a poison image can never crash
        every rerun (a crash loop under a supervisor) nor hold back the rest of its batch.
        """
        try:
            with self._heartbeat([c.id for c in claimed]):
                return self.pipeline.process(claimed, self.worker_id)
        except Exception as exc:
            if is_store_failure(exc):
                self.store.release([c.id for c in claimed])
                raise
            log.warning(
                "a batch of %d failed (%s: %s); isolating the item", len(claimed), type(exc).__name__, exc
            )
            if len(claimed) > 1:
                half = len(claimed) // 2
                return _merge(self.process_claimed(claimed[:half]), self.process_claimed(claimed[half:]))
            failure = Failure(id=claimed[0].id, error=InternalError.during("processing", exc))
            report = BatchReport(failures=[failure])
            with self.store.decision_lock() as tx:
                report.lost = tx.finish([], [failure], self.settings.max_attempts, self.worker_id)
            return report
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
        """Claim and process until the queue is empty (items whose back-off has not passed wait).

        First the items of dead claimers on this machine are taken back (``reclaimed``); at the end,
        ``leased`` lists the items other claimers still hold (a live worker, another machine), which
        this run could not process, so the caller can say how many and until when."""
        summary = IngestSummary()
        summary.reclaimed = self.reclaim_dead_leases()
        start = last_save = time.perf_counter()
        try:
            while limit is None or summary.processed < limit:
                n = batch_size if limit is None else min(batch_size, limit - summary.processed)
                claimed = self.store.claim(self.worker_id, n, self.settings.lease_seconds)
                if not claimed:
                    break
                report = self.process_claimed(claimed)
                summary.processed += len(claimed) - len(report.deferred)
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
            summary.leased = [lease for lease in self.store.leases() if lease.worker != self.worker_id]
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

    def duplicate_pairs(self, limit: int | None = None) -> list[tuple[ItemRecord, ItemRecord]]:
        """(duplicate, original) records of the images judged copies, for reports."""
        return self.store.duplicate_pairs(limit)

    def reset(self) -> None:
        self.store.reset()
        self.indexes.reset(self.store)
        self.thumbs.clear()
        self.save()


# -- who holds a lease ---------------------------------------------------------------------------------

_CLOCK_SLACK = 2  # seconds: /proc's boot time, hence a start time computed from it, may move by one


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started, in seconds since the epoch (Linux ``/proc``); None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # after "(comm)", which may hold spaces
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return boot + int(fields[19]) // os.sysconf("SC_CLK_TCK")  # field 22: start, clock ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_namespace() -> int:
    """Tells apart containers that share a host name (a pid means something only in its namespace)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def worker_identity() -> str:
    """``host:pid:start:pidns``: enough for a later process on the same machine to tell whether the
    holder of a lease still runs (``claimer_gone``), even once its pid has been given to another."""
    pid = os.getpid()
    started = _start_time(pid) or int(time.time())
    return f"{socket.gethostname()[:64]}:{pid}:{started}:{_pid_namespace()}"


def claimer_gone(worker: str, me: str) -> bool:
    """Whether ``worker`` (a ``worker_identity``) was a process of this machine and pid namespace that
    no longer runs: its pid is free, or now belongs to a process started at another time. Any other
    claimer (this process, another machine, an older identity format) is presumed alive."""
    try:
        host, pid_, started_, ns = worker.rsplit(":", 3)
        my_host, _, _, my_ns = me.rsplit(":", 3)
        pid, started = int(pid_), int(started_)
    except ValueError:
        return False
    if worker == me or host != my_host or ns != my_ns or pid <= 0 or os.name != "posix":
        return False  # (os.kill on Windows would end the process, not probe it)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it runs, as another user
        pass
    now_started = _start_time(pid)
    return now_started is not None and abs(now_started - started) > _CLOCK_SLACK
