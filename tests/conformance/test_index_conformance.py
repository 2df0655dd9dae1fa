"""Every index backend agrees with the brute-force reference; the dedup replica follows the store's index
log, takes back what an unwritten batch added, rebuilds, and survives a restart; the backend registry."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from imgaudit.bootstrap import index_backend
from imgaudit.config import load_settings
from imgaudit.errors import ConfigError
from imgaudit.index.base import BruteForceHashIndex, BruteForceVectorIndex, IndexBackend
from imgaudit.index.faiss_index import FaissHashIndex, FaissVectorIndex
from imgaudit.index.replica import DedupReplica
from imgaudit.types import IndexChange

DIM = 32


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("make", [lambda: FaissVectorIndex(DIM), lambda: BruteForceVectorIndex(DIM)])
def test_vector_index_matches_reference(make) -> None:
    rng = np.random.default_rng(1)
    x = unit(rng, 500)
    ids = np.arange(100, 600)
    index, ref = make(), BruteForceVectorIndex(DIM)
    for ix in (index, ref):
        ix.add(ids, x)
        assert ix.remove(np.array([100, 101, 99999])) == 2
    q = unit(rng, 20)
    s1, i1 = index.search(q, 5)
    s2, i2 = ref.search(q, 5)
    assert (i1 == i2).all()
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    assert len(index) == 498 and 150 in index and 100 not in index
    np.testing.assert_allclose(index.vector(150), x[50], atol=1e-6)
    assert index.vector(100) is None


@pytest.mark.parametrize("make", [FaissVectorIndex, BruteForceVectorIndex])
def test_readding_an_id_replaces_it(make) -> None:
    rng = np.random.default_rng(2)
    index = make(DIM)
    a, b = unit(rng, 1), unit(rng, 1)
    index.add(np.array([5]), a)
    index.add(np.array([5]), b)
    assert len(index) == 1
    np.testing.assert_allclose(index.vector(5), b[0], atol=1e-6)


def test_empty_search_returns_missing_ids() -> None:
    s, i = FaissVectorIndex(DIM).search(np.zeros((2, DIM), np.float32), 3)
    assert (i == -1).all() and np.isneginf(s).all()


def test_switches_to_approximate_and_keeps_recall(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = unit(rng, 3000)
    # Ids as a store hands them out: not positions (they start at 1, with gaps, in any order). Switching
    # must carry each vector under its own id.
    ids_in = rng.permutation(np.arange(1, 6001, 2))
    index = FaissVectorIndex(DIM, exact_below=2000, nprobe=32)
    index.add(ids_in[:1500], x[:1500])
    index.add(ids_in[1500:], x[1500:])
    assert index.approximate
    _, ids = index.search(x[:200], 1)
    assert (ids[:, 0] == ids_in[:200]).mean() > 0.95
    index.remove(np.array([ids_in[0]]))
    assert int(ids_in[0]) not in index and len(index) == 2999
    index.save(tmp_path / "v.faiss")
    again = FaissVectorIndex.load(tmp_path / "v.faiss", DIM, nprobe=32)
    assert again.approximate and len(again) == 2999


def test_hash_index_matches_reference() -> None:
    rng = np.random.default_rng(4)
    hashes = [int(h) for h in rng.integers(0, 2**63, 300, dtype=np.int64)]
    hashes[10] = hashes[11] ^ 0b101  # a close pair
    index, ref = FaissHashIndex(), BruteForceHashIndex()
    for ix in (index, ref):
        ix.add(np.arange(300), hashes)
        ix.remove(np.array([0]))
    d1, i1 = index.search(hashes[11:12] + hashes[50:51], 3)
    d2, _ = ref.search(hashes[11:12] + hashes[50:51], 3)
    assert (d1 == d2).all()
    assert i1[0][0] == 11 and d1[0][1] == 2 and i1[0][1] == 10
    assert len(index) == 299


# -- the dedup replica ---------------------------------------------------------------------------------

FAISS = IndexBackend(
    new_vectors=partial(FaissVectorIndex, exact_below=1000, nprobe=4),
    new_hashes=FaissHashIndex,
    load_vectors=partial(FaissVectorIndex.load, exact_below=1000, nprobe=4),
    load_hashes=FaissHashIndex.load,
)
MEMORY = IndexBackend(new_vectors=BruteForceVectorIndex, new_hashes=BruteForceHashIndex)


class IndexLog:
    """The store's side, as the replica reads it: a log of numbered changes and what is indexed now."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.entries: list[IndexChange] = []
        self.indexed: dict[int, tuple[int, np.ndarray]] = {}
        self.during_iteration: list[int] = []  # images another worker adds while a rebuild reads

    def add(self, *image_ids: int) -> None:
        for i in image_ids:
            v, h = unit(self.rng, 1)[0], int(self.rng.integers(0, 2**63))
            self.entries.append(IndexChange(len(self.entries) + 1, i, "add", h, v))
            self.indexed[i] = (h, v)

    def remove(self, image_id: int) -> None:
        self.entries.append(IndexChange(len(self.entries) + 1, image_id, "remove", None, None))
        self.indexed.pop(image_id, None)

    def index_changes(self, after: int) -> list[IndexChange]:
        return [e for e in self.entries if e.seq > after]

    def count_indexed(self) -> int:
        return len(self.indexed)

    def last_index_seq(self) -> int:
        return len(self.entries)

    def iter_indexed(self, batch: int = 10_000) -> Iterator[tuple[np.ndarray, list[int], np.ndarray]]:
        ids = sorted(self.indexed)
        rows = [self.indexed[i] for i in ids]
        self.add(*self.during_iteration)
        yield np.array(ids, np.int64), [h for h, _ in rows], np.stack([v for _, v in rows])


