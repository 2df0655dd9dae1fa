"""The one atomic-replace helper: readers see the old file or the new one, and nothing is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgaudit.fsio import _temporary, atomic_path, atomic_write_bytes, atomic_write_text


def test_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "status.json"
    atomic_write_text(dest, "old")
    atomic_write_bytes(dest, b"new", durable=True)
    assert dest.read_bytes() == b"new"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["status.json"]


def test_a_failed_writer_keeps_the_old_file(tmp_path: Path) -> None:
    dest = tmp_path / "index.npy"
    dest.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        assert tmp.suffix == ".npy" and tmp.parent == dest.parent  # writers that pick a format by suffix
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert dest.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["index.npy"]


def test_a_directory_snapshot_replaces_as_one(tmp_path: Path) -> None:
    dest = tmp_path / "snapshot-1"
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
    assert (dest / "a").read_text() == "1"


def test_a_dead_writers_leftover_with_our_name_is_cleared(tmp_path: Path) -> None:
    """A killed process with our pid and thread id (pid 1 in a container) left its temporary behind."""
    dest = tmp_path / "snapshot-2"
    stale = _temporary(dest)
    stale.mkdir()
    (stale / "junk").write_text("x")
    with atomic_path(dest) as tmp:
        tmp.mkdir()  # would raise FileExistsError if the leftover were still there
        (tmp / "a").write_text("2")
    assert sorted(p.name for p in dest.iterdir()) == ["a"] and not stale.exists()
