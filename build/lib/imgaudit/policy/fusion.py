"""Merging ranked lists from different retrievers (vector, BM25, ...) into one, and paging the result.

Reciprocal rank fusion uses ranks only, so it needs no calibration between a cosine and a BM25 score,
whose scales have nothing in common; ``weighted_minmax`` is the older score blend, kept to compare
against in benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


def _weight(weights: Mapping[str, float] | None, name: str) -> float:
    w = 1.0 if weights is None else float(weights.get(name, 1.0))
    if w < 0:
        raise ValueError(f"negative weight for {name!r}")
    return w


def rrf(
    rankings: Mapping[str, Sequence[int]], k: int = 60, weights: Mapping[str, float] | None = None
) -> list[tuple[int, float, dict[str, int]]]:
    """Reciprocal rank fusion: each id scores ``sum(w_list / (k + rank))`` over the lists holding it.

    Ranks are 1-based; a list missing from ``weights`` weighs 1; an id repeated within a list counts at
    its best rank. Returns (id, fused score, {list: rank}) best first, ties by id. ``k`` (60 in the
    original paper) damps the head: the larger it is, the more a lower rank in many lists counts.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    scores: dict[int, float] = {}
    ranks: dict[int, dict[str, int]] = {}
    for name, ids in rankings.items():
        w = _weight(weights, name)
        for rank, i in enumerate(ids, 1):
            seen = ranks.setdefault(i, {})
            if name in seen:
                continue
            seen[name] = rank
            scores[i] = scores.get(i, 0.0) + w / (k + rank)
    return sorted(((i, s, ranks[i]) for i, s in scores.items()), key=lambda x: (-x[1], x[0]))


def weighted_minmax(
    scored: Mapping[str, Sequence[tuple[int, float]]], weights: Mapping[str, float] | None = None
) -> list[tuple[int, float]]:
    """The legacy blend: min-max normalise each list's scores to [0, 1], then add them up weighted
    (``{"vector": a, "text": 1 - a}`` is the α-blend). An id absent from a list gets 0 from it, an id
    repeated in a list counts once (its first score); a list whose scores are all equal gives each of its
    ids 1. Returns (id, score) best first, ties by id.
    """
    fused: dict[int, float] = {}
    for name, items in scored.items():
        if not items:
            continue
        w = _weight(weights, name)
        values = [s for _, s in items]
        lo, hi = min(values), max(values)
        for i, s in dict(reversed(items)).items():  # reversed: the first score of a repeated id wins
            fused[i] = fused.get(i, 0.0) + w * ((s - lo) / (hi - lo) if hi > lo else 1.0)
    return sorted(fused.items(), key=lambda x: (-x[1], x[0]))


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    page: int  # 1-based
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return -(-self.total // self.per_page)

    @property
    def has_next(self) -> bool:
        return self.page < self.pages


def paginate(items: Sequence[T], page: int, per_page: int) -> Page[T]:
    """Page ``page`` (1-based) of ``items``; a page past the end is empty, not an error."""
    if page < 1 or per_page < 1:
        raise ValueError("page and per_page must be >= 1")
    start = (page - 1) * per_page
    return Page(list(items[start : start + per_page]), page, per_page, len(items))
