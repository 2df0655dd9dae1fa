"""One step of the always-on worker: feed from an external table, claim, process, write back.

The entry point (``imgaudit.worker``) owns signals, sleeping, status files and logs; this module owns
what a step does, so the CLI's ``ingest`` and the daemon run the same pipeline.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from imgaudit.config import Settings
from imgaudit.errors import ExternalUnavailable
from imgaudit.pipeline import BatchReport
from imgaudit.services.dedup import DedupService
from imgaudit.services.stats import queue_depth
from imgaudit.types import ImageRef, ItemRecord

log = logging.getLogger("imgaudit.worker")


class ExternalSource(Protocol):
    """A business table used as the queue: new rows in, verdicts written back."""

    name: str

    def poll(self, after_key: str | None, limit: int) -> list[ImageRef]:
        """Rows waiting for work with a key greater than ``after_key``, in key order;
        ``ExternalUnavailable`` when the business database cannot be read."""
        ...

    def write_back(self, items: list[tuple[ItemRecord, str | None]]) -> None:
        """Write verdicts (item, original's external key) in one transaction: all or, raising
        ``ExternalUnavailable``, none."""
        ...


@dataclass
class StepReport:
    fed: int = 0
    claimed: int = 0
    written_back: int = 0
    external_error: str | None = None  # the business database was unavailable during this step
    batch: BatchReport | None = None
    seconds: float = 0.0


@dataclass
class WorkerStats:
    """Running totals and a one-minute rate, for the status file."""

    processed: int = 0
    duplicates: int = 0
    failed: int = 0
    lost: int = 0
    fed: int = 0
    written_back: int = 0
    batches: int = 0
    busy_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    recent: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, step: StepReport) -> None:
        self.fed += step.fed
        self.written_back += step.written_back
        if step.batch is None:
            return
        b = step.batch
        n = len(b.completions) + len(b.failures)
        self.busy_seconds += step.seconds
        for k, v in b.timings.items():
            self.timings[k] = self.timings.get(k, 0.0) + v
        self.batches += 1
        self.processed += n
        self.failed += len(b.failures)
        self.lost += len(b.lost)
        self.duplicates += sum(c.verdict.decision == "duplicate" for c in b.completions)
        now = time.monotonic()
        self.recent.append((now, n))
        while self.recent and self.recent[0][0] < now - 60:
            self.recent.popleft()

    def rate_per_minute(self) -> float:
        return float(sum(n for _, n in self.recent))


class WorkerService:
    def __init__(
        self, settings: Settings, dedup: DedupService, external: ExternalSource | None = None
    ) -> None:
        self.settings = settings
        self.dedup = dedup
        self.store = dedup.store
        self.external = external
        self._reclaimed = False

    @property
    def worker_id(self) -> str:
        return self.dedup.worker_id

    def feed(self) -> int:
        """Enqueue new rows of the external table; the cursor advances only after they are queued."""
        if self.external is None:
            return 0
        cursor_name = f"external:{self.external.name}"
        refs = self.external.poll(self.store.get_cursor(cursor_name), self.settings.external.batch_size)
        if not refs:
            return 0
        added, _ = self.store.enqueue(refs, self.external.name)
        last = refs[-1].external_key
        assert last is not None
        self.store.set_cursor(cursor_name, last)
        return added

    def write_back(self) -> int:
        if self.external is None:
            return 0
        pending = self.store.pending_writebacks(self.settings.worker.batch_size)
        if not pending:
            return 0
        self.external.write_back(pending)
        self.store.mark_written([rec.id for rec, _ in pending])
        return len(pending)

    def step(self, on_claimed: Callable[[int], None] | None = None) -> StepReport:
        """Feed, claim one batch, process it, write back. An empty ``claimed`` means idle."""
        t = time.perf_counter()
        report = StepReport()
        if not self._reclaimed:  # once per process: a killed predecessor's items need not wait out its lease
            self._reclaimed = True
            self.dedup.reclaim_dead_leases()
        try:
            report.fed = self.feed()
        except ExternalUnavailable as exc:  # keep working on what is already queued
            report.external_error = exc.message
        t_claim = time.perf_counter()
        claimed = self.store.claim(
            self.worker_id, self.settings.worker.batch_size, self.settings.lease_seconds
        )
        claim_seconds = time.perf_counter() - t_claim
        report.claimed = len(claimed)
        if claimed and on_claimed is not None:
            on_claimed(len(claimed))
        if claimed:
            report.batch = self.dedup.process_claimed(claimed)
            report.batch.timings["claim"] += claim_seconds
        try:
            report.written_back = self.write_back()
        except ExternalUnavailable as exc:  # verdicts stay pending in the store; written next time
            report.external_error = exc.message
        report.seconds = time.perf_counter() - t
        return report

    def queue_depth(self) -> int:
        return queue_depth(self.store.counts()["status"])

    def save(self) -> None:
        """Save the dedup index snapshot (a restart then replays only the log written after it)."""
        self.dedup.save()
