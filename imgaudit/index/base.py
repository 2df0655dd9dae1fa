"""Index interfaces, what a backend provides, and the brute-force reference implementations.

The reference implementations are the specification: every faster backend must agree with them
(``tests/conformance/test_index_conformance.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from imgaudit.signals.hashes import hamming

EMPTY_ID = -1


class VectorIndex(Protocol):
    """Inner-product search over L2-normalised vectors, keyed by the store's image ids."""

    dim: int

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n, k), best first; missing neighbours have id -1."""
        ...

    def __len__(self) -> int: ...

    def __contains__(self, image_id: int) -> bool: ...

    def vector(self, image_id: int) -> np.ndarray | None:
        """The stored vector of an id (approximate for quantised indexes), None if absent."""
        ...

    def save(self, path: Path) -> None: ...


class HashIndex(Protocol):
    """Nearest neighbours of 64-bit hashes by Hamming distance."""

    def add(self, ids: np.ndarray, hashes: list[int]) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def search(self, hashes: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids), each (n, k), nearest first; missing neighbours have id -1."""
        ...

    def __len__(self) -> int: ...

    def save(self, path: Path) -> None: ...


@dataclass(frozen=True, slots=True)
class IndexBackend:
    """How one backend makes vector and hash indexes, and reads saved ones back. A backend that cannot
    read them back (the in-memory reference) is never saved: its indexes are rebuilt from the store."""

    new_vectors: Callable[[int], VectorIndex]  # dim -> empty index
    new_hashes: Callable[[], HashIndex]
    load_vectors: Callable[[Path, int], VectorIndex] | None = None  # (file, dim) -> index
    load_hashes: Callable[[Path], HashIndex] | None = None

    @property
    def persistent(self) -> bool:
        return self.load_vectors is not None and self.load_hashes is not None


class BruteForceVectorIndex:
    """Exact search with numpy; the reference for the FAISS backend and fine for tests."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._vectors: dict[int, np.ndarray] = {}

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        for i, v in zip(np.asarray(ids).tolist(), np.asarray(vectors, np.float32), strict=True):
            self._vectors[int(i)] = v

    def remove(self, ids: np.ndarray) -> int:
        return sum(self._vectors.pop(int(i), None) is not None for i in np.asarray(ids).tolist())

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), EMPTY_ID, np.int64)
        if self._vectors:
            keys = np.fromiter(self._vectors.keys(), np.int64)
            sims = q @ np.stack(list(self._vectors.values())).T
            # Ties broken by id so that results are deterministic and comparable across backends.
            order = np.lexsort((np.broadcast_to(keys, sims.shape), -sims), axis=1)[:, :k]
            m = order.shape[1]
            scores[:, :m] = np.take_along_axis(sims, order, axis=1)
            ids[:, :m] = keys[order]
        return scores, ids

    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, image_id: int) -> bool:
        return int(image_id) in self._vectors

    def vector(self, image_id: int) -> np.ndarray | None:
        return self._vectors.get(int(image_id))

    def save(self, path: Path) -> None:
        keys = np.fromiter(self._vectors.keys(), np.int64)
        vecs = (
            np.stack(list(self._vectors.values())) if self._vectors else np.zeros((0, self.dim), np.float32)
        )
        with open(path, "wb") as f:
            np.savez(f, ids=keys, vectors=vecs)

    @classmethod
    def load(cls, path: Path, dim: int) -> BruteForceVectorIndex:
        index = cls(dim)
        with np.load(path) as data:
            index.add(data["ids"], data["vectors"])
        return index


class BruteForceHashIndex:
    """Hamming search with a Python loop: the reference only, never used at scale."""

    def __init__(self) -> None:
        self._hashes: dict[int, int] = {}

    def add(self, ids: np.ndarray, hashes: list[int]) -> None:
        for i, h in zip(np.asarray(ids).tolist(), hashes, strict=True):
            self._hashes[int(i)] = int(h)

    def remove(self, ids: np.ndarray) -> int:
        return sum(self._hashes.pop(int(i), None) is not None for i in np.asarray(ids).tolist())

    def search(self, hashes: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        dists = np.full((len(hashes), k), 65, np.int32)
        ids = np.full((len(hashes), k), EMPTY_ID, np.int64)
        for row, h in enumerate(hashes):
            ranked = sorted((hamming(h, v), i) for i, v in self._hashes.items())[:k]
            for col, (d, i) in enumerate(ranked):
                dists[row, col], ids[row, col] = d, i
        return dists, ids

    def __len__(self) -> int:
        return len(self._hashes)

    def save(self, path: Path) -> None:  # pragma: no cover - reference only
        raise NotImplementedError("the reference hash index is not persisted")
