"""The dedup indexes of one process: a replica of the store's index log, and their only owner.

The store is the source of truth: it keeps every indexed image's descriptor and hash, and logs every
change to what is indexed (one sequence number per entry). A process holds the vector and hash indexes
in memory with the log position they reflect (``seq``): it starts from the newest snapshot saved for its
descriptor (or empty), catches up by replaying the log after ``seq``, adds what its own batches decide
(taken back if the batch is not written), and rebuilds from the store when the two disagree. Nothing else
assigns the indexes or the position.

A snapshot is a folder of its own whose metadata file is written last, so several workers can save
concurrently and a reader never mixes files of two snapshots; older snapshots are pruned.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np

from imgaudit.fsio import atomic_path
from imgaudit.index.base import HashIndex, IndexBackend, VectorIndex
from imgaudit.types import IndexChange

# The file names date from when FAISS was the only saved backend; kept so existing snapshots load.
VECTOR_FILE = "vectors.faiss"
HASH_FILE = "hashes.faiss"
META_FILE = "index.json"
KEEP_SNAPSHOTS = 2


class IndexLog(Protocol):
    """The store's index log as catching up reads it (from the store, or inside its decision lock).

    Declared here because the index layer may not import the store; the store satisfies it as it is."""

    def index_changes(self, after: int) -> Sequence[IndexChange]: ...

    def count_indexed(self) -> int: ...


class IndexSource(IndexLog, Protocol):
    """What a rebuild reads besides the log: its end, and every indexed image's descriptor and hash."""

    def last_index_seq(self) -> int: ...

    def iter_indexed(self, batch: int = ...) -> Iterator[tuple[np.ndarray, list[int], np.ndarray]]: ...


