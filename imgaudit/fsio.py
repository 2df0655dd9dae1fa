"""Atomic file replacement: a reader sees the old file or the new one, never half of one.

Every file imgaudit rewrites in place (index snapshots, thumbnails, worker status and pid files, exported
models, classifier registries, label-space caches) goes through here. The writers that matter most
(FAISS, ONNX export, numpy) write to a *path* themselves, which the file-handle libraries for atomic
writes do not cover; ``atomic_path`` hands them a temporary path beside the destination and renames it
over the destination only when the writer returned without an error.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]


def _temporary(dest: Path) -> Path:
    # Same directory (os.replace is atomic only within one file system), hidden, unique per process and
    # thread, and ending in the destination's suffix (np.save, PIL and others pick behaviour from it).
    return dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp{dest.suffix}")


@contextmanager
def atomic_path(dest: Path, *, durable: bool = False) -> Iterator[Path]:
    """A temporary path to write ``dest``'s new content to; renamed over ``dest`` on success, removed on
    error. ``durable`` also flushes the file to disk first (for files whose loss would cost a rebuild).

    The temporary path may also be a directory the writer creates (a snapshot of several files): it
    then replaces ``dest`` only when ``dest`` does not exist or is an empty directory."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(dest)
    _remove(tmp)  # left by a killed process that had our pid and thread id: nobody else writes this name
    try:
        yield tmp
        if durable and tmp.is_file():
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write_bytes(dest: Path, data: bytes, *, durable: bool = False) -> None:
    """Replace ``dest`` with ``data`` atomically."""
    with atomic_path(dest, durable=durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(dest: Path, text: str, *, durable: bool = False) -> None:
    """Replace ``dest`` with ``text`` (UTF-8) atomically."""
    with atomic_path(dest, durable=durable) as tmp:
        tmp.write_text(text, encoding="utf-8")
