"""The store's queue state machine: enqueue, claim with a lease, finish, fail, retry, release."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import event, update
from sqlalchemy.exc import DataError, IntegrityError, InvalidRequestError, OperationalError

from imgaudit.errors import CorruptImage, FetchTimeout, NotFound, StoreUnavailable
from imgaudit.store.ports import (
    CursorStore,
    DecisionStore,
    ItemStore,
    QueueStore,
    SearchFeedStore,
    StatsStore,
)
from imgaudit.store.schema import ImageRow, utcnow
from imgaudit.store.sql import SqlStore
from imgaudit.types import Completion, Decision, DedupSignals, Failure, ImageRef, Stage, Status, Verdict


@pytest.fixture
def store(database_url: str) -> SqlStore:
    s = SqlStore(database_url)
    yield s
    s.close()


def signals(i: int) -> DedupSignals:
    return DedupSignals(f"{i:064x}", f"p{i:063x}", 2**63 + i, np.full(8, 0.25, np.float32))


def complete(item_id: int, i: int, decision=Decision.UNIQUE, dup=None) -> Completion:
    stage = Stage.NONE if decision == Decision.UNIQUE else Stage.EMBEDDING
    return Completion(
        id=item_id,
        signals=signals(i),
        verdict=Verdict(decision, stage, 0.9, dup),
        format="JPEG",
        width=10,
        height=20,
        indexed=decision == Decision.UNIQUE,
    )


def test_enqueue_skips_known_uris(store: SqlStore) -> None:
    assert store.enqueue([ImageRef("/a"), ImageRef("/b"), ImageRef("/a")], "folder") == (2, 1)
    assert store.enqueue([ImageRef("/b"), ImageRef("/c")], "folder") == (1, 1)
    assert store.counts()["status"] == {"queued": 3}


def test_claims_are_exclusive_and_in_order(store: SqlStore) -> None:
    store.enqueue([ImageRef(f"/{i}") for i in range(5)], "folder")
    a = store.claim("w1", 3, 60)
    b = store.claim("w2", 3, 60)
    assert [c.ref.uri for c in a] == ["/0", "/1", "/2"]
    assert [c.ref.uri for c in b] == ["/3", "/4"]
    assert store.claim("w3", 3, 60) == []
    assert all(c.attempts == 1 for c in a + b)


def test_expired_lease_is_reclaimed(store: SqlStore) -> None:
    store.enqueue([ImageRef("/a")], "folder")
    (first,) = store.claim("dead-worker", 1, 60)
    with store._session() as s, s.begin():
        s.execute(update(ImageRow).values(lease_until=utcnow() - timedelta(seconds=1)))
    (again,) = store.claim("w2", 1, 60)
    assert again.id == first.id and again.attempts == 2


def test_finish_records_signals_and_verdicts(store: SqlStore) -> None:
    store.enqueue([ImageRef("/a"), ImageRef("/b")], "folder")
    a, b = store.claim("w", 2, 60)
    store.finish([complete(a.id, 1), complete(b.id, 2, Decision.DUPLICATE, a.id)], [], 3)
    ra, rb = store.get(a.id), store.get(b.id)
    assert ra.status == Status.DONE and ra.indexed and ra.phash == 2**63 + 1
    assert rb.decision == "duplicate" and rb.duplicate_of == a.id and not rb.indexed
    assert store.count_indexed() == 1
    ((ids, phashes, embs),) = list(store.iter_indexed())
    assert ids.tolist() == [a.id] and phashes == [2**63 + 1] and embs.shape == (1, 8)
    assert store.find_exact(signals(1).sha256, "none") == (a.id, "exact_bytes")
    # An exact copy of a duplicate points at the root original.
    assert store.find_exact(signals(2).sha256, "none") == (a.id, "exact_bytes")
    assert store.find_exact("none", signals(1).pixel_sha256) == (a.id, "exact_pixels")
    assert [(d.id, o.id) for d, o in store.duplicate_pairs()] == [(b.id, a.id)]


def test_failures_retry_until_permanent(store: SqlStore) -> None:
    store.enqueue([ImageRef("/slow"), ImageRef("/bad")], "folder")
    slow, bad = store.claim("w", 2, 60)
    store.finish(
        [],
        [Failure(id=slow.id, error=FetchTimeout()), Failure(id=bad.id, error=CorruptImage("truncated"))],
        2,
    )
    assert store.get(slow.id).status == Status.FAILED_RETRYABLE
    rec = store.get(bad.id)
    assert (
        rec.status == Status.FAILED_PERMANENT
        and rec.error_reason == "corrupt"
        and "truncated" in rec.last_error
    )
    assert store.claim("w", 2, 60) == []  # back-off not over yet
    with store._session() as s, s.begin():
        s.execute(update(ImageRow).values(available_at=utcnow()))
    (again,) = store.claim("w", 2, 60)
    assert again.id == slow.id and again.attempts == 2
    store.finish([], [Failure(id=slow.id, error=FetchTimeout())], 2)
    assert store.get(slow.id).status == Status.FAILED_PERMANENT  # max_attempts reached
    assert store.requeue_failed() == 0
    assert store.requeue_failed(permanent=True) == 2
    assert store.counts()["status"] == {"queued": 2}


def test_release_gives_items_back_without_counting_an_attempt(store: SqlStore) -> None:
    store.enqueue([ImageRef("/a")], "folder")
    (c,) = store.claim("w", 1, 60)
    store.release([c.id])
    rec = store.get(c.id)
    assert rec.status == Status.QUEUED and rec.attempts == 0


def test_get_missing_raises(store: SqlStore) -> None:
    with pytest.raises(NotFound):
        store.get(12345)


def test_reset_empties_everything(store: SqlStore) -> None:
    store.enqueue([ImageRef("/a"), ImageRef("/b")], "folder")
    a, b = store.claim("w", 2, 60)
    store.finish([complete(a.id, 1), complete(b.id, 2, Decision.DUPLICATE, a.id)], [], 3)
    store.reset()
    assert store.counts()["status"] == {}


def test_migrations_are_idempotent(database_url: str) -> None:
    SqlStore(database_url).close()
    s = SqlStore(database_url)
    assert s.enqueue([ImageRef("/a")], "x") == (1, 0)
    s.close()


def test_upgrade_from_the_first_revision_keeps_rows(database_url: str) -> None:
    from alembic import command
    from sqlalchemy import inspect, text

    from imgaudit.store.db import alembic_config, make_engine

    url = database_url
    engine = make_engine(url)
    cfg = alembic_config(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO images (source, kind, uri, uri_hash, status, attempts, indexed, available_at, "
                "created_at, updated_at) VALUES ('f', 'path', '/old', 'h', 'queued', 0, 0, "
                "'2026-01-01 00:00:00', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
    assert "evidence" not in {c["name"] for c in inspect(engine).get_columns("images")}
    engine.dispose()
    store = SqlStore(url)  # migrates to head on open
    assert "evidence" in {c["name"] for c in inspect(store.engine).get_columns("images")}
    (claimed,) = store.claim("w", 5, 60)
    assert claimed.ref.uri == "/old"
    store.close()


def test_workers_opening_a_fresh_store_together_all_succeed(database_url: str) -> None:
    """Several worker processes starting at once on an empty database: one migrates, the others wait and
    find the schema in place (on PostgreSQL their CREATE TABLEs would otherwise collide)."""
    import subprocess
    import sys

    code = "import sys; from imgaudit.store.sql import SqlStore; SqlStore(sys.argv[1]).close()"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, database_url], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(errors)
    s = SqlStore(database_url)
    assert s.enqueue([ImageRef("/a")], "x") == (1, 0)
    s.close()


def test_concurrent_enqueues_of_the_same_items_do_not_fail(store: SqlStore) -> None:
    from concurrent.futures import ThreadPoolExecutor

    refs = [ImageRef(f"/same/{i}") for i in range(300)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: store.enqueue(refs, "folder"), range(4)))
    assert sum(added for added, _ in results) == 300
    assert all(added + skipped == 300 for added, skipped in results)
    assert store.counts()["status"] == {"queued": 300}


def test_cursor_upsert_and_nul_in_errors(store: SqlStore) -> None:
    store.set_cursor("external:t", "5")
    store.set_cursor("external:t", "9")
    assert store.get_cursor("external:t") == "9"
    store.enqueue([ImageRef("/x")], "folder")
    (c,) = store.claim("w", 1, 60)
    store.finish([], [Failure(id=c.id, error=CorruptImage("bad \x00 byte"))], 1)
    assert "\\x00" in store.get(c.id).last_error


def test_heartbeat_extends_only_our_leases(store: SqlStore) -> None:
    store.enqueue([ImageRef("/a"), ImageRef("/b")], "folder")
    a, b = store.claim("w1", 2, 60)
    with store._session() as s, s.begin():
        s.execute(update(ImageRow).values(lease_until=utcnow() - timedelta(seconds=1)))
    assert store.extend_leases("someone-else", [a.id, b.id], 60) == 0
    assert store.extend_leases("w1", [a.id], 60) == 1
    (taken,) = store.claim("w2", 5, 60)  # b's lease had expired and was not extended
    assert taken.id == b.id


# -- entries that are no image, names that are not UTF-8, leases of the dead ----------------------------


def test_refused_entries_are_failed_items_at_once(store: SqlStore) -> None:
    """A source's refusal is that entry's permanent failure, with its reason; the others are queued."""
    refused = ImageRef.refused("/imgs/loop.jpg", "path", "symlink_loop", "/imgs/loop.jpg: symlink loop")
    result = store.enqueue([ImageRef("/a"), refused, ImageRef("/b")], "folder")
    assert result == (2, 0) and result.added == 2 and result.refusals == {"symlink_loop": 1}
    rec = store.find("/imgs/loop.jpg")
    assert rec is not None and rec.status == Status.FAILED_PERMANENT and rec.attempts == 0
    assert (rec.error_reason, rec.last_error) == ("symlink_loop", "/imgs/loop.jpg: symlink loop")
    assert store.counts()["error"] == {"symlink_loop": 1}
    assert store.events(rec.id)[0]["event"] == "failed_permanent"
    assert [c.ref.uri for c in store.claim("w", 10, 60)] == ["/a", "/b"]  # never claimed
    assert store.requeue_failed(permanent=True) == 0  # retrying a refusal cannot succeed
    assert store.enqueue([refused], "folder") == (0, 1)


def test_a_path_that_is_not_utf8_is_stored_losslessly(store: SqlStore) -> None:
    """``uri_hash`` raised UnicodeEncodeError on such a name, and so did the database."""
    import os

    raw = os.fsdecode(b"/imgs/caf\xe9 100%.jpg")  # Latin-1: surrogate escapes in Python
    literal = "file:odd%41.jpg"  # a real (relative) name that looks like the escaped form
    result = store.enqueue([ImageRef(raw), ImageRef(literal), ImageRef("/imgs/café.jpg")], "folder")
    assert result == (3, 0)
    claimed = {c.ref.uri: c.id for c in store.claim("w", 10, 60)}
    assert set(claimed) == {raw, literal, "/imgs/café.jpg"}  # each comes back as it went in
    rec = store.get(claimed[raw])
    assert rec.uri == "file:/imgs/caf%E9 100%25.jpg"  # printable, and says which bytes
    assert store.find_by_uri(raw) == rec and store.find(rec.uri) == rec
    assert store.get(claimed["/imgs/café.jpg"]).uri == "/imgs/café.jpg"  # valid names stay as they are
    assert store.enqueue([ImageRef(raw)], "folder") == (0, 1)


def test_uri_hash_of_text_is_unchanged() -> None:
    """Stores written before keep matching: every valid string still hashes as its UTF-8."""
    import hashlib

    from imgaudit.store.encoding import uri_hash

    for uri in ("/a.jpg", "https://cdn.example/é.jpg", "key:t@db:42"):
        assert uri_hash(uri) == hashlib.sha256(uri.encode("utf-8")).hexdigest()


def test_what_the_database_cannot_hold_fails_only_its_own_item(store: SqlStore) -> None:
    bad = ImageRef("https://a.example/\udcff.jpg", "url")
    long_key = ImageRef("https://a.example/k.jpg", "key", "k" * 300)
    captioned = ImageRef("/c.jpg", caption="from a sidecar \ud800", meta={"k\x00": "\udcff"})
    result = store.enqueue([bad, ImageRef("/a"), long_key, captioned], "folder")
    assert result == (2, 0) and result.refusals == {"bad_uri": 1, "bad_key": 1}
    a, c = store.claim("w", 10, 60)
    assert store.get(c.id).caption is not None
    # A failure quoting a name that is not UTF-8 is stored, not raised from the batch.
    store.finish([], [Failure(id=a.id, error=CorruptImage("cannot read /imgs/\udcff.jpg"))], 1)
    assert store.get(a.id).last_error == "cannot read /imgs/\\xff.jpg"


def test_leases_of_a_gone_claimer_can_end_at_once(store: SqlStore) -> None:
    store.enqueue([ImageRef("/a"), ImageRef("/b"), ImageRef("/c")], "folder")
    store.claim("dead", 2, 300)
    store.claim("alive", 1, 60)
    leases = {lease.worker: lease for lease in store.leases()}
    assert {w: lease.items for w, lease in leases.items()} == {"dead": 2, "alive": 1}
    assert timedelta(seconds=290) < leases["dead"].until - utcnow() <= timedelta(seconds=300)
    assert store.claim("rerun", 10, 60) == []  # before: they waited out the 300 s
    assert store.expire_leases(["dead"]) == 2
    again = store.claim("rerun", 10, 60)
    assert len(again) == 2 and all(c.attempts == 2 for c in again)  # the interrupted attempt counts
    assert "claimer_gone" in [e["event"] for e in store.events(again[0].id)]
    assert {lease.worker for lease in store.leases()} == {"alive", "rerun"}
    assert store.expire_leases([]) == 0


# -- the database away --------------------------------------------------------------------------------------


PORTS = (QueueStore, DecisionStore, ItemStore, StatsStore, CursorStore, SearchFeedStore)


def _methods(port: type) -> set[str]:
    return {name for name, value in vars(port).items() if callable(value) and not name.startswith("_")}


def _decide(store: SqlStore) -> int:
    with store.decision_lock() as tx:  # on SQLite the lock is taken by the first statement
        return tx.count_indexed()


def _every_public_call(store: SqlStore) -> dict[str, Callable[[], object]]:
    c = complete(1, 1)
    return {
        "enqueue": lambda: store.enqueue([ImageRef("/a")], "folder"),
        "claim": lambda: store.claim("w", 1, 60),
        "leases": store.leases,
        "expire_leases": lambda: store.expire_leases(["w"]),
        "release": lambda: store.release([1]),
        "extend_leases": lambda: store.extend_leases("w", [1], 60),
        "requeue_failed": store.requeue_failed,
        "decision_lock": lambda: _decide(store),
        "finish": lambda: store.finish([c], [], 3),
        "find_exact": lambda: store.find_exact("a", "b"),
        "index_changes": lambda: store.index_changes(0),
        "last_index_seq": store.last_index_seq,
        "get": lambda: store.get(1),
        "get_many": lambda: store.get_many([1]),
        "facets": lambda: store.facets([1]),
        "find_by_uri": lambda: store.find_by_uri("/a"),
        "find": lambda: store.find("1"),
        "events": lambda: store.events(1),
        "iter_indexed": lambda: list(store.iter_indexed()),
        "count_indexed": store.count_indexed,
        "copies_of": lambda: store.copies_of([1]),
        "duplicate_pairs": store.duplicate_pairs,
        "counts": store.counts,
        "activity": store.activity,
        "get_cursor": lambda: store.get_cursor("c"),
        "set_cursor": lambda: store.set_cursor("c", "1"),
        "pending_writebacks": lambda: store.pending_writebacks(10),
        "mark_written": lambda: store.mark_written([1]),
        "search_feed": lambda: store.search_feed(0),
        "last_search_seq": store.last_search_seq,
        "reset": store.reset,
    }


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(
            "postgresql+psycopg://imgaudit@127.0.0.1:1/x?connect_timeout=5", id="postgresql-refused"
        ),
        pytest.param("sqlite:///{tmp_path}", id="sqlite-unopenable"),  # a directory is no database file
    ],
)
def test_every_store_method_reports_the_database_away_as_store_unavailable(url: str, tmp_path: Path) -> None:
    """Callers above the store tell an outage from a refused value without importing SQLAlchemy."""
    with pytest.raises(StoreUnavailable) as opened:
        SqlStore(url.format(tmp_path=tmp_path))  # migrating on open needs the database
    assert isinstance(opened.value.__cause__, OperationalError) and opened.value.retryable
    store = SqlStore(url.format(tmp_path=tmp_path), auto_migrate=False)
    calls = _every_public_call(store)
    # Every method of every port is exercised: a method added later must be added here too.
    assert set(calls) == {name for port in PORTS for name in _methods(port)} | {"reset"}
    answered = []
    for name, call in calls.items():
        try:
            call()
        except StoreUnavailable as exc:
            assert exc.message.startswith("the database is unavailable: OperationalError"), exc.message
        else:
            answered.append(name)
    assert answered == []
    store.close()


def test_a_decision_step_inside_the_lock_reports_an_outage_itself(store: SqlStore) -> None:
    store.enqueue([ImageRef("/a")], "folder")
    (a,) = store.claim("w", 1, 60)
    with pytest.raises(StoreUnavailable), store.decision_lock() as tx:
        tx.s.connection().invalidate()  # the connection is lost in the middle of the decision
        with pytest.raises(StoreUnavailable):
            tx.finish([complete(a.id, 1)], [], 3, "w")
    assert store.get(a.id).status == Status.PROCESSING  # nothing was written


def test_a_refused_value_is_not_an_outage() -> None:
    """The pipeline isolates the item behind a refused value; an outage sends the batch back."""
    from imgaudit.store.outages import is_store_failure, unavailable_on_outage

    refused = IntegrityError("INSERT", {}, ValueError("duplicate key"))
    with pytest.raises(IntegrityError), unavailable_on_outage():
        raise refused
    with pytest.raises(StoreUnavailable), unavailable_on_outage():
        raise OperationalError("SELECT 1", {}, ConnectionError("server closed the connection"))
    assert not is_store_failure(refused) and not is_store_failure(DataError("UPDATE", {}, ValueError()))
    assert is_store_failure(StoreUnavailable()) and is_store_failure(ConnectionResetError())
    assert not is_store_failure(ValueError())
    # SQLAlchemy's own usage errors are bugs: they pass unchanged (the worker must not retry them forever)
    with pytest.raises(InvalidRequestError), unavailable_on_outage():
        raise InvalidRequestError("a bug in our SQL")


def test_a_locked_sqlite_database_is_an_outage(tmp_path: Path) -> None:
    """Another process holding the write lock past the busy timeout: the store is away, not the item."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'locked.db'}"
    SqlStore(url).close()
    store = SqlStore(url, auto_migrate=False)

    @event.listens_for(store.engine, "connect", insert=True)
    def _short_busy_timeout(dbapi_conn, _record) -> None:
        dbapi_conn.execute("PRAGMA busy_timeout = 100")  # milliseconds, not the store's 30 s

    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            store.enqueue([ImageRef("/a")], "folder")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.enqueue([ImageRef("/a")], "folder") == (1, 0)
    store.close()
