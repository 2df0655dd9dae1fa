"""Where the queue and the decisions stand: counts by status, decision, duplicate stage, moderation and
error; queue depth; duplicate rate; throughput; what each worker processed and holds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, cast

from imgaudit.store.ports import ItemStore, StatsStore
from imgaudit.types import Status

PENDING = (Status.QUEUED, Status.PROCESSING, Status.FAILED_RETRYABLE)
"""The statuses of items that still have work ahead of them: the queue depth counts these."""

THROUGHPUT_WINDOWS = ("last_minute", "last_hour", "last_day")


def queue_depth(status_counts: Mapping[str, int]) -> int:
    """Items still to process, from the counts by status."""
    return sum(status_counts.get(s, 0) for s in PENDING)


@dataclass(frozen=True, slots=True)
class Stats:
    counts: dict[
        str, dict[str, int]
    ]  # group (status, decision, duplicate_stage, moderation, error) -> counts
    indexed: int
    throughput: dict[str, dict[str, float]]  # window -> processed, per_minute
    workers: list[dict[str, object]]  # per claimer: worker, processed, last_at
    in_flight: dict[str, int]  # claimer -> items it is processing now
    since: datetime | None  # decisions, errors and workers count only from here

    @property
    def total(self) -> int:
        return sum(self.counts["status"].values())

    @property
    def queue_depth(self) -> int:
        return queue_depth(self.counts["status"])

    @property
    def duplicate_rate(self) -> float:
        """Duplicates among the decided items, to 4 decimals."""
        decided = sum(self.counts["decision"].values())
        return round(self.counts["decision"].get("duplicate", 0) / decided, 4) if decided else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            **self.counts,
            "indexed": self.indexed,
            "total": self.total,
            "queue_depth": self.queue_depth,
            "duplicate_rate": self.duplicate_rate,
            "throughput": self.throughput,
            "workers": self.workers,
            "in_flight": self.in_flight,
            "since": self.since.isoformat() if self.since else None,
        }


class StatsPorts(StatsStore, ItemStore, Protocol):
    """What the stats service uses of the store: the counts, and how many items are indexed."""


class StatsService:
    def __init__(self, store: StatsPorts) -> None:
        self._store = store

    def stats(self, since: datetime | None = None) -> Stats:
        """Every figure at once; decisions, errors and per-worker totals of items processed ``since``."""
        counts = self._store.counts(since)
        activity = self._store.activity(since)  # a loosely typed mapping: its parts are cast below
        return Stats(
            counts=counts,
            indexed=self._store.count_indexed(),
            throughput=cast(dict[str, dict[str, float]], {k: activity[k] for k in THROUGHPUT_WINDOWS}),
            workers=cast(list[dict[str, object]], activity["workers"]),
            in_flight=cast(dict[str, int], activity["in_flight"]),
            since=since,
        )

    def queue_depth(self) -> int:
        return queue_depth(self._store.counts()["status"])
