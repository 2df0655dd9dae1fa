"""The vector and hash indexes that dedup uses, kept and persisted together."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgaudit.index.base import BruteForceHashIndex, BruteForceVectorIndex, HashIndex, VectorIndex

VECTOR_FILE = "vectors.faiss"
HASH_FILE = "hashes.faiss"
META_FILE = "index.json"
KEEP_SNAPSHOTS = 2


@dataclass
class Indexes:
    vectors: VectorIndex
    hashes: HashIndex

    def add(self, ids: np.ndarray, phashes: list[int], embeddings: np.ndarray) -> None:
        self.vectors.add(ids, embeddings)
        self.hashes.add(ids, phashes)

    def remove(self, ids: np.ndarray) -> None:
        self.vectors.remove(ids)
        self.hashes.remove(ids)

    def __len__(self) -> int:
        return len(self.vectors)


def new_indexes(backend: str, dim: int, *, exact_below: int, nprobe: int) -> Indexes:
    """A registry of one explicit match: unknown backends fail loudly."""
    match backend:
        case "faiss":
            from imgaudit.index.faiss_index import FaissHashIndex, FaissVectorIndex

            return Indexes(FaissVectorIndex(dim, exact_below=exact_below, nprobe=nprobe), FaissHashIndex())
        case "memory":
            return Indexes(BruteForceVectorIndex(dim), BruteForceHashIndex())
        case _:
            raise ValueError(f"unknown index backend {backend!r} (expected 'faiss' or 'memory')")


def save_indexes(indexes: Indexes, directory: Path, *, descriptor: str, seq: int) -> Path:
    """Persist both indexes as one snapshot of the index log up to ``seq``.

    Each snapshot is a folder of its own whose metadata file is written last, so several workers can
    save concurrently and a reader never mixes files of two snapshots; older snapshots are pruned.
    """
    directory.mkdir(parents=True, exist_ok=True)
    snap = directory / f"snapshot-{seq:014d}-{os.getpid()}"
    tmp = snap.with_name(snap.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    indexes.vectors.save(tmp / VECTOR_FILE)
    indexes.hashes.save(tmp / HASH_FILE)
    meta = {"count": len(indexes), "dim": indexes.vectors.dim, "descriptor": descriptor, "seq": seq}
    (tmp / META_FILE).write_text(json.dumps(meta))
    shutil.rmtree(snap, ignore_errors=True)
    os.replace(tmp, snap)
    for old in _snapshots(directory)[KEEP_SNAPSHOTS:]:
        shutil.rmtree(old, ignore_errors=True)
    return snap


def _snapshots(directory: Path) -> list[Path]:
    """Complete snapshots, newest (highest sequence number) first."""
    if not directory.is_dir():
        return []
    snaps = [
        p for p in directory.glob("snapshot-*") if not p.name.endswith(".tmp") and (p / META_FILE).is_file()
    ]
    return sorted(snaps, key=lambda p: p.name, reverse=True)


def load_indexes(
    directory: Path, dim: int, *, descriptor: str, exact_below: int, nprobe: int
) -> tuple[Indexes, int] | None:
    """The newest persisted snapshot made for this descriptor and the log sequence it reflects."""
    from imgaudit.index.faiss_index import FaissHashIndex, FaissVectorIndex

    for snap in _snapshots(directory):
        try:
            meta = json.loads((snap / META_FILE).read_text())
            if meta.get("descriptor") != descriptor or meta.get("dim") != dim:
                continue
            indexes = Indexes(
                FaissVectorIndex.load(snap / VECTOR_FILE, dim, exact_below=exact_below, nprobe=nprobe),
                FaissHashIndex.load(snap / HASH_FILE),
            )
            return indexes, int(meta.get("seq", 0))
        except (OSError, ValueError, RuntimeError):
            continue  # a snapshot pruned while we read it, or damaged: try the next
    return None
