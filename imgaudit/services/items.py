"""Items one at a time, without models or indexes: add them to the queue, find one by any key, explain
its verdicts, list its history, and queue failed ones again."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Protocol

from imgaudit.errors import NotFound
from imgaudit.sources.files import Source
from imgaudit.store.ports import ItemStore, QueueStore
from imgaudit.types import Enqueued, ImageRef, ItemRecord

EXPLAINED = (
    "id",
    "uri",
    "status",
    "error_reason",
    "last_error",
    "decision",
    "duplicate_of",
    "score",
    "stage",
    "evidence",
    "moderation",
    "reasons",
    "moderation_signals",
    "ocr_text",
)
"""The fields of an item that say why it got its verdicts."""


@dataclass(frozen=True, slots=True)
class Explanation:
    item: ItemRecord
    original: ItemRecord | None  # what it is a duplicate of

    def as_dict(self) -> dict[str, object]:
        d = self.item.as_dict()
        return {k: d[k] for k in EXPLAINED} | {"original": self.original.uri if self.original else None}


@dataclass(frozen=True, slots=True)
class History:
    item: ItemRecord
    events: list[dict[str, object]]  # at, event, worker, detail; oldest first

    def as_dict(self) -> dict[str, object]:
        return {**self.item.as_dict(), "history": self.events}


class ItemsPorts(ItemStore, QueueStore, Protocol):
    """What the items service uses of the store: reading items, and the queue."""


class ItemsService:
    def __init__(self, store: ItemsPorts) -> None:
        self._store = store

    def enqueue(self, refs: Iterable[ImageRef], source: str) -> Enqueued:
        """Queue new images for the worker; ``(added, skipped)`` and the entries refused at once."""
        return self._store.enqueue(refs, source)

    def enqueue_source(self, source: Source) -> Enqueued:
        """Queue everything a folder, an image file or a list of URLs holds."""
        return self.enqueue(source.refs(), source.name)

    def find(self, key: str, *, also: Iterable[str] = ()) -> ItemRecord:
        """The item with id, external key, path or URL ``key``, else the first of ``also`` (other spellings
        of the same key, taken one by one only while nothing matched, so they may be computed lazily) that
        matches; ``NotFound`` names ``key``."""
        for k in chain((key,), also):
            rec = self._store.find(k)
            if rec is not None:
                return rec
        raise NotFound(f"no item matches {key!r}")

    def explain(self, key: str, *, also: Iterable[str] = ()) -> Explanation:
        rec = self.find(key, also=also)
        original = self._store.get(rec.duplicate_of) if rec.duplicate_of else None
        return Explanation(rec, original)

    def history(self, key: str, *, also: Iterable[str] = ()) -> History:
        rec = self.find(key, also=also)
        return History(rec, self._store.events(rec.id))

    def requeue_failed(self, *, permanent: bool = False) -> int:
        """Queue failed items again (retryable ones; with ``permanent``, all); how many."""
        return self._store.requeue_failed(permanent=permanent)
