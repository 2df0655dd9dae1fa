"""The business table as a queue (imgaudit.sources.table), on SQLite and on MariaDB (the legacy contract).

Unit tests drive ``ExternalTable`` directly; the end-to-end tests run the real worker path
(``bootstrap.worker_service`` + ``WorkerService.step``) with the bundled model, against images served by a
local HTTP server, and look only at the business table, as the business application would.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import BigInteger, Column, Float, MetaData, String, Table, create_engine, insert, text
from sqlalchemy.engine import make_url

from imgaudit.bootstrap import worker_service
from imgaudit.config import ExternalTableSettings, Settings, load_settings
from imgaudit.errors import ConfigError, ExternalUnavailable
from imgaudit.models.visual import VisualEncoder
from imgaudit.services.worker import WorkerService
from imgaudit.sources.table import NAME_MAX, ExternalTable, source_name
from imgaudit.testing.fakes import jpeg_bytes, textured_image
from imgaudit.types import ItemRecord

LEGACY = {
    "table": "content",
    "score_column": "similarity_score",
    "original_column": "similar_to",
    "error_column": "fail_reason",
}
"""The legacy contract: default select_where and on_* values, plus the three optional columns."""


# -- the business database -----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "mysql"])
def business_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh business database: a SQLite file, or a throwaway MariaDB database (skipped when no server
    is configured, see tests/support/dbs.py)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'business.db'}"
    return request.getfixturevalue("mysql_url")


def content_table(metadata: MetaData) -> Table:
    return Table(
        "content",
        metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("image_url", String(512)),
        Column("status", String(32), nullable=False),
        Column("similarity", String(32), nullable=False),
        Column("similarity_score", Float, nullable=True),
        Column("similar_to", String(64), nullable=True),
        Column("fail_reason", String(64), nullable=True),
    )


def create_content(url: str, rows: list[tuple[int, str | None, str, str]]) -> None:
    """The legacy table with rows (id, image_url, status, similarity)."""
    engine = create_engine(url)
    try:
        metadata = MetaData()
        table = content_table(metadata)
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                insert(table),
                [{"id": i, "image_url": u, "status": st, "similarity": sim} for i, u, st, sim in rows],
            )
    finally:
        engine.dispose()


def read_content(url: str) -> dict[int, dict[str, Any]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM content ORDER BY id")).mappings().all()
        return {r["id"]: {k: v for k, v in r.items() if k != "id"} for r in rows}
    finally:
        engine.dispose()


def execute(url: str, *statements: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for sql in statements:
                conn.execute(text(sql))
    finally:
        engine.dispose()


def external(url: str, **overrides: Any) -> ExternalTableSettings:
    return ExternalTableSettings(**({"url": url} | LEGACY | overrides))


@pytest.fixture
def table_of(business_url: str) -> Iterator[Any]:
    """Builds ExternalTables on the business database and closes them afterwards."""
    opened: list[ExternalTable] = []

    def make(cdn_base: str = "https://cdn.example/img/", **overrides: Any) -> ExternalTable:
        t = ExternalTable(external(business_url, **overrides), cdn_base=cdn_base)
        opened.append(t)
        return t

    yield make
    for t in opened:
        t.close()


def record(
    item_id: int,
    key: str | None,
    status: str,
    decision: str | None = None,
    score: float | None = None,
    error_reason: str | None = None,
) -> ItemRecord:
    return ItemRecord(
        id=item_id,
        source="content@test",
        uri="",
        kind="key",
        external_key=key,
        status=status,
        attempts=1,
        error_reason=error_reason,
        last_error=None,
        sha256=None,
        format=None,
        width=None,
        height=None,
        phash=None,
        decision=decision,
        duplicate_of=None,
        score=score,
        stage=None,
        evidence=None,
        indexed=False,
        processed_by=None,
        writeback="pending",
        created_at=datetime.now(UTC),
        processed_at=None,
    )


WAITING = ("draft", "draft")

# -- reading -------------------------------------------------------------------------------------------


def test_poll_reads_waiting_rows_in_numeric_key_order(business_url: str, table_of: Any) -> None:
    create_content(
        business_url,
        [
            (11, "c/11.jpg", *WAITING),
            (2, "/a/2.jpg", *WAITING),
            (3, "a/3.jpg", "tag_extension", "draft"),  # finished: ignored
            (10, "b/10.jpg", *WAITING),
            (12, "b/12.jpg", "draft", "recalc"),  # failed before: ignored
            (20, None, *WAITING),
            (21, "  ", *WAITING),
            (22, "https://other.example/x.png", *WAITING),
            (23, "//img.example/y.jpg", *WAITING),
        ],
    )
    t = table_of()
    first = t.poll(None, 2)
    assert [(r.external_key, r.uri, r.kind) for r in first] == [
        ("2", "https://cdn.example/img/a/2.jpg", "key"),
        ("10", "https://cdn.example/img/b/10.jpg", "key"),
    ]
    assert [r.external_key for r in t.poll("10", 2)] == ["11", "20"]
    # "9" < "10" as numbers: a text comparison would skip 10 and 11.
    rest = t.poll("9", 100)
    assert [r.external_key for r in rest] == ["10", "11", "20", "21", "22", "23"]
    uris = {r.external_key: r.uri for r in rest}
    assert uris["20"] == "" and uris["21"] == ""  # fails in the fetcher as "empty image URL", permanently
    assert uris["22"] == "https://other.example/x.png"
    assert uris["23"] == "https://img.example/y.jpg"
    assert t.poll("23", 100) == []


def test_relative_image_without_cdn_base_is_kept_for_the_fetcher_to_refuse(
    business_url: str, table_of: Any
) -> None:
    create_content(business_url, [(1, "a/1.jpg", *WAITING)])
    assert [r.uri for r in table_of(cdn_base="").poll(None, 10)] == ["a/1.jpg"]


def test_string_keys_compare_as_strings(business_url: str, tmp_path: Path) -> None:
    engine = create_engine(business_url)
    metadata = MetaData()
    posts = Table(
        "posts",
        metadata,
        Column("slug", String(64), primary_key=True),
        Column("picture", String(255)),
        Column("state", String(16)),
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(posts),
            [{"slug": s, "picture": f"{s}.jpg", "state": "new"} for s in ("b", "a10", "a9", "c")],
        )
    engine.dispose()
    t = ExternalTable(
        ExternalTableSettings(
            url=business_url,
            table="posts",
            key_column="slug",
            image_column="picture",
            select_where="state = 'new'",
            on_unique={"state": "ok"},
            on_duplicate={"state": "dup"},
            on_failure={"state": "failed"},
        ),
        cdn_base="http://cdn/",
    )
    try:
        assert [r.external_key for r in t.poll(None, 10)] == ["a10", "a9", "b", "c"]
        assert [r.external_key for r in t.poll("a9", 10)] == ["b", "c"]
    finally:
        t.close()


def test_select_where_is_literal_sql(business_url: str, table_of: Any) -> None:
    """Colons and percent signs in the operator's condition are SQL, not parameter markers."""
    create_content(
        business_url,
        [(1, "x:1.jpg", *WAITING), (2, "y.png", *WAITING), (3, "z:3.jpg", "other", "draft")],
    )
    t = table_of(select_where="status <> 'a :b' AND image_url LIKE '%:%.jpg'")
    assert [r.external_key for r in t.poll(None, 10)] == ["1", "3"]


