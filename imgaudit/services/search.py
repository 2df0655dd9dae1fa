"""Search the archive by Chinese or English text, by an example image, or both; and group it.

Everything searchable about an image lives in one multilingual text space (multilingual-e5-small):

- ``labels``: the visual encoder's ImageNet probabilities bridged into the text space (pixels only);
- ``text``: the passage embedding of its OCR text and the caption its source gave;
- ``bm25``: BM25 over OCR text, caption and tags (label names in English and Chinese, colour names,
  has-text / QR / orientation), Chinese segmented with jieba;
- ``clip``: a CLIP / Chinese-CLIP pair, when one is configured;
- ``visual``: for image queries, the copy-detection descriptor index of dedup.

Each list ranks on its own and reciprocal rank fusion combines them: ranks, unlike raw scores, are
comparable across lists whose scores live on different scales (cosines, BM25). The indexes are
:class:`imgaudit.services.search_index.SearchIndexes`, which follow the store's search feed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from imgaudit.config import Settings
from imgaudit.errors import ConfigError, InvalidRequest, MediaError
from imgaudit.index.text_base import TextFilters
from imgaudit.label_space import LabelSpace, TextSpace
from imgaudit.policy.fusion import paginate, rrf
from imgaudit.services.dedup import DedupService
from imgaudit.services.search_index import TAG_MIN_P, SearchIndexes, caption_of, probabilities_of
from imgaudit.signals.labels import class_names
from imgaudit.store.ports import Store
from imgaudit.types import Facets, ImageRef, ItemRecord

CANDIDATES = 200  # per list, before filters and fusion


@dataclass(frozen=True, slots=True)
class SearchFilters:
    decision: Sequence[str] | None = None  # unique / duplicate
    moderation: Sequence[str] | None = None  # pass / review / violate
    source: Sequence[str] | None = None
    label: str | None = None  # an ImageNet label name (English or Chinese) among the image's top labels
    has_text: bool | None = None
    since: datetime | None = None
    until: datetime | None = None

    def text_filters(self) -> TextFilters:
        return TextFilters(
            source=list(self.source) if self.source else None,
            decision=list(self.decision) if self.decision else None,
            moderation=list(self.moderation) if self.moderation else None,
            has_text=self.has_text,
            created_from=int(self.since.timestamp()) if self.since else None,
            created_to=int(self.until.timestamp()) if self.until else None,
        )

    def accepts(self, rec: ItemRecord | Facets) -> bool:
        if rec.status != "done":
            return False
        if self.decision and rec.decision not in self.decision:
            return False
        if self.moderation and rec.moderation not in self.moderation:
            return False
        if self.source and rec.source not in self.source:
            return False
        has_text = rec.has_text if isinstance(rec, Facets) else bool(rec.ocr_text)
        if self.has_text is not None and has_text != self.has_text:
            return False
        if self.since and rec.created_at < self.since:
            return False
        if self.until and rec.created_at >= self.until:
            return False
        return not (self.label and not _has_label(rec, self.label))


def _has_label(rec: ItemRecord | Facets, label: str) -> bool:
    wanted = label.strip().lower()
    names = class_names()
    for idx, p in rec.labels or []:
        c = names[int(idx)]
        if p >= TAG_MIN_P and (wanted == c.english.lower() or wanted == c.chinese or wanted in c.synonyms):
            return True
    return False


@dataclass
class Hit:
    record: ItemRecord
    score: float
    ranks: dict[str, int]  # list -> rank in it (1-based)
    why: list[str] = field(default_factory=list)
    similarity: dict[str, float] = field(default_factory=dict)  # list -> cosine, for the dense lists

    def as_dict(self) -> dict[str, object]:
        r = self.record
        return {
            "id": r.id,
            "uri": r.uri,
            "score": round(self.score, 5),
            "ranks": self.ranks,
            "similarity": {k: round(v, 4) for k, v in self.similarity.items()},
            "why": self.why,
            "decision": r.decision,
            "duplicate_of": r.duplicate_of,
            "moderation": r.moderation,
            "caption": r.caption,
        }


@dataclass
class Results:
    hits: list[Hit]
    total: int  # candidates that passed the filters (all pages)
    page: int
    per_page: int
    seconds: float
    timings: dict[str, float]


@dataclass
class Group:
    kind: str  # duplicates | similar
    representative: ItemRecord
    size: int
    members: list[int]


class SearchService:
    """Search over the store with its search indexes (owned by ``indexes``, caught up before each query),
    and the dedup service behind it for image queries and similar-content groups."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        indexes: SearchIndexes,
        dedup: DedupService | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.indexes = indexes
        self.dedup = dedup

    # -- following the store ---------------------------------------------------------------------------

    def labels_ready(self) -> bool:
        """Whether the label space is already embedded and cached (the first build takes 1-5 minutes)."""
        path = self.indexes.label_space.cache_path()
        return path is None or path.is_file()

    def prepare_labels(self, progress: Callable[[int, int], None] | None = None) -> bool:
        """Embed and cache the label space now, reporting (texts embedded, total); True if it was built."""
        return build_label_space(self.indexes.label_space, progress)

    def pending(self) -> int:
        """Items finished since the indexes last caught up."""
        return self.indexes.pending()

    def sync(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Index everything finished since the last sync; returns how many items were (re)indexed."""
        return self.indexes.sync(progress)

    def rebuild(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Index the whole store again, from empty indexes."""
        return self.indexes.rebuild(progress)

    def rebuild_all(self, progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
        """``imgaudit index rebuild``: the dedup indexes, then the search indexes, from the store;
        ``(indexed, searchable)``."""
        if self.dedup is None:
            raise ConfigError("rebuilding needs the dedup service (built by bootstrap.search_service)")
        return self.dedup.rebuild_index(), self.rebuild(progress)

    # -- queries -------------------------------------------------------------------------------------

    def search(
        self,
        text: str | None = None,
        image: ImageRef | None = None,
        filters: SearchFilters | None = None,
        page: int = 1,
        per_page: int = 20,
        sync: bool = True,
    ) -> Results:
        """Ranked, explained hits for a text query, an example image, or both (the image's neighbours
        refined by the text). Filters apply to every list before fusion."""
        if not (text and text.strip()) and image is None:
            raise InvalidRequest("give a text query, an image, or both")
        start = time.perf_counter()
        timings: dict[str, float] = {}
        filters = filters or SearchFilters()
        if sync:
            t = time.perf_counter()
            self.sync()
            timings["sync"] = time.perf_counter() - t
        want = max(CANDIDATES, page * per_page * 3)
        rankings: dict[str, list[int]] = {}
        snippets: dict[int, dict[str, str]] = {}
        cosines: dict[int, float] = {}  # visual cosine of image-query hits (a copy gets its original's)
        qvec = None
        ix = self.indexes
        with ix.lock:
            if text and text.strip():
                t = time.perf_counter()
                qvec = ix.encoder.queries([text])[0]
                timings["embed"] = time.perf_counter() - t
                t = time.perf_counter()
                text_hits = ix.text.search(
                    text, want, filters=filters.text_filters(), snippets=page * per_page
                )
                rankings["bm25"] = [h.image_id for h in text_hits]
                snippets = {h.image_id: h.field_hits for h in text_hits}
                timings["bm25"] = time.perf_counter() - t
                t = time.perf_counter()
                rankings["labels"] = self._dense("labels", qvec, want)
                # A text embedding below the floor stays only when BM25 saw the words too: e5 puts short
                # or misread OCR text close to every query.
                rankings["text"] = self._dense("text", qvec, want, keep=set(rankings["bm25"]))
                if ix.clip is not None and "clip" in ix.dense:
                    cvec = ix.clip.encode_texts([text])[0]
                    rankings["clip"] = self._dense("clip", cvec, want)
                timings["dense"] = time.perf_counter() - t
            if image is not None:
                if self.dedup is None:
                    raise InvalidRequest("image queries need the visual index")
                t = time.perf_counter()
                # Only originals are in the visual index: each brings its recorded copies right after it.
                near = self.dedup.pipeline.similar(image, want)
                copies = self.store.copies_of([i for i, _ in near])
                rankings["visual"] = [j for i, _ in near for j in (i, *copies.get(i, []))]
                cosines.update({j: c for i, c in near for j in (i, *copies.get(i, []))})
                timings["visual"] = time.perf_counter() - t
        t = time.perf_counter()
        fused = rrf(rankings, k=self.settings.search.rrf_k, weights=self.settings.search.weights)
        facets = self.store.facets([i for i, _, _ in fused])
        kept = [(i, s, r) for i, s, r in fused if i in facets and filters.accepts(facets[i])]
        timings["fuse+filter"] = time.perf_counter() - t
        t = time.perf_counter()
        pg = paginate(kept, page, per_page)
        records = self.store.get_many([i for i, _, _ in pg.items])  # whole records for the page only
        hits = [
            Hit(records[i], score, ranks, similarity={"visual": cosines[i]} if i in cosines else {})
            for i, score, ranks in pg.items
            if i in records
        ]
        for h in hits:
            h.why = self._why(h, qvec, snippets.get(h.record.id, {}))
        timings["page"] = time.perf_counter() - t
        return Results(hits, len(kept), page, per_page, time.perf_counter() - start, timings)

    def _dense(self, name: str, vec: np.ndarray, k: int, keep: set[int] | None = None) -> list[int]:
        index = self.indexes.dense[name]
        if len(index) == 0:
            return []
        scores, ids = index.search(vec[None, :], k)
        floor = self.settings.search.min_similarity.get(name, -1.0)
        keep = keep or set()
        return [
            int(i) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0 and (s >= floor or i in keep)
        ]

    def _why(self, hit: Hit, qvec: np.ndarray | None, snippets: dict[str, str]) -> list[str]:
        out = []
        rec = hit.record
        if "labels" in hit.ranks and qvec is not None:
            p = probabilities_of(rec)
            if p is not None:
                explained = self.indexes.label_space.explain(qvec, p, k=2)
                parts = [f"{en} {zh} ({c:.2f})" for en, zh, c in explained]
                if parts:
                    out.append("looks like: " + ", ".join(parts))
        for fld, snip in snippets.items():
            out.append(f"{fld}: {snip}")
        if "text" in hit.ranks and "ocr" not in snippets and "caption" not in snippets:
            src = rec.ocr_text or caption_of(rec)
            if src:
                out.append("text: " + src.replace("\n", " ")[:80])
        if "visual" in hit.ranks:
            out.append(f"visually similar (rank {hit.ranks['visual']})")
        if "clip" in hit.ranks:
            out.append(f"image-text model (rank {hit.ranks['clip']})")
        return out

    # -- groups ----------------------------------------------------------------------------------------

    def groups(
        self, kind: str = "duplicates", min_size: int = 2, limit: int = 50, threshold: float = 0.8
    ) -> list[Group]:
        """Near-duplicate groups (connected components over duplicate links), or similar-content clusters
        (connected components of descriptor cosine >= ``threshold`` among indexed images)."""
        if kind == "duplicates":
            pairs = [(a.id, b.id) for a, b in self.store.duplicate_pairs()]
        elif kind == "similar":
            if self.dedup is None:
                raise InvalidRequest("similar-content groups need the visual index")
            pairs = self._similar_pairs(threshold)
        else:
            raise InvalidRequest(f"unknown group kind {kind!r} (duplicates or similar)")
        parent: dict[int, int] = {}

        def find(x: int) -> int:
            while parent.setdefault(x, x) != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for a, b in pairs:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        members: dict[int, list[int]] = {}
        for x in list(parent):
            members.setdefault(find(x), []).append(x)
        big = sorted(
            (sorted(m) for m in members.values() if len(m) >= min_size), key=lambda m: (-len(m), m[0])
        )[:limit]
        records = self.store.get_many([m[0] for m in big])
        return [Group(kind, records[m[0]], len(m), m) for m in big if m[0] in records]

    def _similar_pairs(self, threshold: float, k: int = 10) -> list[tuple[int, int]]:
        assert self.dedup is not None
        vectors = self.dedup.indexes.vectors
        pairs = []
        for ids, _, vecs in self.store.iter_indexed():
            scores, nn = vectors.search(vecs, k)
            for row_id, row_scores, row_nn in zip(ids, scores, nn, strict=True):
                pairs += [
                    (int(row_id), int(j))
                    for s, j in zip(row_scores, row_nn, strict=True)
                    if j >= 0 and j != row_id and s >= threshold
                ]
        return pairs


class _CountingEncoder:
    """A text encoder that reports how many texts it has embedded, for the label space's progress bar.

    Texts go to the real encoder in slices of whole engine batches, so the vectors are the ones a single
    call would give (every batch is the same) and the cache key (name, dim) is unchanged.
    """

    def __init__(self, encoder: TextSpace, progress: Callable[[int, int], None] | None) -> None:
        self.encoder = encoder
        self.progress = progress
        self.step = max(1, int(getattr(encoder, "batch_size", 64))) * 4

    @property
    def name(self) -> str:
        return self.encoder.name

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def passages(self, texts: Sequence[str]) -> np.ndarray:
        parts = []
        for start in range(0, len(texts), self.step):
            parts.append(self.encoder.passages(texts[start : start + self.step]))
            if self.progress:
                self.progress(min(start + self.step, len(texts)), len(texts))
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)


def build_label_space(labels: LabelSpace, progress: Callable[[int, int], None] | None = None) -> bool:
    """Embed the label space into its cache file unless it is there already; True if it was built now.

    The first build embeds several thousand label prompts (about a minute on an idle machine, several
    on a loaded one), which is why ``imgaudit models prepare`` and ``search`` call this with a progress
    bar instead of letting the first query do it silently. Without a cache directory there is nothing
    to prepare: the label space is then built in memory on first use.
    """
    path = labels.cache_path()
    if path is None or path.is_file():
        return False
    # A second LabelSpace over the same encoder writes the same cache file; ``labels`` reads it on use.
    LabelSpace(_CountingEncoder(labels.encoder, progress), labels.cache_dir, labels.config)._load()
    return True


def image_ref(path_or_url: str) -> ImageRef:
    if path_or_url.startswith(("http://", "https://")):
        return ImageRef(path_or_url, "url")
    path = Path(path_or_url)
    if not path.is_file():
        raise MediaError(f"no such image: {path_or_url}")
    return ImageRef(str(path.resolve()), "path")
