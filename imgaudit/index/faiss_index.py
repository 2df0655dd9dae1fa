"""FAISS backends: the embedded default for vectors and hashes.

Vectors: exact inner-product search (``IndexFlatIP``) while the collection is small; once it grows past
``exact_below`` the index is rebuilt as an inverted-file index (``IndexIVFScalarQuantizer``, 8-bit codes,
``nlist ~ 4*sqrt(n)``), trained on the vectors it holds. Both keep the store's ids (``IndexIDMap2`` /
direct map), support removal, and persist to one file.

Hashes: ``IndexBinaryFlat`` Hamming search, which scans codes with popcount in C (tens of millions of
64-bit codes per second), wrapped to keep ids.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from imgaudit.fsio import atomic_path
from imgaudit.index.base import EMPTY_ID
from imgaudit.signals.hashes import hashes_to_array

_MIN_TRAIN_PER_LIST = 39  # FAISS warns below this many training points per centroid

# faiss's type stubs describe the raw SWIG classes, not the numpy-taking methods faiss installs over them
# (remove_ids, reconstruct_n, ...) nor the subclass each index really is: the wrapped index is Any.
FaissIndex = Any


class FaissVectorIndex:
    def __init__(self, dim: int, *, exact_below: int = 50_000, nprobe: int = 16) -> None:
        self.dim = dim
        self.exact_below = exact_below
        self.nprobe = nprobe
        self._index: FaissIndex = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @property
    def approximate(self) -> bool:
        return not isinstance(self._index, faiss.IndexIDMap2)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, np.float32).reshape(-1, self.dim)
        ids = np.ascontiguousarray(ids, np.int64)
        if len(ids) == 0:
            return
        # Re-adding an id replaces it, so a retried item never lands twice.
        self.remove(ids)
        self._index.add_with_ids(vectors, ids)
        if not self.approximate and self.exact_below and self._index.ntotal >= self.exact_below:
            self._go_approximate()

    def _all(self) -> tuple[np.ndarray, np.ndarray]:
        n = self._index.ntotal
        if not self.approximate:
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            # The flat index underneath holds the vectors in id_map's order; IDMap2.reconstruct_n would
            # read positions as ids (and abort the process on the first id that is not a position).
            return ids, faiss.downcast_index(self._index.index).reconstruct_n(0, n)
        inv = self._index.invlists
        ids_list, vec_list = [], []
        for lst in range(inv.nlist):
            size = inv.list_size(lst)
            if size:
                lid = faiss.rev_swig_ptr(inv.get_ids(lst), size).copy()
                ids_list.append(lid)
                vec_list.append(np.stack([self._index.reconstruct(int(i)) for i in lid]))
        if not ids_list:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.concatenate(ids_list), np.concatenate(vec_list)

    def _go_approximate(self) -> None:
        ids, vectors = self._all()
        nlist = max(1, min(int(4 * math.sqrt(len(ids))), len(ids) // _MIN_TRAIN_PER_LIST))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        index.train(vectors)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]  # not in the stubs
        index.add_with_ids(vectors, ids)
        index.nprobe = self.nprobe
        self._index = index

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, np.int64)
        if len(ids) == 0 or self._index.ntotal == 0:
            return 0
        return int(self._index.remove_ids(ids))

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(vectors, np.float32).reshape(-1, self.dim)
        if self._index.ntotal == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), EMPTY_ID, np.int64)
        scores, ids = self._index.search(q, k)
        scores[ids == EMPTY_ID] = -np.inf
        return scores, ids

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __contains__(self, image_id: int) -> bool:
        return self.vector(image_id) is not None

    def vector(self, image_id: int) -> np.ndarray | None:
        try:
            return self._index.reconstruct(int(image_id))
        except RuntimeError:
            return None

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            faiss.write_index(self._index, str(tmp))

    @classmethod
    def load(cls, path: Path, dim: int, *, exact_below: int = 50_000, nprobe: int = 16) -> FaissVectorIndex:
        index = cls(dim, exact_below=exact_below, nprobe=nprobe)
        loaded = faiss.read_index(str(path))
        if loaded.d != dim:
            raise ValueError(f"index at {path} has dimension {loaded.d}, expected {dim}")
        # read_index already returns the concrete class; downcasting again would leave the C++ object
        # owned by a temporary wrapper and free it under us.
        if isinstance(loaded, faiss.IndexIVF):
            loaded.nprobe = nprobe
        index._index = loaded
        return index


class FaissHashIndex:
    def __init__(self) -> None:
        self._index: FaissIndex = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(64))

    def add(self, ids: np.ndarray, hashes: list[int]) -> None:
        ids = np.ascontiguousarray(ids, np.int64)
        if len(ids) == 0:
            return
        self.remove(ids)
        self._index.add_with_ids(hashes_to_array(hashes), ids)

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, np.int64)
        if len(ids) == 0 or self._index.ntotal == 0:
            return 0
        return int(self._index.remove_ids(ids))

    def search(self, hashes: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._index.ntotal == 0 or not hashes:
            return np.full((len(hashes), k), 65, np.int32), np.full((len(hashes), k), EMPTY_ID, np.int64)
        dists, ids = self._index.search(hashes_to_array(hashes), k)
        dists[ids == EMPTY_ID] = 65
        return dists.astype(np.int32), ids

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            faiss.write_index_binary(self._index, str(tmp))

    @classmethod
    def load(cls, path: Path) -> FaissHashIndex:
        index = cls()
        index._index = faiss.read_index_binary(str(path))
        return index