def test_reads_and_writes_leave_no_transaction_open(business_url: str, table_of: Any) -> None:
    """Between calls nothing is held: the business application can even alter the table at once."""
    create_content(business_url, [(1, "1.jpg", *WAITING), (2, "2.jpg", *WAITING)])
    t = table_of()
    assert len(t.poll(None, 10)) == 2
    t.write_back([(record(1, "1", "done", "unique"), None)])
    sqlite = make_url(business_url).get_backend_name() == "sqlite"
    other = create_engine(business_url, connect_args={"timeout": 0.5} if sqlite else {})
    try:
        with other.begin() as conn:
            if not sqlite:
                conn.execute(text("SET SESSION lock_wait_timeout = 2"))
            conn.execute(text("ALTER TABLE content ADD COLUMN probe INT NULL"))
            conn.execute(text("UPDATE content SET status = 'touched' WHERE id = 2"))
    finally:
        other.dispose()
    assert t.poll(None, 10) == []


# -- configuration -------------------------------------------------------------------------------------


def test_unknown_columns_are_one_config_error_at_first_use(business_url: str, table_of: Any) -> None:
    create_content(business_url, [(1, "1.jpg", *WAITING)])
    t = table_of(
        on_unique={"statuz": "tag_extension"},
        score_column="similarity_scor",
        image_column="image",
    )
    with pytest.raises(ConfigError) as err:
        t.poll(None, 10)
    message = err.value.message
    for expected in ("'statuz'", "'similarity_scor'", "'image'", "external.on_unique", "the table has: id"):
        assert expected in message
    with pytest.raises(ConfigError):  # and again: nothing half-prepared is kept
        t.write_back([(record(1, "1", "done", "unique"), None)])
    assert read_content(business_url)[1]["status"] == "draft"


