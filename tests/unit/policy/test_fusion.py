"""Rank fusion and paging, by hand-computed examples."""

from __future__ import annotations

import pytest

from imgaudit.policy.fusion import paginate, rrf, weighted_minmax


def test_rrf_sums_reciprocal_ranks_and_reports_them() -> None:
    fused = rrf({"vector": [10, 20, 30], "text": [20, 40]}, k=60)
    by_id = {i: (s, r) for i, s, r in fused}
    assert by_id[20] == (pytest.approx(1 / 62 + 1 / 61), {"vector": 2, "text": 1})
    assert by_id[10] == (pytest.approx(1 / 61), {"vector": 1})
    assert by_id[40] == (pytest.approx(1 / 62), {"text": 2})
    assert [i for i, _, _ in fused] == [20, 10, 40, 30]  # 40 and 30: 1/62 > 1/63


def test_rrf_ties_by_id_and_k_changes_the_balance() -> None:
    # One list's head against another's head: equal, so the smaller id first.
    assert [i for i, _, _ in rrf({"a": [7], "b": [3]})] == [3, 7]
    # Rank 1 in one list vs rank 3 in two lists: small k favours the single top hit, large k consensus.
    lists = {"a": [1, 9, 2], "b": [8, 5, 2]}
    assert rrf(lists, k=0)[0][0] == 1  # 1/1 beats 1/3 + 1/3
    assert rrf(lists, k=60)[0][0] == 2  # 2/63 beats 1/61


def test_rrf_weights_and_repeats() -> None:
    fused = rrf({"a": [1, 2], "b": [2, 1]}, k=1, weights={"a": 3.0})  # b weighs 1 by default
    assert fused[0][0] == 1 and fused[0][1] == pytest.approx(3 / 2 + 1 / 3)
    assert fused[1][1] == pytest.approx(3 / 3 + 1 / 2)
    # An id repeated in one list counts once, at its best rank.
    assert rrf({"a": [5, 5, 6]}, k=0) == [(5, 1.0, {"a": 1}), (6, pytest.approx(1 / 3), {"a": 3})]
    assert rrf({"a": [1]}, weights={"a": 0.0}) == [(1, 0.0, {"a": 1})]
    assert rrf({}) == [] and rrf({"a": []}) == []
    with pytest.raises(ValueError):
        rrf({"a": [1]}, weights={"a": -1.0})
    with pytest.raises(ValueError):
        rrf({"a": [1]}, k=-1)


def test_weighted_minmax_is_the_alpha_blend() -> None:
    alpha = 0.7
    fused = weighted_minmax(
        {"vector": [(1, 0.9), (2, 0.5), (3, 0.4)], "text": [(3, 12.0), (1, 2.0)]},
        {"vector": alpha, "text": 1 - alpha},
    )
    # vector normalised: 1 -> 1.0, 2 -> 0.2, 3 -> 0.0; text: 3 -> 1.0, 1 -> 0.0
    assert fused == [(1, pytest.approx(0.7)), (3, pytest.approx(0.3)), (2, pytest.approx(0.14))]


def test_weighted_minmax_edge_cases() -> None:
    # A constant list gives each of its ids 1; an empty one contributes nothing; repeats count once.
    assert weighted_minmax({"a": [(4, 3.0), (2, 3.0)], "b": []}) == [(2, 1.0), (4, 1.0)]
    assert weighted_minmax({"a": [(1, 5.0), (1, 0.0), (2, 0.0)]}) == [(1, 1.0), (2, 0.0)]
    assert weighted_minmax({}) == []


def test_paginate() -> None:
    items = list(range(1, 24))
    p = paginate(items, 2, 10)
    assert (p.items, p.total, p.pages, p.has_next) == (list(range(11, 21)), 23, 3, True)
    last = paginate(items, 3, 10)
    assert last.items == [21, 22, 23] and not last.has_next
    assert paginate(items, 9, 10).items == []
    assert paginate([], 1, 10).pages == 0
    for bad in [(0, 10), (1, 0)]:
        with pytest.raises(ValueError):
            paginate(items, *bad)
