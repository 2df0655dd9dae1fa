"""Every index backend agrees with the brute-force reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgaudit.index.base import BruteForceHashIndex, BruteForceVectorIndex
from imgaudit.index.catalog import load_indexes, new_indexes, save_indexes
from imgaudit.index.faiss_index import FaissHashIndex, FaissVectorIndex

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


def test_indexes_persist_and_refuse_another_descriptor(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    ix = new_indexes("faiss", DIM, exact_below=1000, nprobe=4)
    ix.add(np.arange(10), list(range(10)), unit(rng, 10))
    save_indexes(ix, tmp_path, descriptor="d1", seq=7)
    ix.add(np.arange(10, 12), [1, 2], unit(rng, 2))
    save_indexes(ix, tmp_path, descriptor="d1", seq=9)
    save_indexes(ix, tmp_path, descriptor="d1", seq=11)
    assert len(list(tmp_path.glob("snapshot-*"))) == 2  # older snapshots pruned
    again, seq = load_indexes(tmp_path, DIM, descriptor="d1", exact_below=1000, nprobe=4)
    assert seq == 11 and len(again) == 12 and len(again.hashes) == 12
    assert load_indexes(tmp_path, DIM, descriptor="other", exact_below=1000, nprobe=4) is None
    assert load_indexes(tmp_path / "none", DIM, descriptor="d1", exact_below=1000, nprobe=4) is None
    with pytest.raises(ValueError, match="unknown index backend"):
        new_indexes("milvus?", DIM, exact_below=1, nprobe=1)