def test_missing_table_bad_condition_and_conflicts_are_config_errors(
    business_url: str, table_of: Any
) -> None:
    create_content(business_url, [(1, "1.jpg", *WAITING)])
    with pytest.raises(ConfigError, match="no table 'contents'"):
        table_of(table="contents").poll(None, 1)
    with pytest.raises(ConfigError, match="select_where"):
        table_of(select_where="statux = 'draft'").poll(None, 1)
    with pytest.raises(ConfigError, match="key column"):
        table_of(on_failure={"id": "0"}).poll(None, 1)
    with pytest.raises(ConfigError, match="similar_to twice"):
        table_of(on_duplicate={"status": "similarity", "similar_to": "x"}).poll(None, 1)
    with pytest.raises(ConfigError, match="select_where is empty"):
        table_of(select_where=" ")


def test_construction_does_not_connect_and_the_name_has_no_password() -> None:
    t = ExternalTable(ExternalTableSettings(url="mysql://app:s3cret@127.0.0.1:1/shop", table="content"))
    try:
        assert t.name == "content@127.0.0.1/shop"
        assert t.engine.url.drivername == "mysql+pymysql"
        with pytest.raises(ExternalUnavailable):  # unreachable: the worker carries on and retries later
            t.poll(None, 1)
    finally:
        t.close()
    assert source_name(make_url("sqlite:////data/shop/business.db"), "content") == "content@business.db"
    long = source_name(make_url("mysql+pymysql://u@db.example.internal/" + "x" * 80), "content")
    assert len(long) == NAME_MAX and long.startswith("content@db.example.internal/")
    assert long == source_name(
        make_url("mysql+pymysql://other:pw@db.example.internal/" + "x" * 80), "content"
    )
    with pytest.raises(ConfigError, match="not a valid SQLAlchemy URL"):
        ExternalTable(ExternalTableSettings(url="::nonsense::", table="content"))


def test_a_cursor_that_is_not_a_key_is_a_config_error(business_url: str, table_of: Any) -> None:
    create_content(business_url, [(1, "1.jpg", *WAITING)])
    with pytest.raises(ConfigError, match="cursor 'abc'"):
        table_of().poll("abc", 1)


# -- writing -------------------------------------------------------------------------------------------


def verdicts() -> list[tuple[ItemRecord, str | None]]:
    return [
        (record(101, "2", "done", "unique", score=0.41), None),
        (record(102, "10", "done", "duplicate", score=0.971234), "2"),
        (record(103, "11", "failed_permanent", error_reason="http_status"), None),
        (record(104, "12", "failed_retryable", error_reason="timeout"), None),  # not a verdict yet
        (record(105, "13", "done", "duplicate", score=1.0), None),  # original not from a table
    ]


def rows_for_verdicts(url: str) -> None:
    create_content(
        url,
        [
            (2, "2.jpg", *WAITING),
            (10, "10.jpg", *WAITING),
            (11, "11.jpg", *WAITING),
            (12, "12.jpg", *WAITING),
            (13, "13.jpg", *WAITING),
            (14, "14.jpg", "published", "done"),
        ],
    )


NOTHING = {"similarity_score": None, "similar_to": None, "fail_reason": None}