def test_replica_follows_the_log() -> None:
    log = IndexLog()
    replica = DedupReplica(MEMORY, DIM, descriptor="d", directory=None)
    log.add(1, 2, 3)
    log.remove(2)
    assert replica.sync(log) == 4 and replica.seq == 4
    assert len(replica) == len(replica.hashes) == 2 and 2 not in replica.vectors
    assert replica.agrees_with(log) and replica.sync(log) == 0
    _, ids = replica.vectors.search(log.indexed[3][1][None, :], 1)
    assert ids[0][0] == 3
    log.add(4)
    assert not replica.agrees_with(log) and replica.sync(log) == 1 and replica.agrees_with(log)


def test_a_batch_is_kept_only_once_written() -> None:
    log = IndexLog()
    log.add(1)
    replica = DedupReplica(MEMORY, DIM, descriptor="d", directory=None)
    replica.sync(log)
    v = unit(np.random.default_rng(9), 3)
    with pytest.raises(RuntimeError), replica.batch() as entries:
        entries.add(10, 5, v[0])
        assert 10 in replica.vectors  # visible to the rest of the batch at once
        raise RuntimeError("the store failed")
    assert len(replica) == len(replica.hashes) == 1 and 10 not in replica.vectors and replica.seq == 1
    with replica.batch() as entries:  # ended without being written: taken back too
        entries.add(11, 6, v[1])
    assert 11 not in replica.vectors and len(replica.hashes) == 1
    with replica.batch() as entries:
        entries.add(12, 7, v[1])
        entries.add(13, 8, v[2])
        entries.written(5, lost=[13])  # 13's lease had gone to another worker: not written
    assert 12 in replica.vectors and 13 not in replica.vectors and len(replica.hashes) == 2
    assert replica.seq == 5


def test_rebuild_reads_the_store_and_replays_what_was_logged_meanwhile() -> None:
    log = IndexLog()
    log.add(1, 2, 3)
    log.remove(1)
    replica = DedupReplica(MEMORY, DIM, descriptor="d", directory=None)
    other = IndexLog(seed=1)
    other.add(7, 8, 9, 10)
    replica.sync(other)  # a replica of some other store (a lost snapshot, a reset)
    assert not replica.agrees_with(log)
    log.during_iteration = [4]
    assert replica.rebuild(log) == 3
    assert replica.seq == log.last_index_seq() == 5 and replica.agrees_with(log)
    assert {i for i in range(1, 11) if i in replica.vectors} == {2, 3, 4}
    replica.reset(log)
    assert len(replica) == len(replica.hashes) == 0 and replica.seq == 5


def test_snapshots_round_trip_and_refuse_another_descriptor(tmp_path: Path) -> None:
    log = IndexLog(seed=5)
    replica = DedupReplica(FAISS, DIM, descriptor="d1", directory=tmp_path)
    log.add(*range(10))
    replica.sync(log)
    replica.save()
    log.add(10, 11)
    replica.sync(log)
    replica.save()
    log.remove(0)
    log.add(0)
    replica.sync(log)
    replica.save()
    assert len(list(tmp_path.glob("snapshot-*"))) == 2  # older snapshots pruned
    again = DedupReplica.open(FAISS, DIM, descriptor="d1", directory=tmp_path)
    assert again.seq == 14 and len(again) == len(again.hashes) == 12 and again.agrees_with(log)
    q = np.stack([log.indexed[i][1] for i in (0, 5, 11)])
    assert (again.vectors.search(q, 3)[1] == replica.vectors.search(q, 3)[1]).all()
    assert (again.hashes.search([log.indexed[5][0]], 1)[1] == 5).all()
    for empty in (
        DedupReplica.open(FAISS, DIM, descriptor="other", directory=tmp_path),
        DedupReplica.open(FAISS, DIM + 1, descriptor="d1", directory=tmp_path),
        DedupReplica.open(FAISS, DIM, descriptor="d1", directory=tmp_path / "none"),
    ):
        assert empty.seq == 0 and len(empty) == 0


def test_an_unsaved_backend_writes_nothing(tmp_path: Path) -> None:
    log = IndexLog()
    log.add(1, 2)
    replica = DedupReplica.open(MEMORY, DIM, descriptor="d1", directory=tmp_path / "index")
    replica.sync(log)
    assert replica.save() is None and not (tmp_path / "index").exists()


# -- the backend registry -------------------------------------------------------------------------------


def test_the_registry_builds_each_backend_and_refuses_unknown_names(tmp_path: Path) -> None:
    def backend(name: str) -> IndexBackend:
        return index_backend(load_settings(data_dir=tmp_path, index={"backend": name, "nprobe": 3}))

    faiss = backend("faiss")
    assert faiss.persistent and isinstance(faiss.new_hashes(), FaissHashIndex)
    vectors = faiss.new_vectors(DIM)
    assert isinstance(vectors, FaissVectorIndex) and vectors.dim == DIM and vectors.nprobe == 3
    memory = backend("memory")
    assert not memory.persistent and isinstance(memory.new_vectors(DIM), BruteForceVectorIndex)
    with pytest.raises(ConfigError, match="unknown index backend 'milvus\\?'"):
        backend("milvus?")
