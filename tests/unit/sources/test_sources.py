"""Folder and URL-list sources: one bad entry is that entry's recorded failure, never the whole ingest's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from imgaudit.bootstrap import dedup_service
from imgaudit.config import Settings, load_settings
from imgaudit.models.visual import VisualEncoder
from imgaudit.sources import files
from imgaudit.sources.files import FolderSource, UrlListSource, source_for
from imgaudit.store.sql import SqlStore
from imgaudit.testing.fakes import textured_image
from imgaudit.types import Status

RAW_NAME = os.fsdecode(b"caf\xe9 \xff.jpg")  # Latin-1 bytes: not UTF-8


def jpeg(path: Path, seed: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    textured_image(seed, (64, 48)).save(path, "JPEG", quality=90)
    return path


def walk(root: Path, **kw: bool) -> tuple[list[str], dict[str, str]]:
    """(URIs yielded for use, {URI: reason} of the refused)."""
    refs = list(FolderSource(root, **kw).refs())
    return (
        [r.uri for r in refs if r.error_reason is None],
        {r.uri: r.error_reason for r in refs if r.error_reason is not None},
    )


# -- folders ---------------------------------------------------------------------------------------------


def test_a_symlink_loop_is_its_own_failure(tmp_path: Path) -> None:
    """``Path.resolve()`` raised RuntimeError on the loop and nothing was queued."""
    root = tmp_path / "imgs"
    a, b = jpeg(root / "a.jpg"), jpeg(root / "z.jpg", 2)
    (root / "loop.jpg").symlink_to("loop.jpg")
    (root / "ping.jpg").symlink_to("pong.jpg")
    (root / "pong.jpg").symlink_to("ping.jpg")
    (root / "gone.jpg").symlink_to("nothing-here.jpg")
    ok, refused = walk(root)
    assert ok == [str(a), str(b)]
    assert refused == {
        str(root / "loop.jpg"): files.SYMLINK_LOOP,
        str(root / "ping.jpg"): files.SYMLINK_LOOP,
        str(root / "pong.jpg"): files.SYMLINK_LOOP,
        str(root / "gone.jpg"): files.BROKEN_SYMLINK,
    }


def test_links_out_of_the_folder_are_refused_unless_allowed(tmp_path: Path) -> None:
    root, outside = tmp_path / "imgs", tmp_path / "elsewhere"
    own = jpeg(root / "a.jpg")
    secret = jpeg(outside / "secret.jpg", 3)
    jpeg(outside / "album" / "b.jpg", 4)
    (root / "leak.jpg").symlink_to(secret)
    (root / "album").symlink_to(outside / "album", target_is_directory=True)
    ok, refused = walk(root)
    assert ok == [str(own)]
    assert refused == {str(root / "album"): files.OUTSIDE_ROOT, str(root / "leak.jpg"): files.OUTSIDE_ROOT}
    leak = next(r for r in FolderSource(root).refs() if r.uri.endswith("leak.jpg"))
    assert str(secret) in (leak.error_message or "") and "follow_symlinks" in (leak.error_message or "")

    ok, refused = walk(root, follow_symlinks=True)
    assert ok == [str(own), str(secret), str(outside / "album" / "b.jpg")] and refused == {}
    assert load_settings().sources.follow_symlinks is False
    assert isinstance(source_for(str(root), follow_symlinks=True), FolderSource)


def test_links_to_files_already_walked_are_not_queued_twice(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    a = jpeg(root / "a.jpg")
    blob = jpeg(root / "blobs" / "0f3a", 2)  # no image suffix: reached only through its links
    (root / "b_same_as_a.jpg").symlink_to("a.jpg")
    (root / "sub").mkdir()
    (root / "sub" / "again.jpg").symlink_to(a)
    (root / "c.jpg").symlink_to(blob)
    (root / "d.jpg").symlink_to(blob)
    ok, refused = walk(root)
    assert sorted(ok) == sorted([str(a), str(blob)]) and refused == {}


def test_directory_link_loops_end(tmp_path: Path) -> None:
    root, outside = tmp_path / "imgs", tmp_path / "elsewhere"
    a = jpeg(root / "d" / "a.jpg")
    (root / "d" / "up").symlink_to("..", target_is_directory=True)
    (root / "self").symlink_to(".", target_is_directory=True)
    b = jpeg(outside / "b.jpg", 2)
    (outside / "back").symlink_to(outside, target_is_directory=True)
    (outside / "root").symlink_to(root, target_is_directory=True)
    (root / "out").symlink_to(outside, target_is_directory=True)
    (root / "out2").symlink_to(outside, target_is_directory=True)
    assert walk(root) == ([str(a)], {str(root / "out"): "outside_root", str(root / "out2"): "outside_root"})
    assert walk(root, follow_symlinks=True) == ([str(a), str(b)], {})


def test_an_unreadable_directory_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.walk`` without ``onerror`` skipped it silently. Simulated: root may read anything."""
    root = tmp_path / "imgs"
    a, c = jpeg(root / "a" / "1.jpg"), jpeg(root / "c" / "3.jpg", 3)
    jpeg(root / "b" / "2.jpg", 2)
    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path) == str(root / "b"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(files.os, "scandir", scandir)
    ok, refused = walk(root)
    assert ok == [str(a), str(c)] and refused == {str(root / "b"): files.UNREADABLE_DIR}


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads a chmod 000 folder")
def test_an_unreadable_directory_is_reported_for_real(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    a = jpeg(root / "a.jpg")
    jpeg(root / "locked" / "b.jpg", 2)
    (root / "locked").chmod(0)
    try:
        assert walk(root) == ([str(a)], {str(root / "locked"): files.UNREADABLE_DIR})
    finally:
        (root / "locked").chmod(0o755)


def test_every_suffix_the_decoder_reads_is_walked(tmp_path: Path) -> None:
    old = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif"}
    assert old | {".avif", ".heic", ".heif"} <= files.IMAGE_SUFFIXES
    root = tmp_path / "imgs"
    for name in ("a.avif", "b.HEIC", "c.heif", "d.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    assert [Path(u).name for u in walk(root)[0]] == ["a.avif", "b.HEIC", "c.heif"]


@pytest.mark.skipif(os.name != "posix", reason="byte file names are a POSIX thing")
def test_a_file_name_that_is_not_utf8_is_walked_by_its_bytes(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    raw = jpeg(root / RAW_NAME)
    assert os.fsencode(raw).endswith(b"caf\xe9 \xff.jpg")
    ok, refused = walk(root)
    assert ok == [str(raw)] and refused == {}


# -- URL lists -------------------------------------------------------------------------------------------


def test_a_url_list_queues_every_good_line(tmp_path: Path) -> None:
    """One relative line without a CDN base, or one byte that is not UTF-8, used to queue nothing."""
    lst = tmp_path / "urls.txt"
    lst.write_bytes(
        b"\xef\xbb\xbfhttps://a.example/1.jpg\n"  # a BOM on the first line is not part of the URL
        b"# comment \xff\n"
        b"\n"
        b"https://a.example/caf\xe9.jpg\n"
        b"img/2.jpg\r\n"
        b"https://a.example/3.jpg"  # no final newline
    )
    refs = list(UrlListSource(lst).refs())
    assert [(r.uri, r.error_reason) for r in refs] == [
        ("https://a.example/1.jpg", None),
        ("https://a.example/caf\\xe9.jpg", files.BAD_LINE),
        ("img/2.jpg", files.RELATIVE_URL),
        ("https://a.example/3.jpg", None),
    ]
    assert "line 4 of urls.txt" in (refs[1].error_message or "")
    assert "line 5 of urls.txt" in (refs[2].error_message or "")
    with_base = [r.uri for r in UrlListSource(lst, "https://cdn.example/").refs() if not r.error_reason]
    assert "https://cdn.example/img/2.jpg" in with_base


def test_refused_entries_are_recorded_and_the_rest_queued(database_url: str, tmp_path: Path) -> None:
    lst = tmp_path / "urls.txt"
    lst.write_bytes(
        b"https://a.example/1.jpg\nrel.jpg\nhttps://a.example/\xff.jpg\nhttps://a.example/2.jpg\n"
    )
    store = SqlStore(database_url)
    try:
        result = store.enqueue(UrlListSource(lst).refs(), "urls")
        assert result == (2, 0) and result.refused == 2
        assert result.refusals == {files.RELATIVE_URL: 1, files.BAD_LINE: 1}
        counts = store.counts()
        assert counts["status"] == {"queued": 2, "failed_permanent": 2}
        assert counts["error"] == {files.RELATIVE_URL: 1, files.BAD_LINE: 1}
        rec = store.find("rel.jpg")
        assert (
            rec is not None
            and rec.error_reason == files.RELATIVE_URL
            and "cdn_base" in (rec.last_error or "")
        )
        assert [e["event"] for e in store.events(rec.id)] == ["failed_permanent"]
        again = store.enqueue(UrlListSource(lst).refs(), "urls")
        assert again == (0, 4) and again.refused == 0  # a rerun knows them all
    finally:
        store.close()


# -- ingest ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="byte file names are a POSIX thing")
def test_ingest_survives_bad_entries_and_reads_non_utf8_names(
    settings: Settings, tmp_path: Path, fake_encoder: VisualEncoder
) -> None:
    """``uri_hash`` raised UnicodeEncodeError on the name and the loop aborted the walk: nothing queued."""
    root = tmp_path / "imgs"
    jpeg(root / "a.jpg", 1)
    raw = jpeg(root / RAW_NAME, 2)
    (root / "loop.jpg").symlink_to("loop.jpg")
    (root / "passwd.jpg").symlink_to("/etc/passwd")
    if "AVIF" in Image.SAVE:
        textured_image(3, (64, 48)).save(root / "c.avif")
    with dedup_service(settings, fake_encoder) as svc:
        result = svc.enqueue(FolderSource(root).refs(), "folder")
        assert result.refusals == {files.SYMLINK_LOOP: 1, files.OUTSIDE_ROOT: 1}
        summary = svc.process_queue()
        summary.count_enqueue(result)
        assert summary.as_dict()["refusals"] == {files.SYMLINK_LOOP: 1, files.OUTSIDE_ROOT: 1}
        assert summary.processed == result.added == (3 if "AVIF" in Image.SAVE else 2)
        assert summary.failed == 0
        rec = svc.store.find_by_uri(str(raw))
        assert rec is not None and rec.status == Status.DONE and rec.width == 64
        assert rec.uri.startswith("file:") and rec.uri.endswith("/caf%E9 %FF.jpg")
        assert svc.store.find(rec.uri) == rec  # as `imgaudit status` is given what it printed
        link = svc.store.find(str(root / "passwd.jpg"))
        assert link is not None and link.status == Status.FAILED_PERMANENT
        assert link.error_reason == files.OUTSIDE_ROOT and "/etc/passwd" in (link.last_error or "")


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_rerun_takes_back_the_items_of_a_killed_ingest(
    settings: Settings, tmp_path: Path, fake_encoder: VisualEncoder
) -> None:
    """They waited out the whole lease (300 s) while the rerun said "processed 0"."""
    root = tmp_path / "imgs"
    for i in range(4):
        jpeg(root / f"{i}.jpg", i)
    with dedup_service(settings, fake_encoder) as svc:
        svc.enqueue(FolderSource(root).refs(), "folder")
        host, pid, started, ns = svc.worker_id.rsplit(":", 3)
        dead = f"{host}:{_dead_pid()}:{started}:{ns}"
        reused = f"{host}:{pid}:{int(started) - 3600}:{ns}"  # this pid, an hour ago: another process
        alive = f"{host}:{os.getppid()}:{files_start(os.getppid())}:{ns}"
        remote = f"elsewhere:{pid}:{started}:{ns}"
        for worker in (dead, reused, alive, remote):
            assert len(svc.store.claim(worker, 1, 300)) == 1
        summary = svc.process_queue()
        assert summary.reclaimed == 2 and summary.processed == 2
        assert summary.still_leased == 2 and {lease.worker for lease in summary.leased} == {alive, remote}
        assert summary.leased_until is not None
        d = summary.as_dict()
        assert d["still_leased"] == 2 and d["leased_by"] == {alive: 1, remote: 1} and d["leased_until"]
        assert svc.store.counts()["status"] == {"done": 2, "processing": 2}


def files_start(pid: int) -> int:
    from imgaudit.services.dedup import _start_time

    started = _start_time(pid)
    if started is None:
        pytest.skip("no /proc: the start time of another process is unknown")
    return started