def test_write_back_writes_exactly_the_configured_values(business_url: str, table_of: Any) -> None:
    rows_for_verdicts(business_url)
    before = read_content(business_url)
    table_of().write_back(verdicts())
    after = read_content(business_url)
    score = after[10].pop("similarity_score")
    assert score == pytest.approx(0.971234, abs=1e-6)
    assert after == {
        2: {"image_url": "2.jpg", "status": "tag_extension", "similarity": "draft"} | NOTHING,
        10: {"image_url": "10.jpg", "status": "similarity", "similarity": "draft"}
        | {"similar_to": "2", "fail_reason": None},
        11: {"image_url": "11.jpg", "status": "draft", "similarity": "recalc"}
        | NOTHING
        | {"fail_reason": "http_status"},
        12: before[12],
        13: {"image_url": "13.jpg", "status": "similarity", "similarity": "draft", "similarity_score": 1.0}
        | {"similar_to": None, "fail_reason": None},
        14: before[14],
    }


def test_write_back_without_the_optional_columns_writes_only_the_states(
    business_url: str, table_of: Any
) -> None:
    rows_for_verdicts(business_url)
    table_of(score_column="", original_column="", error_column="").write_back(verdicts())
    after = read_content(business_url)
    assert {k: (r["status"], r["similarity"]) for k, r in after.items()} == {
        2: ("tag_extension", "draft"),
        10: ("similarity", "draft"),
        11: ("draft", "recalc"),
        12: ("draft", "draft"),
        13: ("similarity", "draft"),
        14: ("published", "done"),
    }
    assert all({k: r[k] for k in NOTHING} == NOTHING for r in after.values())


def test_moderation_verdicts_add_their_columns(business_url: str, table_of: Any) -> None:
    """on_review / on_violate win over the dedup columns; the verdict and reasons go to their columns;
    a passed image gets only its verdict; failures get no moderation columns."""
    from dataclasses import replace

    engine = create_engine(business_url)
    try:
        rows_for_verdicts(business_url)
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE content ADD COLUMN verdict VARCHAR(16)"))
            conn.execute(text("ALTER TABLE content ADD COLUMN why VARCHAR(40)"))
    finally:
        engine.dispose()
    phone = [{"category": "contact_info", "decision": "violate", "message": "phone 138****5678 (ocr 0.99)"}]
    items = verdicts()
    items[0] = (replace(items[0][0], moderation="violate", reasons=phone), None)
    items[1] = (
        replace(items[1][0], moderation="review", reasons=[{"category": "blurry", "message": "b"}]),
        "2",
    )
    items[4] = (replace(items[4][0], moderation="pass", reasons=[]), None)
    items[2] = (replace(items[2][0], moderation="violate", reasons=phone), None)  # failed: not written
    table_of(
        on_violate={"status": "rejected"},
        on_review={"similarity": "review"},
        moderation_column="verdict",
        reasons_column="why",
    ).write_back(items)
    after = read_content(business_url)
    assert (after[2]["status"], after[2]["verdict"]) == ("rejected", "violate")
    assert after[2]["why"] == "contact_info: phone 138****5678 (ocr 0.99)"[:40]
    assert (after[10]["status"], after[10]["similarity"], after[10]["verdict"]) == (
        "similarity",
        "review",
        "review",
    )
    assert (after[13]["status"], after[13]["verdict"], after[13]["why"]) == ("similarity", "pass", "")
    assert (after[11]["similarity"], after[11]["verdict"]) == ("recalc", None)


