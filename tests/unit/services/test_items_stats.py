"""``ItemsService`` and ``StatsService`` over the in-memory store and SQLite: what ``enqueue``,
``explain``, ``status``, ``recalc`` and ``stats`` (and next the HTTP API) get, without a terminal."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from imgaudit.bootstrap import open_source
from imgaudit.config import Settings
from imgaudit.errors import CorruptImage, FetchTimeout, NotFound
from imgaudit.services.items import EXPLAINED, ItemsService
from imgaudit.services.stats import StatsService, queue_depth
from imgaudit.store.memory import MemoryStore
from imgaudit.store.ports import Store
from imgaudit.store.schema import utcnow
from imgaudit.store.sql import SqlStore
from imgaudit.types import Completion, Decision, DedupSignals, Failure, ImageRef, Stage, Verdict


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    sql = SqlStore(f"sqlite:///{tmp_path / 'imgaudit.db'}")
    yield sql
    sql.close()


def _signals(i: int) -> DedupSignals:
    return DedupSignals(
        sha256=f"{i:064x}",
        pixel_sha256=f"p{i:063x}",
        phash=2**63 + i,
        embedding=np.full(8, i / 8, np.float32),
    )


def _done(item: int, i: int, of: int | None = None) -> Completion:
    verdict = (
        Verdict(Decision.DUPLICATE, Stage.EMBEDDING, 0.97, of, {"cosine": 0.97})
        if of is not None
        else Verdict(Decision.UNIQUE, Stage.NONE, None, None, {})
    )
    return Completion(
        id=item, signals=_signals(i), verdict=verdict, format="JPEG", width=10, height=20, indexed=of is None
    )


@pytest.fixture
def filled(store: Store) -> Store:
    """/a unique, /b a duplicate of /a, /c failed for good, /d failed (will be retried), /e queued."""
    refs = [ImageRef(u) for u in ("/a", "/b", "/c", "/d", "/e")]
    assert ItemsService(store).enqueue(refs, "folder") == (5, 0)
    a, b, c, d = (claimed.id for claimed in store.claim("w1", 4, 60))
    store.finish(
        [_done(a, 1), _done(b, 2, of=a)],
        [Failure(id=c, error=CorruptImage("truncated")), Failure(id=d, error=FetchTimeout())],
        max_attempts=3,
        worker="w1",
    )
    return store


def test_find_by_any_key_or_a_later_spelling(filled: Store) -> None:
    items = ItemsService(filled)
    a = items.find("/a")
    assert items.find(str(a.id)).uri == "/a"
    asked: list[str] = []

    def spellings() -> Iterator[str]:
        asked.append("looked")
        yield "/nope"
        yield "/b"

    assert items.find("/a", also=spellings()).uri == "/a" and not asked  # lazily: not needed here
    assert items.find("relative/b", also=spellings()).uri == "/b" and asked
    with pytest.raises(NotFound, match="no item matches 'missing'"):
        items.find("missing", also=["/also-missing"])


def test_explain_names_the_original(filled: Store) -> None:
    items = ItemsService(filled)
    found = items.explain("/b")
    assert found.item.decision == "duplicate" and found.original is not None and found.original.uri == "/a"
    row = found.as_dict()
    assert list(row) == [*EXPLAINED, "original"]
    assert row["original"] == "/a" and row["stage"] == "embedding" and row["score"] == pytest.approx(0.97)
    unique = items.explain("/a")
    assert unique.original is None and unique.as_dict()["original"] is None
    failed = items.explain("/c").as_dict()
    assert failed["status"] == "failed_permanent" and failed["error_reason"] == "corrupt"


def test_history_is_the_record_and_its_events(filled: Store) -> None:
    found = ItemsService(filled).history("/b")
    assert [e["event"] for e in found.events] == ["claimed", "done"]
    row = found.as_dict()
    assert row["uri"] == "/b" and row["history"] == found.events
    assert {k: v for k, v in row.items() if k != "history"} == found.item.as_dict()


def test_requeue_failed(filled: Store) -> None:
    items = ItemsService(filled)
    assert items.requeue_failed() == 1  # the timeout
    assert items.find("/d").status == "queued" and items.find("/c").status == "failed_permanent"
    assert items.requeue_failed(permanent=True) == 1
    assert items.find("/c").status == "queued"


def test_stats(filled: Store) -> None:
    s = StatsService(filled).stats()
    assert s.counts["status"] == {"done": 2, "failed_permanent": 1, "failed_retryable": 1, "queued": 1}
    assert s.total == 5 and s.indexed == 1
    assert s.queue_depth == 2 == StatsService(filled).queue_depth()  # queued + waiting for a retry
    assert s.duplicate_rate == 0.5
    assert [w["worker"] for w in s.workers] == ["w1"] and s.in_flight == {}
    assert s.throughput["last_minute"]["processed"] == 4
    row = s.as_dict()
    assert list(row) == [
        *s.counts,
        "indexed",
        "total",
        "queue_depth",
        "duplicate_rate",
        "throughput",
        "workers",
        "in_flight",
        "since",
    ]
    assert row["since"] is None and row["queue_depth"] == 2


def test_stats_since_and_of_an_empty_store(store: Store) -> None:
    empty = StatsService(store).stats(utcnow() - timedelta(hours=1))
    assert empty.total == empty.queue_depth == empty.indexed == 0 and empty.duplicate_rate == 0.0
    assert empty.since is not None and empty.as_dict()["since"] == empty.since.isoformat()


def test_queue_depth_counts_what_still_has_work_ahead() -> None:
    assert (
        queue_depth({"queued": 2, "processing": 3, "failed_retryable": 4, "done": 9, "failed_permanent": 1})
        == 9
    )
    assert queue_depth({}) == 0


def test_enqueue_source_queues_a_folder_or_a_list(store: Store, tmp_path: Path) -> None:
    """What ``imgaudit enqueue TARGET`` queues: a folder's images, a list's URLs (relative ones on the CDN
    base); a missing target fails before any store is opened."""
    folder = tmp_path / "shop"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        (folder / name).write_bytes(b"not decoded at enqueue time")
    urls = tmp_path / "urls.txt"
    urls.write_text("https://img.example/x.jpg\n/relative/y.jpg\n")
    settings = Settings(fetch={"cdn_base": "https://cdn.example"})
    items = ItemsService(store)
    assert items.enqueue_source(open_source(settings, str(folder))) == (2, 0)
    assert items.enqueue_source(open_source(settings, str(folder))) == (0, 2)
    assert items.enqueue_source(open_source(settings, str(urls))) == (2, 0)
    assert items.find("https://cdn.example/relative/y.jpg").uri == "https://cdn.example/relative/y.jpg"
    with pytest.raises(FileNotFoundError):
        open_source(settings, str(tmp_path / "missing"))
