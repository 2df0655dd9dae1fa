"""The full-text index interface (documents, filters, hits) and its exact pure-Python reference.

Each image is one document with three searchable fields — ``ocr`` (text read from the pixels),
``caption`` (title, caption and metadata from the source) and ``tags`` (label names in English and
Chinese, colours, attributes such as 有文字 / has text, 二维码 / qr) — plus filter fields (source,
decision, moderation, has_text, created). Every implementation analyses text with
:mod:`imgaudit.index.text_analysis` and scores with BM25 (k1 1.2, b 0.75, tantivy's), summed over the
fields and clauses that match; changes become visible on ``commit``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from imgaudit.index.text_analysis import FIELDS, Clause, Token, analyze_field, field_hits, parse_query

K1, B = 1.2, 0.75

# ---- documents and results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDoc:
    image_id: int
    ocr: str
    caption: str
    tags: str  # comma-, semicolon- or newline-separated
    source: str
    decision: str | None
    moderation: str | None
    has_text: bool
    created: int  # unix seconds


@dataclass(frozen=True, slots=True)
class TextFilters:
    """Restrictions that do not score. ``None`` means no restriction; a sequence means any of its values
    (an empty one matches nothing). ``created`` is the half-open range [created_from, created_to)."""

    source: str | Sequence[str] | None = None
    decision: str | Sequence[str] | None = None
    moderation: str | Sequence[str] | None = None
    has_text: bool | None = None
    created_from: int | None = None
    created_to: int | None = None

    def values(self, name: str) -> list[str] | None:
        """The allowed values of the ``source``, ``decision`` or ``moderation`` filter."""
        v = getattr(self, name)
        return None if v is None else [v] if isinstance(v, str) else list(v)

    def matches(self, doc: TextDoc) -> bool:
        for name in ("source", "decision", "moderation"):
            allowed = self.values(name)
            if allowed is not None and getattr(doc, name) not in allowed:
                return False
        return (
            (self.has_text is None or doc.has_text == self.has_text)
            and (self.created_from is None or doc.created >= self.created_from)
            and (self.created_to is None or doc.created < self.created_to)
        )


@dataclass(frozen=True, slots=True)
class TextHit:
    image_id: int
    score: float
    field_hits: dict[str, str] = field(default_factory=dict)  # field -> snippet with the matches marked


def check_fields(fields: Sequence[str] | None) -> Sequence[str]:
    """The fields a search covers (None: all of them); an unknown name is the caller's mistake."""
    if fields is None:
        return FIELDS
    unknown = set(fields) - set(FIELDS)
    if unknown or not fields:
        raise ValueError(f"unknown text fields {sorted(unknown)} (expected some of {FIELDS})")
    return fields


# ---- the interface ---------------------------------------------------------------------------------


class TextIndex(Protocol):
    """BM25 search over the text of images, keyed by the store's image ids."""

    def add(self, docs: Sequence[TextDoc]) -> None:
        """Add or replace (same image id) documents; visible after :meth:`commit`."""
        ...

    def remove(self, ids: Iterable[int]) -> None: ...

    def clear(self) -> None: ...

    def commit(self) -> None: ...

    def search(
        self,
        query: str,
        k: int,
        *,
        fields: Sequence[str] | None = None,
        filters: TextFilters | None = None,
        snippets: int | None = None,
    ) -> list[TextHit]:
        """Best first (ties by id); never raises for any ``query``; unknown ``fields`` raise ValueError;
        snippets for the best ``snippets`` hits only (all when None)."""
        ...

    def __len__(self) -> int: ...

    def ids(self) -> list[int]: ...


# ---- the reference ---------------------------------------------------------------------------------