def test_write_back_is_one_transaction(business_url: str, table_of: Any) -> None:
    """The failure UPDATE (the last statement) is refused by a trigger after the unique and duplicate
    UPDATEs ran: none of them may stay."""
    rows_for_verdicts(business_url)
    if make_url(business_url).get_backend_name() == "sqlite":
        trigger = (
            "CREATE TRIGGER refuse_11 BEFORE UPDATE ON content WHEN OLD.id = 11 "
            "BEGIN SELECT RAISE(ABORT, 'refused by the business database'); END"
        )
    else:
        trigger = (
            "CREATE TRIGGER refuse_11 BEFORE UPDATE ON content FOR EACH ROW BEGIN "
            "IF OLD.id = 11 THEN SIGNAL SQLSTATE '45000' "
            "SET MESSAGE_TEXT = 'refused by the business database'; END IF; END"
        )
    execute(business_url, trigger)
    before = read_content(business_url)
    t = table_of()
    with pytest.raises(ExternalUnavailable, match="refused by the business database"):
        t.write_back(verdicts())
    assert read_content(business_url) == before
    execute(business_url, "DROP TRIGGER refuse_11")
    t.write_back(verdicts())  # the same batch, retried, goes through whole
    after = read_content(business_url)
    assert [after[k]["status"] for k in (2, 10, 11)] == ["tag_extension", "similarity", "draft"]


def test_values_are_fitted_to_the_columns(business_url: str, table_of: Any) -> None:
    """An over-long reason is cut to the column, an over-long original key becomes NULL: in strict SQL
    modes either would otherwise fail the whole batch at every retry."""
    rows_for_verdicts(business_url)
    table_of().write_back(
        [
            (record(1, "11", "failed_permanent", error_reason="r" * 100), None),
            (record(2, "10", "done", "duplicate", score=0.95), "k" * 100),
        ]
    )
    after = read_content(business_url)
    assert after[11]["fail_reason"] == "r" * 64
    assert after[10]["similar_to"] is None and after[10]["status"] == "similarity"


def test_nothing_to_write_opens_no_transaction(business_url: str, table_of: Any) -> None:
    rows_for_verdicts(business_url)
    t = table_of()
    t.write_back([])
    t.write_back([(record(1, "12", "failed_retryable", error_reason="timeout"), None)])
    assert read_content(business_url)[12]["similarity"] == "draft"


# -- end to end through the worker ---------------------------------------------------------------------

ORIGINAL_SEEDS = {1: 278, 2: 371, 3: 246, 5: 126, 9: 98, 10: 114}


def photo(seed: int) -> bytes:
    return jpeg_bytes(textured_image(seed, (480, 360)), quality=92)


