"""What every ``Store`` does, observed through its public methods only: queue, decisions, items, stats,
cursors and write-back, search feed. Each test runs over memory, SQLite and (when configured)
PostgreSQL; the values asserted are the SQL store's."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from imgaudit.errors import CorruptImage, FetchTimeout, NotFound
from imgaudit.store.ports import Store
from imgaudit.store.schema import utcnow
from imgaudit.types import (
    Completion,
    Decision,
    DedupSignals,
    Failure,
    ImageRef,
    Moderation,
    ModerationSignals,
    ModerationVerdict,
    OcrLine,
    Reason,
    Stage,
    Status,
    Verdict,
)

EXPIRED = -5  # a lease that has already run out: how a test stands for a worker that died


def signals(i: int) -> DedupSignals:
    return DedupSignals(
        sha256=f"{i:064x}",
        pixel_sha256=f"p{i:063x}",
        phash=2**63 + i,
        embedding=np.full(8, i / 8, np.float32),
    )


def unique(item: int, i: int, **extra: Any) -> Completion:
    return Completion(
        id=item,
        signals=signals(i),
        verdict=Verdict(Decision.UNIQUE, Stage.NONE, None, None, {}),
        format="JPEG",
        width=10,
        height=20,
        indexed=True,
        **extra,
    )


def duplicate(item: int, i: int, of: int, stage: Stage = Stage.EMBEDDING) -> Completion:
    return Completion(
        id=item,
        signals=signals(i),
        verdict=Verdict(Decision.DUPLICATE, stage, 0.97, of, {"cosine": 0.97, "bad": float("nan")}),
        format="PNG",
        width=30,
        height=40,
        indexed=False,
    )


def item_id(store: Store, key: str) -> int:
    rec = store.find(key)
    assert rec is not None
    return rec.id


def enqueue_and_claim(store: Store, *uris: str, worker: str = "w") -> list[int]:
    store.enqueue([ImageRef(u) for u in uris], "folder")
    return [c.id for c in store.claim(worker, len(uris), 60)]


# -- queue: enqueue ------------------------------------------------------------------------------------


def test_enqueue_skips_known_uris_and_numbers_items_in_order(store: Store) -> None:
    assert store.enqueue([ImageRef("/a"), ImageRef("/b"), ImageRef("/a")], "folder") == (2, 1)
    assert store.enqueue([ImageRef("/b"), ImageRef("/c")], "folder") == (1, 1)
    assert store.counts()["status"] == {"queued": 3}
    a, b, c = (store.find(u) for u in ("/a", "/b", "/c"))
    assert a is not None and b is not None and c is not None
    assert a.id < b.id < c.id
    assert (a.source, a.kind, a.status, a.attempts, a.external_key) == ("folder", "path", "queued", 0, None)
    assert a.decision is None and a.processed_at is None and not a.indexed and a.writeback is None
    assert a.created_at <= utcnow()
    assert store.events(a.id) == []


def test_enqueue_counts_duplicates_across_chunks_as_skips(store: Store) -> None:
    refs = [ImageRef(f"/{i}") for i in range(1000)] + [ImageRef("/0"), ImageRef("/new")]
    result = store.enqueue(refs, "folder")
    assert (result.added, result.skipped, result.refused) == (1001, 1, 0)


def test_external_rows_are_known_by_their_key(store: Store) -> None:
    url = "https://cdn.example/same.jpg"
    refs = [ImageRef(url, "key", "k1"), ImageRef(url, "key", "k2"), ImageRef(url, "key", "k1")]
    assert store.enqueue(refs, "t@db") == (2, 1)
    assert store.enqueue([ImageRef(url, "key", "k1")], "other@db") == (1, 0)  # another table's k1
    rec = store.find("k2")
    assert rec is not None and (rec.uri, rec.kind, rec.external_key, rec.source) == (url, "key", "k2", "t@db")
    assert store.find_by_uri(url) is None  # a key row's identity is its key, not its URL
    claimed = store.claim("w", 10, 60)
    assert [(c.ref.uri, c.ref.kind, c.ref.external_key) for c in claimed] == [
        (url, "key", "k1"),
        (url, "key", "k2"),
        (url, "key", "k1"),
    ]


def test_captions_and_meta_are_kept(store: Store) -> None:
    store.enqueue([ImageRef("/c.jpg", caption="a red bus", meta={"tags": ("bus", "red"), "n": 2})], "folder")
    rec = store.find("/c.jpg")
    assert rec is not None and rec.caption == "a red bus" and rec.meta == {"tags": ["bus", "red"], "n": 2}


def test_refused_entries_are_failed_items_at_once(store: Store) -> None:
    refused = ImageRef.refused("/imgs/loop.jpg", "path", "symlink_loop", "/imgs/loop.jpg: symlink loop")
    result = store.enqueue([ImageRef("/a"), refused, ImageRef("/b")], "folder")
    assert result == (2, 0) and result.refusals == {"symlink_loop": 1}
    rec = store.find("/imgs/loop.jpg")
    assert rec is not None and rec.status == Status.FAILED_PERMANENT and rec.attempts == 0
    assert (rec.error_reason, rec.last_error) == ("symlink_loop", "/imgs/loop.jpg: symlink loop")
    assert rec.processed_at is not None and rec.writeback is None
    assert [(e["event"], e["worker"], e["detail"]) for e in store.events(rec.id)] == [
        ("failed_permanent", None, "refused at enqueue: symlink_loop: /imgs/loop.jpg: symlink loop")
    ]
    assert store.counts()["error"] == {"symlink_loop": 1}
    assert [c.ref.uri for c in store.claim("w", 10, 60)] == ["/a", "/b"]  # never claimed
    assert store.requeue_failed(permanent=True) == 0  # retrying a refusal cannot succeed
    assert store.enqueue([refused], "folder") == (0, 1)


def test_what_the_database_cannot_hold_fails_only_its_own_item(store: Store) -> None:
    bad = ImageRef("https://a.example/\udcff.jpg", "url")
    long_key = ImageRef("https://a.example/k.jpg", "key", "k" * 300)
    refused_key = ImageRef("https://a.example/r.jpg", "key", "r1", error_reason="bad_url", error_message="no")
    captioned = ImageRef("/c.jpg", caption="from a sidecar \ud800", meta={"k\x00": "\udcff"})
    result = store.enqueue([bad, ImageRef("/a"), long_key, captioned, refused_key], "t")
    assert result == (2, 0) and result.refusals == {"bad_uri": 1, "bad_key": 1, "bad_url": 1}
    assert store.counts()["status"] == {"queued": 2, "failed_permanent": 3}
    # A refused key goes back to its business table (on_failure); a key not stored exactly cannot.
    assert [(r.external_key, key) for r, key in store.pending_writebacks(10)] == [("r1", None)]
    a, c = store.claim("w", 10, 60)
    rec = store.get(c.id)
    assert rec.caption == "from a sidecar \\ud800" and rec.meta == {"k\\x00": "\\xff"}
    store.finish([], [Failure(id=a.id, error=CorruptImage("cannot read /imgs/\udcff.jpg \x00"))], 1)
    assert store.get(a.id).last_error == "cannot read /imgs/\\xff.jpg \\x00"


def test_a_path_that_is_not_utf8_is_stored_losslessly(store: Store) -> None:
    raw = os.fsdecode(b"/imgs/caf\xe9 100%.jpg")
    literal = "file:odd%41.jpg"
    assert store.enqueue([ImageRef(raw), ImageRef(literal), ImageRef("/imgs/café.jpg")], "folder") == (3, 0)
    claimed = {c.ref.uri: c.id for c in store.claim("w", 10, 60)}
    assert set(claimed) == {raw, literal, "/imgs/café.jpg"}
    rec = store.get(claimed[raw])
    assert rec.uri == "file:/imgs/caf%E9 100%25.jpg"
    assert store.find_by_uri(raw) == rec and store.find(rec.uri) == rec
    assert store.get(claimed[literal]).uri == "file:file:odd%2541.jpg"
    assert store.find(literal) == store.get(claimed[literal])
    assert store.enqueue([ImageRef(raw)], "folder") == (0, 1)


# -- queue: claims and leases --------------------------------------------------------------------------


def test_claims_are_exclusive_in_id_order_and_count_attempts(store: Store) -> None:
    store.enqueue([ImageRef(f"/{i}") for i in range(5)], "folder")
    a = store.claim("w1", 3, 60)
    b = store.claim("w2", 3, 60)
    assert [c.ref.uri for c in a] == ["/0", "/1", "/2"] and [c.ref.uri for c in b] == ["/3", "/4"]
    assert store.claim("w3", 3, 60) == []
    assert all(c.attempts == 1 for c in a + b)
    assert store.claim("w3", 0, 60) == []
    rec = store.get(a[0].id)
    assert rec.status == Status.PROCESSING and rec.attempts == 1
    assert [(e["event"], e["worker"], e["detail"]) for e in store.events(a[0].id)] == [
        ("claimed", "w1", "attempt 1")
    ]
    assert store.counts()["status"] == {"processing": 5}
    assert store.activity()["in_flight"] == {"w1": 3, "w2": 2}


def test_an_expired_lease_is_taken_over_and_the_attempt_counts(store: Store) -> None:
    store.enqueue([ImageRef("/a"), ImageRef("/b")], "folder")
    (first,) = store.claim("dead", 1, EXPIRED)
    assert store.leases() == []  # an expired lease is no one's
    again, other = store.claim("w2", 5, 60)
    assert (again.id, again.attempts, other.attempts) == (first.id, 2, 1)
    assert [(e["event"], e["worker"], e["detail"]) for e in store.events(first.id)] == [
        ("claimed", "dead", "attempt 1"),
        ("lease_expired", "dead", None),
        ("claimed", "w2", "attempt 2"),
    ]
    # The late worker's result is refused: the item is no longer its own.
    assert store.finish([unique(first.id, 1)], [], 3, "dead") == [first.id]
    assert store.get(first.id).status == Status.PROCESSING
    assert store.finish([unique(first.id, 1)], [], 3, "w2") == []
    assert store.get(first.id).processed_by == "w2"


def test_heartbeat_extends_only_our_leases(store: Store) -> None:
    store.enqueue([ImageRef("/a"), ImageRef("/b"), ImageRef("/c")], "folder")
    a, b = store.claim("w1", 2, EXPIRED)
    assert store.extend_leases("someone-else", [a.id, b.id], 60) == 0
    assert store.extend_leases("w1", [a.id], 60) == 1
    assert store.extend_leases("w1", [], 60) == 0
    c_id = item_id(store, "/c")
    assert store.extend_leases("w1", [c_id], 60) == 0  # queued, not held
    taken = store.claim("w2", 5, 60)
    assert [t.id for t in taken] == [b.id, c_id]  # b's lease had run out and was not extended
    (lease_w1,) = [lease for lease in store.leases() if lease.worker == "w1"]
    assert lease_w1.items == 1 and timedelta(seconds=50) < lease_w1.until - utcnow() <= timedelta(seconds=60)


def test_leases_of_a_gone_claimer_can_end_at_once(store: Store) -> None:
    store.enqueue([ImageRef("/a"), ImageRef("/b"), ImageRef("/c")], "folder")
    store.claim("dead", 2, 300)
    store.claim("alive", 1, 60)
    leases = store.leases()
    assert [(lease.worker, lease.items) for lease in leases] == [("alive", 1), ("dead", 2)]
    assert timedelta(seconds=290) < leases[1].until - utcnow() <= timedelta(seconds=300)
    assert store.claim("rerun", 10, 60) == []
    assert store.expire_leases(["dead", "nobody"]) == 2
    again = store.claim("rerun", 10, 60)
    assert len(again) == 2 and all(c.attempts == 2 for c in again)
    assert [e["event"] for e in store.events(again[0].id)] == [
        "claimed",
        "claimer_gone",
        "lease_expired",
        "claimed",
    ]
    assert store.events(again[0].id)[1]["worker"] == "dead"
    assert [lease.worker for lease in store.leases()] == ["alive", "rerun"]
    assert store.expire_leases([]) == 0
    assert store.expire_leases(["dead"]) == 0


def test_release_gives_items_back_without_counting_an_attempt(store: Store) -> None:
    a, b = enqueue_and_claim(store, "/a", "/b")
    store.finish([unique(b, 1)], [], 3)
    store.release([a, b, 12345])
    ra, rb = store.get(a), store.get(b)
    assert (ra.status, ra.attempts) == (Status.QUEUED, 0)
    assert (rb.status, rb.attempts) == (Status.DONE, 1)  # only held items go back
    assert store.leases() == []
    (again,) = store.claim("w", 5, 60)
    assert (again.id, again.attempts) == (a, 1)
    store.release([])


# -- decisions -------------------------------------------------------------------------------------------


def test_finish_records_signals_and_verdicts(store: Store) -> None:
    a, b = enqueue_and_claim(store, "/a", "/b")
    assert store.finish([unique(a, 1), duplicate(b, 2, a)], [], 3, "w") == []
    ra, rb = store.get(a), store.get(b)
    assert (ra.status, ra.decision, ra.stage, ra.score, ra.duplicate_of) == (
        "done",
        "unique",
        "none",
        None,
        None,
    )
    assert (ra.sha256, ra.format, ra.width, ra.height, ra.phash) == (f"{1:064x}", "JPEG", 10, 20, 2**63 + 1)
    assert ra.indexed and ra.evidence is None and ra.processed_by == "w" and ra.processed_at is not None
    assert ra.attempts == 1 and ra.error_reason is None and ra.writeback is None and ra.moderation is None
    assert (rb.decision, rb.stage, rb.score, rb.duplicate_of) == ("duplicate", "embedding", 0.97, a)
    assert rb.evidence == {"cosine": 0.97} and not rb.indexed and rb.format == "PNG"
    assert store.count_indexed() == 1
    ((ids, phashes, embs),) = list(store.iter_indexed())
    assert ids.tolist() == [a] and phashes == [2**63 + 1] and embs.dtype == np.float32
    assert np.allclose(embs, np.full((1, 8), 1 / 8))
    assert [(e["event"], e["worker"], e["detail"]) for e in store.events(b)][-1] == (
        "done",
        "w",
        f"duplicate (embedding) of #{a}",
    )
    assert store.events(a)[-1]["detail"] == "unique (none)"
    assert [(d.id, o.id) for d, o in store.duplicate_pairs()] == [(b, a)]
    assert store.copies_of([a, b, 999]) == {a: [b]}
    assert store.copies_of([]) == {}


def test_iter_indexed_pages_in_id_order(store: Store) -> None:
    ids = enqueue_and_claim(store, *(f"/{i}" for i in range(5)))
    store.finish([unique(i, n) for n, i in enumerate(ids)], [], 3)
    pages = list(store.iter_indexed(batch=2))
    assert [p[0].tolist() for p in pages] == [ids[0:2], ids[2:4], ids[4:5]]
    assert [p[1] for p in pages][2] == [2**63 + 4] and pages[0][2].shape == (2, 8)


def test_exact_lookups_point_at_the_root_original(store: Store) -> None:
    a, b, c = enqueue_and_claim(store, "/a", "/b", "/c")
    assert store.find_exact(signals(1).sha256, "none") is None  # nothing finished yet
    store.finish([unique(a, 1), duplicate(b, 2, a)], [], 3)
    assert store.find_exact(signals(1).sha256, "none") == (a, "exact_bytes")
    assert store.find_exact(signals(2).sha256, "none") == (a, "exact_bytes")  # a copy of a copy
    assert store.find_exact("none", signals(1).pixel_sha256) == (a, "exact_pixels")
    assert store.find_exact(signals(2).sha256, signals(1).pixel_sha256) == (a, "exact_bytes")
    assert store.find_exact("none", "none") is None
    with store.decision_lock() as tx:
        find = tx.exact_finder([signals(2).sha256, "x"], ["y", signals(1).pixel_sha256])
        assert find(signals(2).sha256, "y") == (a, "exact_bytes")
        assert find("x", signals(1).pixel_sha256) == (a, "exact_pixels")
        assert find("x", "y") is None
        assert tx.find_exact("none", signals(2).pixel_sha256) == (a, "exact_pixels")
        tx.finish([unique(c, 3)], [], 3)


def test_the_index_log_and_the_search_feed_follow_finished_items(store: Store) -> None:
    a, b, c = enqueue_and_claim(store, "/a", "/b", "/c")
    assert (store.last_index_seq(), store.last_search_seq()) == (0, 0)
    assert store.index_changes(0) == [] and store.search_feed(0) == []
    store.finish([unique(a, 1), duplicate(b, 2, a)], [Failure(id=c, error=CorruptImage())], 3)
    (change,) = store.index_changes(0)
    assert (change.image_id, change.op, change.phash) == (a, "add", 2**63 + 1)
    assert change.embedding is not None and np.allclose(change.embedding, np.full(8, 1 / 8))
    assert store.last_index_seq() == change.seq and store.index_changes(change.seq) == []
    feed = store.search_feed(0)
    assert [rec.id for _, rec in feed] == [a, b]  # finished items, failures not among them
    assert feed[0][0] < feed[1][0] == store.last_search_seq()
    assert store.search_feed(feed[0][0]) == feed[1:]
    assert store.search_feed(0, limit=1) == feed[:1]
    assert feed[1][1] == store.get(b)


def test_the_decision_lock_sees_its_own_writes(store: Store) -> None:
    a, b = enqueue_and_claim(store, "/a", "/b")
    with store.decision_lock() as tx:
        assert tx.index_changes(0) == [] and tx.last_seq() == 0 and tx.count_indexed() == 0
        assert tx.finish([unique(a, 1), unique(b, 2)], [], 3, "w") == []
        assert tx.count_indexed() == 2
        changes = tx.index_changes(0)
        assert [ch.image_id for ch in changes] == [a, b] and tx.last_seq() == changes[-1].seq
    assert store.last_index_seq() == store.index_changes(0)[-1].seq


def test_a_decision_that_raises_writes_nothing(store: Store) -> None:
    a, b = enqueue_and_claim(store, "/a", "/b")
    with pytest.raises(RuntimeError), store.decision_lock() as tx:
        tx.finish([unique(a, 1)], [Failure(id=b, error=CorruptImage())], 3, "w")
        raise RuntimeError("the batch broke after writing")
    assert store.get(a).status == store.get(b).status == Status.PROCESSING
    assert store.get(a).decision is None and store.get(b).error_reason is None
    assert (store.last_index_seq(), store.last_search_seq(), store.count_indexed()) == (0, 0, 0)
    assert [e["event"] for e in store.events(a)] == ["claimed"]
    assert store.finish([unique(a, 1)], [], 3, "w") == []
    assert store.get(a).status == Status.DONE


def test_finish_writes_only_what_the_worker_still_holds(store: Store) -> None:
    a, b = enqueue_and_claim(store, "/a", "/b", worker="w1")
    store.enqueue([ImageRef("/q")], "folder")
    q = item_id(store, "/q")
    assert store.finish([unique(a, 1), unique(q, 9)], [Failure(id=b, error=CorruptImage())], 3, "w2") == [
        a,
        q,
        b,
    ]
    assert store.get(a).status == Status.PROCESSING and store.last_search_seq() == 0
    assert store.finish([], [], 3, "w1") == []
    assert store.finish([unique(a, 1)], [], 3) == []  # no worker given: whoever holds it
    assert store.get(a).processed_by is None and store.get(a).status == Status.DONE
    assert store.finish([unique(a, 1)], [], 3) == [a]  # done already


def test_moderation_results_are_recorded(store: Store) -> None:
    (a,) = enqueue_and_claim(store, "/a")
    box = ((0, 0), (10, 0), (10, 5), (0, 5))
    ms = ModerationSignals(ocr=(OcrLine("call 138", 0.98, box), OcrLine("now", 0.5, box)), nsfw=0.125)
    reasons = tuple(
        Reason(f"cat{i}", Moderation.REVIEW, f"m{i}", 0.5, {"tuple": (1, 2)} if i == 0 else {})
        for i in range(6)
    )
    verdict = ModerationVerdict(Moderation.REVIEW, reasons)
    done = unique(
        a,
        1,
        moderation_signals=ms,
        moderation=verdict,
        labels=[[3, 0.75], [7, 0.25]],
        colours=[("red", "红", 0.5)],
        clip_embedding=np.ones(4, np.float32),
        ai_caption="a cat\x00",
    )
    store.finish([done], [], 3)
    rec = store.get(a)
    assert rec.moderation == "review" and rec.ocr_text == "call 138\nnow"
    assert rec.reasons is not None and len(rec.reasons) == 6
    assert rec.reasons[0] == {
        "category": "cat0",
        "decision": "review",
        "message": "m0",
        "score": 0.5,
        "evidence": {"tuple": [1, 2]},
    }
    assert rec.moderation_signals is not None and rec.moderation_signals["nsfw"] == 0.125
    assert rec.moderation_signals["ocr"][0] == {
        "text": "call 138",
        "score": 0.98,
        "box": [list(p) for p in box],
    }
    assert rec.labels == [[3, 0.75], [7, 0.25]] and rec.colours == [["red", "红", 0.5]]
    assert rec.clip_embedding == np.ones(4, np.float16).tobytes() and rec.ai_caption == "a cat\\x00"
    assert store.events(a)[-1]["detail"] == (
        "unique (none); moderation review: cat0: m0; cat1: m1; cat2: m2; cat3: m3; cat4: m4"
    )
    assert "clip_embedding" not in rec.as_dict()
    (facets,) = store.facets([a, 999]).values()
    assert (facets.id, facets.status, facets.decision, facets.moderation, facets.source) == (
        a,
        "done",
        "unique",
        "review",
        "folder",
    )
    assert (
        bool(facets.has_text)
        and facets.labels == [[3, 0.75], [7, 0.25]]
        and facets.created_at == rec.created_at
    )
    assert store.counts()["moderation"] == {"review": 1}


def test_failures_retry_until_attempts_run_out(store: Store) -> None:
    slow, bad = enqueue_and_claim(store, "/slow", "/bad")
    failures = [Failure(id=slow, error=FetchTimeout()), Failure(id=bad, error=CorruptImage("truncated"))]
    assert store.finish([], failures, 2, "w") == []
    rs, rb = store.get(slow), store.get(bad)
    assert (rs.status, rs.error_reason, rs.last_error) == (
        "failed_retryable",
        "timeout",
        "The server was too slow.",
    )
    assert (rb.status, rb.error_reason, rb.last_error) == ("failed_permanent", "corrupt", "truncated")
    assert rs.processed_by == "w" and rs.processed_at is not None and rs.decision is None
    assert store.events(slow)[-1] == {
        "at": store.events(slow)[-1]["at"],
        "event": "failed_retryable",
        "worker": "w",
        "detail": "timeout: The server was too slow.",
    }
    assert store.claim("w", 2, 60) == []  # the back-off is not over
    assert store.counts()["error"] == {"timeout": 1, "corrupt": 1}
    assert store.requeue_failed() == 1
    rs = store.get(slow)
    assert (rs.status, rs.attempts, rs.error_reason) == ("queued", 0, "timeout")  # the last error stays
    (again,) = store.claim("dead", 2, EXPIRED)
    (again,) = store.claim("w", 2, 60)  # the abandoned attempt counted
    assert (again.id, again.attempts) == (slow, 2)
    store.finish([], [Failure(id=slow, error=FetchTimeout())], 2, "w")
    assert store.get(slow).status == Status.FAILED_PERMANENT  # max_attempts reached
    assert store.requeue_failed() == 0
    assert store.requeue_failed(permanent=True) == 2
    assert store.counts()["status"] == {"queued": 2}


# -- external sources: write-back and cursors -----------------------------------------------------------


def test_external_verdicts_wait_for_write_back(store: Store) -> None:
    store.enqueue([ImageRef(f"https://cdn/{k}.jpg", "key", k) for k in ("k1", "k2", "k3", "k4")], "t@db")
    store.enqueue([ImageRef("/local.jpg")], "folder")
    k1, k2, k3, k4, local = (c.id for c in store.claim("w", 10, 60))
    store.finish(
        [unique(k1, 1), duplicate(k2, 2, k1), unique(local, 5), duplicate(k3, 3, local)],
        [Failure(id=k4, error=FetchTimeout())],
        3,
    )
    pending = store.pending_writebacks(10)
    # The original's key only when it came from the same table; a retryable failure is not final.
    assert [(r.id, key) for r, key in pending] == [(k1, None), (k2, "k1"), (k3, None)]
    assert pending[1][0] == store.get(k2) and store.get(local).writeback is None
    assert [r.id for r, _ in store.pending_writebacks(2)] == [k1, k2]
    store.mark_written([k1, k2])
    assert [r.id for r, _ in store.pending_writebacks(10)] == [k3]
    assert store.get(k1).writeback == "done"
    assert [(e["event"], e["worker"], e["detail"]) for e in store.events(k1)][-1] == (
        "written_back",
        None,
        None,
    )
    store.mark_written([])
    assert store.requeue_failed() == 1
    assert [(c.id, c.attempts) for c in store.claim("dead", 1, EXPIRED)] == [(k4, 1)]
    assert [(c.id, c.attempts) for c in store.claim("w", 1, EXPIRED)] == [(k4, 2)]
    assert [(c.id, c.attempts) for c in store.claim("w", 1, 60)] == [(k4, 3)]
    store.finish([], [Failure(id=k4, error=FetchTimeout())], 3, "w")  # third attempt of three: final
    assert [r.id for r, _ in store.pending_writebacks(10)] == [k3, k4]


def test_cursors_are_upserted(store: Store) -> None:
    assert store.get_cursor("external:t") is None
    store.set_cursor("external:t", "5")
    store.set_cursor("external:t", "9")
    store.set_cursor("external:u", "a")
    assert (store.get_cursor("external:t"), store.get_cursor("external:u")) == ("9", "a")


# -- items and stats ---------------------------------------------------------------------------------------


def test_items_are_found_by_id_key_or_uri(store: Store) -> None:
    store.enqueue([ImageRef("/a"), ImageRef("/b")], "folder")
    store.enqueue([ImageRef("https://cdn/x.jpg", "key", "/a")], "t")  # a key that reads like a path
    a, b = store.find("/a"), store.find("/b")
    assert a is not None and b is not None
    assert store.find(str(b.id)) == b and store.find("/nothing") is None and store.find("999999") is None
    assert store.find_by_uri("/a") == a  # the key row's identity is its key
    key_row = store.find("https://cdn/x.jpg")
    assert key_row is None  # a key row is found by its key, which "/a" matches first as a path
    assert store.get_many([b.id, a.id, 424242]) == {a.id: a, b.id: b} and store.get_many([]) == {}
    assert store.facets([]) == {}
    with pytest.raises(NotFound):
        store.get(424242)


def test_counts_and_activity_cover_what_was_processed_since(store: Store) -> None:
    before = utcnow()
    a, b = enqueue_and_claim(store, "/a", "/b", worker="w1")
    c, d = enqueue_and_claim(store, "/c", "/d", worker="w2")
    store.finish([unique(a, 1), duplicate(b, 2, a, Stage.PHASH)], [], 3, "w1")
    store.finish([duplicate(c, 3, a)], [Failure(id=d, error=CorruptImage())], 3, "w2")
    later = utcnow() + timedelta(hours=1)
    store.enqueue([ImageRef("/e")], "folder")
    counts = store.counts()
    assert counts == {
        "status": {"done": 3, "failed_permanent": 1, "queued": 1},
        "decision": {"duplicate": 2, "unique": 1},
        "duplicate_stage": {"embedding": 1, "phash": 1},
        "moderation": {},
        "error": {"corrupt": 1},
    }
    assert list(counts["decision"]) == ["duplicate", "unique"]  # most first
    assert store.counts(since=before) == counts
    assert store.counts(since=later) == {
        "status": {"done": 3, "failed_permanent": 1, "queued": 1},
        "decision": {},
        "duplicate_stage": {},
        "moderation": {},
        "error": {},
    }
    act = store.activity()
    assert act["last_minute"] == {"processed": 4, "per_minute": 4.0}
    assert act["last_hour"] == {"processed": 4, "per_minute": 0.07}
    assert act["last_day"] == {"processed": 4, "per_minute": 0.0}
    assert sorted((w["worker"], w["processed"]) for w in act["workers"]) == [("w1", 2), ("w2", 2)]
    assert all(w["last_at"] is not None for w in act["workers"]) and act["in_flight"] == {}
    assert store.activity(since=later)["workers"] == []
    assert sorted(map(str, store.activity(since=before)["workers"])) == sorted(map(str, act["workers"]))


def test_activity_orders_workers_by_volume(store: Store) -> None:
    (a,) = enqueue_and_claim(store, "/a", worker="few")
    b, c = enqueue_and_claim(store, "/b", "/c", worker="many")
    store.finish([unique(a, 1)], [], 3, "few")
    store.finish([unique(b, 2), unique(c, 3)], [], 3, "many")
    workers = store.activity()["workers"]
    assert [(w["worker"], w["processed"]) for w in workers] == [("many", 2), ("few", 1)]
    processed_at = store.get(a).processed_at
    assert processed_at is not None and workers[1]["last_at"] == processed_at.isoformat()


def test_duplicate_pairs_are_in_id_order_and_limited(store: Store) -> None:
    a, b, c = enqueue_and_claim(store, "/a", "/b", "/c")
    store.finish([unique(a, 1), duplicate(c, 3, a), duplicate(b, 2, a)], [], 3)
    assert [(d.id, o.id) for d, o in store.duplicate_pairs()] == [(b, a), (c, a)]
    assert [(d.id, o.id) for d, o in store.duplicate_pairs(limit=1)] == [(b, a)]
    assert store.copies_of([a]) == {a: [b, c]}


# -- reset and concurrency -----------------------------------------------------------------------------


def test_reset_empties_everything_and_sequences_go_on(store: Store) -> None:
    a, b = enqueue_and_claim(store, "/a", "/b")
    store.finish([unique(a, 1), duplicate(b, 2, a)], [], 3)
    store.set_cursor("c", "1")
    old_index, old_search = store.last_index_seq(), store.last_search_seq()
    store.reset()
    assert store.counts()["status"] == {} and store.get_cursor("c") is None
    assert (store.last_index_seq(), store.last_search_seq(), store.count_indexed()) == (0, 0, 0)
    assert store.find("/a") is None and store.events(a) == [] and store.duplicate_pairs() == []
    assert list(store.iter_indexed()) == [] and store.leases() == []
    (n,) = enqueue_and_claim(store, "/a")
    store.finish([unique(n, 1)], [], 3)
    assert store.index_changes(0)[0].seq > old_index and store.search_feed(0)[0][0] > old_search


def test_concurrent_enqueues_and_claims_do_not_collide(store: Store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    refs = [ImageRef(f"/same/{i}") for i in range(300)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: store.enqueue(refs, "folder"), range(4)))
    assert sum(added for added, _ in results) == 300
    assert all(added + skipped == 300 for added, skipped in results)
    with ThreadPoolExecutor(4) as pool:
        claims = list(pool.map(lambda w: store.claim(f"w{w}", 100, 60), range(4)))
    ids = [c.id for batch in claims for c in batch]
    assert len(ids) == len(set(ids)) == 300
    assert store.counts()["status"] == {"processing": 300}