class MemoryTextIndex:
    """Exact BM25 in pure Python over the same analysis: the specification the tantivy index is tested
    against, not for use at scale. It differs from tantivy only where tantivy approximates: tantivy
    quantises field lengths above ~40 terms and counts deleted documents in its statistics until a merge.
    """

    def __init__(self, *, html_snippets: bool = True) -> None:
        self.html_snippets = html_snippets
        self._docs: dict[int, tuple[TextDoc, dict[str, list[Token]]]] = {}
        self._pending: list[Callable[[], object]] = []

    def add(self, docs: Sequence[TextDoc]) -> None:
        for d in docs:
            tokens = {name: analyze_field(name, getattr(d, name) or "") for name in FIELDS}
            self._pending.append(partial(self._docs.__setitem__, d.image_id, (d, tokens)))

    def remove(self, ids: Iterable[int]) -> None:
        for i in list(ids):
            self._pending.append(partial(self._docs.pop, int(i), None))

    def clear(self) -> None:
        self._pending.append(self._docs.clear)

    def commit(self) -> None:
        for op in self._pending:
            op()
        self._pending.clear()

    def __len__(self) -> int:
        return len(self._docs)

    def ids(self) -> list[int]:
        return sorted(self._docs)

    def _clause_score(self, c: Clause, tokens: Mapping[str, list[Token]], stats: _Stats) -> float | None:
        total, matched = 0.0, False
        for name in c.fields:
            positions: dict[str, set[int]] = {}
            for t in tokens[name]:
                positions.setdefault(t.term, set()).add(t.position)
            if not all(term in positions for term in c.terms):
                continue
            pairs = zip(c.offsets, c.terms, strict=True)
            starts = set.intersection(*({p - o for p in positions[t]} for o, t in pairs))
            if tf := len(starts):
                idf = sum(stats.idf(name, t) for t in c.terms)
                norm = K1 * (1 - B + B * len(tokens[name]) / stats.avgdl(name))
                total += idf * (K1 + 1) * tf / (tf + norm)
                matched = True
        return total if matched else None

    def search(
        self,
        query: str,
        k: int,
        *,
        fields: Sequence[str] | None = None,
        filters: TextFilters | None = None,
        snippets: int | None = None,
    ) -> list[TextHit]:
        """``snippets``: only the best that many hits get snippets (they cost ~0.5-1 ms each)."""
        clauses = parse_query(query, check_fields(fields))
        if k <= 0 or all(c.occur == "must_not" for c in clauses):
            return []
        stats = _Stats(self._docs.values())
        has_must = any(c.occur == "must" for c in clauses)
        scored: list[tuple[float, int]] = []
        for i, (doc, tokens) in self._docs.items():
            if filters is not None and not filters.matches(doc):
                continue
            scores = {c: self._clause_score(c, tokens, stats) for c in clauses}
            if any(scores[c] is not None for c in clauses if c.occur == "must_not"):
                continue
            if has_must and any(scores[c] is None for c in clauses if c.occur == "must"):
                continue
            positive = [s for c, s in scores.items() if c.occur != "must_not" and s is not None]
            if positive:
                scored.append((sum(positive), i))
        scored.sort(key=lambda x: (-x[0], x[1]))
        return [
            TextHit(
                i,
                s,
                field_hits(
                    {n: getattr(self._docs[i][0], n) for n in FIELDS}, clauses, html_marks=self.html_snippets
                ),
            )
            for s, i in scored[:k]
        ]


class _Stats:
    """Collection statistics as tantivy computes them (idf over all documents, average field length)."""

    def __init__(self, docs: Iterable[tuple[TextDoc, dict[str, list[Token]]]]) -> None:
        self.n = 0
        self.df: dict[str, Counter[str]] = {name: Counter() for name in FIELDS}
        self.length: Counter[str] = Counter()
        for _, tokens in docs:
            self.n += 1
            for name in FIELDS:
                self.df[name].update({t.term for t in tokens[name]})
                self.length[name] += len(tokens[name])

    def idf(self, name: str, term: str) -> float:
        df = self.df[name][term]
        return math.log(1 + (self.n - df + 0.5) / (df + 0.5))

    def avgdl(self, name: str) -> float:
        return self.length[name] / self.n if self.n else 1.0