@pytest.fixture
def cdn() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A local image server: (base URL, path -> body); other paths answer 404."""
    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/img/", files
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def resized_copy(data: bytes) -> bytes:
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    return jpeg_bytes(im.resize((im.width * 2 // 3, im.height * 2 // 3)), quality=80)


def worker_settings(tmp_path: Path, database_url: str, business_url: str, cdn_base: str) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        fetch={"cdn_base": cdn_base, "allow_private": True, "retries": 0},
        worker={"batch_size": 3},  # several claims and write-backs
        external={"url": business_url, "batch_size": 4} | LEGACY,  # several polls
    )


def run_until_idle(svc: WorkerService, max_steps: int = 40) -> int:
    """Step until a step does nothing at all; returns the number of steps that did something."""
    for n in range(max_steps):
        r = svc.step()
        if not (r.fed or r.claimed or r.written_back):
            return n
    raise AssertionError(f"still busy after {max_steps} steps")


@pytest.mark.model
def test_worker_processes_the_business_table(
    business_url: str,
    database_url: str,
    tmp_path: Path,
    cdn: tuple[str, dict[str, bytes]],
    real_encoder: VisualEncoder,
) -> None:
    base, files = cdn
    rows: list[tuple[int, str | None, str, str]] = []
    for key, seed in ORIGINAL_SEEDS.items():
        files[f"/img/p/{seed}.jpg"] = photo(seed)
        rows.append((key, f"p/{seed}.jpg", *WAITING))
    files["/img/p/371-small.jpg"] = resized_copy(files["/img/p/371.jpg"])
    files["/img/p/text.jpg"] = b"this is not an image, whatever the name says\n" * 10
    rows += [
        (11, "p/371-small.jpg", *WAITING),  # a copy of row 2
        (12, "p/missing.jpg", *WAITING),  # 404: a permanent failure
        (13, "/p/text.jpg", *WAITING),  # not an image
        (14, None, *WAITING),  # no image at all
        (4, "p/278.jpg", "tag_extension", "draft"),  # finished long ago: not ours
        (15, "p/371.jpg", "draft", "recalc"),  # failed before: waits for a human
        (16, "p/371.jpg", "published", "done"),
    ]
    create_content(business_url, rows)
    before = read_content(business_url)
    settings = worker_settings(tmp_path, database_url, business_url, base)

    with worker_service(settings, real_encoder) as svc:
        assert run_until_idle(svc) > 0
        after = read_content(business_url)
        for key in ORIGINAL_SEEDS:
            assert after[key] == before[key] | {"status": "tag_extension"}, key
        copy = after[11]
        assert (copy["status"], copy["similarity"], copy["similar_to"]) == ("similarity", "draft", "2")
        assert copy["similarity_score"] >= 0.9
        assert after[12] == before[12] | {"similarity": "recalc", "fail_reason": "http_status"}
        assert after[13] == before[13] | {"similarity": "recalc", "fail_reason": "not_an_image"}
        assert after[14] == before[14] | {"similarity": "recalc", "fail_reason": "fetch_failed"}
        for key in (4, 15, 16):
            assert after[key] == before[key]
        assert svc.store.pending_writebacks(100) == []
        counts = svc.store.counts()

        # Idempotent: nothing new in the table, so more steps change nothing anywhere.
        for _ in range(3):
            r = svc.step()
            assert (r.fed, r.claimed, r.written_back) == (0, 0, 0)
        assert read_content(business_url) == after
        assert svc.store.counts() == counts

    # A restart resumes from the stored cursor: nothing is read or processed twice.
    with worker_service(settings, real_encoder) as svc:
        assert run_until_idle(svc) == 0
    assert read_content(business_url) == after


def unreachable_url(business_url: str, tmp_path: Path) -> str:
    if make_url(business_url).get_backend_name() == "sqlite":
        return f"sqlite:///{tmp_path / 'no-such-dir' / 'business.db'}"
    return "mysql+pymysql://imgaudit:imgaudit@127.0.0.1:1/nothing"


@pytest.mark.model
def test_verdicts_wait_in_the_store_while_the_business_database_is_down(
    business_url: str,
    database_url: str,
    tmp_path: Path,
    cdn: tuple[str, dict[str, bytes]],
    real_encoder: VisualEncoder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, files = cdn
    files["/img/a.jpg"] = photo(278)
    files["/img/b.jpg"] = photo(371)
    files["/img/b-small.jpg"] = resized_copy(files["/img/b.jpg"])
    create_content(
        business_url,
        [
            (1, "a.jpg", *WAITING),
            (2, "b.jpg", *WAITING),
            (3, "b-small.jpg", *WAITING),
            (4, "gone.jpg", *WAITING),
        ],
    )
    before = read_content(business_url)
    settings = worker_settings(tmp_path, database_url, business_url, base)

    with worker_service(settings, real_encoder) as svc:
        table = svc.external
        assert isinstance(table, ExternalTable)
        working = table.engine
        down = create_engine(unreachable_url(business_url, tmp_path))
        real_write_back = table.write_back
        attempts = []

        def write_back_while_down(items: list[tuple[ItemRecord, str | None]]) -> None:
            """The business database goes away after the poll: the real write-back fails to connect."""
            attempts.append(len(items))
            table.engine = down
            try:
                real_write_back(items)
            finally:
                table.engine = working

        monkeypatch.setattr(table, "write_back", write_back_while_down)
        step = svc.step()  # the batch is processed; only the write-back waits
        assert (
            step.external_error and "unavailable" not in step.external_error.lower()
        ) or step.external_error
        assert step.batch is not None and attempts == [3]
        assert read_content(business_url) == before
        assert [rec.external_key for rec, _ in svc.store.pending_writebacks(100)] == ["1", "2", "3"]

        monkeypatch.setattr(table, "write_back", real_write_back)
        down.dispose()
        run_until_idle(svc)
        after = read_content(business_url)
        assert svc.store.pending_writebacks(100) == []
    assert [after[k]["status"] for k in (1, 2, 3)] == ["tag_extension", "tag_extension", "similarity"]
    assert after[3]["similar_to"] == "2" and after[3]["similarity_score"] >= 0.9
    assert after[4]["similarity"] == "recalc"