class DedupReplica:
    """The vector and hash indexes of dedup and the index-log position they reflect.

    ``directory`` is where snapshots go; with None, or a backend that is not persisted, nothing is saved
    and the replica is rebuilt from the store at each start."""

    def __init__(self, backend: IndexBackend, dim: int, *, descriptor: str, directory: Path | None) -> None:
        self.backend = backend
        self.dim = dim
        self.descriptor = descriptor
        self.directory = directory if backend.persistent else None
        self._vectors, self._hashes = self._empty()
        self._seq = 0

    @classmethod
    def open(
        cls, backend: IndexBackend, dim: int, *, descriptor: str, directory: Path | None
    ) -> DedupReplica:
        """The newest snapshot saved for this descriptor and dimension, or empty at the log's start."""
        replica = cls(backend, dim, descriptor=descriptor, directory=directory)
        replica._load()
        return replica

    def _empty(self) -> tuple[VectorIndex, HashIndex]:
        return self.backend.new_vectors(self.dim), self.backend.new_hashes()

    @property
    def vectors(self) -> VectorIndex:
        return self._vectors

    @property
    def hashes(self) -> HashIndex:
        return self._hashes

    @property
    def seq(self) -> int:
        """The last index-log entry reflected in the indexes."""
        return self._seq

    def __len__(self) -> int:
        return len(self._vectors)

    # -- following the store ---------------------------------------------------------------------------

    def sync(self, log: IndexLog) -> int:
        """Apply the log entries written (by any worker) since ``seq``; returns how many there were."""
        changes = log.index_changes(self._seq)
        for ch in changes:
            ids = np.array([ch.image_id], np.int64)
            if ch.op == "add" and ch.embedding is not None and ch.phash is not None:
                self._add(ids, [ch.phash], ch.embedding[None, :])
            else:
                self._remove(ids)
            self._seq = max(self._seq, ch.seq)
        return len(changes)

    def agrees_with(self, log: IndexLog) -> bool:
        """Whether both indexes hold as many images as the store says are indexed."""
        return len(self._vectors) == len(self._hashes) == log.count_indexed()

    @contextmanager
    def batch(self) -> Iterator[BatchEntries]:
        """A batch's entries: unless the batch is marked ``written`` once the store has committed it,
        whatever it added is taken back when the block ends, raising or not."""
        entries = BatchEntries(self)
        try:
            yield entries
        finally:
            if not entries.done:
                self._remove(np.array(entries.added, np.int64))

    def rebuild(self, source: IndexSource) -> int:
        """Rebuild both indexes from the descriptors and hashes kept in the store, without stopping other
        workers: entries logged while this runs are replayed at the end. Returns the images indexed."""
        seq = source.last_index_seq()
        vectors, hashes = self._empty()
        for ids, phashes, embeddings in source.iter_indexed():
            vectors.add(ids, embeddings)
            hashes.add(ids, phashes)
        self._vectors, self._hashes, self._seq = vectors, hashes, seq
        self.sync(source)
        return len(self)

    def reset(self, source: IndexSource) -> None:
        """Empty, following the log from its current end (the store has just been emptied)."""
        self._vectors, self._hashes = self._empty()
        self._seq = source.last_index_seq()

    def _add(self, ids: np.ndarray, phashes: list[int], embeddings: np.ndarray) -> None:
        self._vectors.add(ids, embeddings)
        self._hashes.add(ids, phashes)

    def _remove(self, ids: np.ndarray) -> None:
        self._vectors.remove(ids)
        self._hashes.remove(ids)

    # -- snapshots -------------------------------------------------------------------------------------

    def save(self) -> Path | None:
        """Persist both indexes as one snapshot of the log up to ``seq``; None when nothing is saved."""
        if self.directory is None:
            return None
        snap = self.directory / f"snapshot-{self._seq:014d}-{os.getpid()}"
        shutil.rmtree(snap, ignore_errors=True)  # this process saved this position before
        with atomic_path(snap) as tmp:
            tmp.mkdir()
            self._vectors.save(tmp / VECTOR_FILE)
            self._hashes.save(tmp / HASH_FILE)
            meta = {"count": len(self), "dim": self.dim, "descriptor": self.descriptor, "seq": self._seq}
            (tmp / META_FILE).write_text(json.dumps(meta))
        for old in _snapshots(self.directory)[KEEP_SNAPSHOTS:]:
            shutil.rmtree(old, ignore_errors=True)
        return snap

    def _load(self) -> None:
        if self.directory is None:
            return
        assert self.backend.load_vectors is not None and self.backend.load_hashes is not None
        for snap in _snapshots(self.directory):
            try:
                meta = json.loads((snap / META_FILE).read_text())
                if meta.get("descriptor") != self.descriptor or meta.get("dim") != self.dim:
                    continue
                vectors = self.backend.load_vectors(snap / VECTOR_FILE, self.dim)
                hashes = self.backend.load_hashes(snap / HASH_FILE)
            except (OSError, ValueError, RuntimeError):
                continue  # a snapshot pruned while we read it, or damaged: try the next
            self._vectors, self._hashes, self._seq = vectors, hashes, int(meta.get("seq", 0))
            return


class BatchEntries:
    """What one batch adds to a replica while its decisions are taken, until the store has written it."""

    def __init__(self, replica: DedupReplica) -> None:
        self._replica = replica
        self.added: list[int] = []
        self.done = False

    def add(self, image_id: int, phash: int, embedding: np.ndarray) -> None:
        """Index one image now, so that later images of the same batch are compared with it too."""
        self._replica._add(np.array([image_id], np.int64), [phash], embedding[None, :])
        self.added.append(image_id)

    def written(self, last_seq: int, lost: Sequence[int] = ()) -> None:
        """The store wrote the batch: its log now runs to ``last_seq``. The items in ``lost`` (their
        leases had gone to another worker) were not written, so their entries are taken back."""
        replica = self._replica
        replica._seq = max(replica._seq, last_seq)
        if lost:
            replica._remove(np.array(lost, np.int64))
        self.done = True


def _snapshots(directory: Path) -> list[Path]:
    """Complete snapshots, newest (highest sequence number) first. Snapshots being written have a hidden
    temporary name (``fsio.atomic_path``) and are not matched."""
    if not directory.is_dir():
        return []
    snaps = [p for p in directory.glob("snapshot-*") if (p / META_FILE).is_file()]
    return sorted(snaps, key=lambda p: p.name, reverse=True)
