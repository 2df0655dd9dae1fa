"""Two real worker processes, SIGKILLed at random points and restarted, must leave a consistent store:
every image in exactly one final state, exact copies never both unique, the index log and indexes
holding exactly the unique images."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from imgaudit.config import load_settings
from imgaudit.errors import StoreUnavailable
from imgaudit.sources.files import FolderSource
from imgaudit.store.schema import ImageRow, IndexLogRow
from imgaudit.store.sql import SqlStore
from imgaudit.testing.fakes import textured_image

N_DISTINCT = 700
N_COPIES = 300
KILLS = 4
TIMEOUT = 300


def make_images(folder: Path, seed: int = 3) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for i in range(N_DISTINCT):
        textured_image(10_000 + i, (240, 180)).save(folder / f"o{i:04d}.jpg", quality=85)
    for j in range(N_COPIES):
        k = rng.randrange(N_DISTINCT)
        src = folder / f"o{k:04d}.jpg"
        if j % 3 == 0:  # same pixels, other container: caught by the store's exact lookup
            Image.open(src).save(folder / f"c{j:04d}-{k}.png")
        elif j % 3 == 1:  # same bytes
            (folder / f"c{j:04d}-{k}.jpg").write_bytes(src.read_bytes())
        else:  # re-encoded smaller: only the shared indexes can catch it
            Image.open(src).resize((216, 162), Image.Resampling.LANCZOS).save(
                folder / f"c{j:04d}-{k}.jpg", quality=80
            )


def start_worker(name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "imgaudit.cli", "worker", "run", "--name", name],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def drain(tmp_path: Path, database_url: str, disrupt: Callable[..., None]) -> None:
    """Enqueue the images, run two workers until the queue is empty, calling ``disrupt`` with the
    number of finished items as they work; then stop them and check every invariant."""
    folder = tmp_path / "imgs"
    make_images(folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGAUDIT_")}
    env.update(
        IMGAUDIT_DATA_DIR=str(tmp_path / "data"),
        IMGAUDIT_DATABASE_URL=database_url,
        IMGAUDIT_LEASE_SECONDS="5",
        IMGAUDIT_WORKER__BATCH_SIZE="25",
        IMGAUDIT_WORKER__IDLE_SLEEP="0.2",
        IMGAUDIT_WORKER__SAVE_EVERY="3",
        IMGAUDIT_MODELS__THREADS="1",
        # Moderation results are written in the same transaction as the dedup verdict, so they are
        # covered; the OCR and NSFW models only add start-up time to every restarted worker.
        IMGAUDIT_MODERATION__OCR="false",
        IMGAUDIT_MODERATION__NSFW="false",
    )
    settings = load_settings(data_dir=tmp_path / "data", database_url=database_url)
    store = SqlStore(settings.store_url)
    assert store.enqueue(FolderSource(folder).refs(), "folder") == (N_DISTINCT + N_COPIES, 0)

    logs = {n: tmp_path / f"worker-{n}.log" for n in ("a", "b")}
    procs = {n: start_worker(n, env, logs[n]) for n in logs}
    restart = {n: (lambda n=n: start_worker(n, env, logs[n])) for n in logs}
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            try:
                status = store.counts()["status"]
            except StoreUnavailable:  # the database is restarting
                time.sleep(0.5)
                continue
            left = sum(status.get(k, 0) for k in ("queued", "processing", "failed_retryable"))
            if left == 0:
                break
            disrupt(procs, status.get("done", 0), restart)
            for n, p in procs.items():
                assert p.poll() is None, f"worker {n} died: {logs[n].read_text()[-3000:]}"
            time.sleep(0.2)
        else:
            pytest.fail(f"queue not drained in {TIMEOUT}s: {store.counts()['status']}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    for n, p in procs.items():
        assert p.returncode == 0, f"worker {n} did not stop cleanly: {logs[n].read_text()[-3000:]}"
    check_invariants(settings, store)
    store.close()


@pytest.mark.model
def test_workers_killed_at_random_points_lose_nothing(tmp_path: Path, database_url: str) -> None:
    rng = random.Random(11)
    kills = []

    def kill_one(procs, done, restart) -> None:
        if len(kills) < KILLS and done > 100 * (len(kills) + 1):
            victim = rng.choice(sorted(procs))
            os.killpg(procs[victim].pid, signal.SIGKILL)  # no chance to clean up
            procs[victim].wait()
            kills.append(victim)
            time.sleep(rng.uniform(0, 1.0))
            procs[victim] = restart[victim]()

    drain(tmp_path, database_url, kill_one)
    assert len(kills) == KILLS


@pytest.mark.model
def test_workers_survive_a_database_restart(tmp_path: Path, database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip(
            "a database server restart needs the PostgreSQL backend (IMGAUDIT_TEST_BACKEND=postgresql)"
        )
    restarts = []
    script = Path(__file__).resolve().parents[2] / "scripts" / "dbs.sh"

    def restart_db(procs, done, restart) -> None:
        if not restarts and done > 150:
            subprocess.run(["bash", str(script), "restart-pg", "2"], check=True, capture_output=True)
            restarts.append(done)

    drain(tmp_path, database_url, restart_db)
    assert restarts
    logs = "".join((tmp_path / f"worker-{n}.log").read_text() for n in ("a", "b"))
    assert "database unavailable" in logs  # the workers really lost the database, and carried on


def check_invariants(settings, store: SqlStore) -> None:
    with store._session() as s:
        rows = s.execute(
            select(
                ImageRow.id,
                ImageRow.uri,
                ImageRow.status,
                ImageRow.decision,
                ImageRow.duplicate_of,
                ImageRow.indexed,
                ImageRow.moderation,
            )
        ).all()
        log_ids = [r[0] for r in s.execute(select(IndexLogRow.image_id).where(IndexLogRow.op == "add"))]
    assert len(rows) == N_DISTINCT + N_COPIES
    assert Counter(r.status for r in rows) == {"done": N_DISTINCT + N_COPIES}
    assert all(r.moderation in ("pass", "review", "violate") for r in rows), "a verdict without moderation"
    unique = {r.id for r in rows if r.decision == "unique"}
    assert {r.id for r in rows if r.indexed} == unique
    assert sorted(log_ids) == sorted(unique), "every unique image enters the index log exactly once"
    for r in rows:
        if r.decision == "duplicate":
            assert r.duplicate_of in unique
    groups: dict[str, list[int]] = defaultdict(list)  # original index -> the original and its copies
    for r in rows:
        name = Path(r.uri).stem
        groups[name.split("-")[1] if name.startswith("c") else str(int(name[1:]))].append(r.id)
    both = [ids for ids in groups.values() if len(unique.intersection(ids)) > 1]
    assert not both, f"{len(both)} groups of copies have more than one 'unique' member"
    assert len(unique) <= N_DISTINCT

    # A fresh process agrees with the store: snapshot + log replay (or rebuild) gives the unique set.
    from imgaudit.bootstrap import dedup_service

    with dedup_service(settings) as svc:
        assert len(svc.indexes) == len(unique)
        assert all(i in svc.indexes.vectors for i in unique)


@pytest.mark.model
def test_a_rerun_after_a_killed_ingest_takes_its_items_back_at_once(
    tmp_path: Path, database_url: str
) -> None:
    """`imgaudit ingest` SIGKILLed with a batch claimed: the rerun must not wait out the 300 s lease
    (it used to say "processed 0" without a word), and must say it took the items back."""
    import json

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(48):
        textured_image(20_000 + i, (240, 180)).save(folder / f"i{i:02d}.jpg", quality=85)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGAUDIT_")}
    env.update(
        IMGAUDIT_DATA_DIR=str(tmp_path / "data"),
        IMGAUDIT_DATABASE_URL=database_url,
        IMGAUDIT_MODERATION__OCR="false",
        IMGAUDIT_MODERATION__NSFW="false",
    )
    args = [sys.executable, "-m", "imgaudit.cli", "ingest", str(folder), "--json", "--batch-size", "16"]
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = SqlStore(load_settings(data_dir=tmp_path / "data", database_url=database_url).store_url)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            try:
                status = store.counts()["status"]
            except StoreUnavailable:  # the schema is still being created
                status = {}
            if status.get("processing"):
                break
            assert first.poll() is None, "the first ingest ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("the first ingest never claimed a batch")
    finally:
        first.kill()
        first.wait()
    assert store.counts()["status"].get("processing")  # leases left behind by the dead process
    start = time.monotonic()
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240, check=False)
    took = time.monotonic() - start
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    (summary,) = [json.loads(line) for line in rerun.stdout.splitlines()]
    assert summary["reclaimed"] >= 1 and summary["still_leased"] == 0
    assert store.counts()["status"] == {"done": 48}
    assert took < 200, "the rerun waited for the dead ingest's lease"
    store.close()
