"""The vector and hash indexes that dedup uses, kept and persisted together."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgaudit.index.base import BruteForceHashIndex, BruteForceVectorIndex, HashIndex, VectorIndex

VECTOR_FILE = "vectors.faiss"
HASH_FILE = "hashes.faiss"
META_FILE = "index.json"


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


def save_indexes(indexes: Indexes, directory: Path, *, descriptor: str, fingerprint: list[int]) -> None:
    """Persist both indexes with the fingerprint of the store state they reflect."""
    directory.mkdir(parents=True, exist_ok=True)
    indexes.vectors.save(directory / VECTOR_FILE)
    indexes.hashes.save(directory / HASH_FILE)
    meta = {
        "count": len(indexes),
        "dim": indexes.vectors.dim,
        "descriptor": descriptor,
        "fingerprint": fingerprint,
    }
    (directory / META_FILE).write_text(json.dumps(meta))


def saved_fingerprint(directory: Path) -> list[int] | None:
    try:
        return json.loads((directory / META_FILE).read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def load_indexes(
    directory: Path, dim: int, *, descriptor: str, exact_below: int, nprobe: int
) -> Indexes | None:
    """The persisted FAISS indexes, or None when absent or made for another descriptor."""
    from imgaudit.index.faiss_index import FaissHashIndex, FaissVectorIndex

    try:
        meta = json.loads((directory / META_FILE).read_text())
        if meta.get("descriptor") != descriptor or meta.get("dim") != dim:
            return None
        return Indexes(
            FaissVectorIndex.load(directory / VECTOR_FILE, dim, exact_below=exact_below, nprobe=nprobe),
            FaissHashIndex.load(directory / HASH_FILE),
        )
    except (OSError, ValueError, RuntimeError):
        return None
