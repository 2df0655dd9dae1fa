"""Search the archive by Chinese or English text, by an example image, or both; and group it.

Everything searchable about an image lives in one multilingual text space (multilingual-e5-small):

- ``labels``: the visual encoder's ImageNet probabilities bridged into the text space (pixels only);
- ``text``: the passage embedding of its OCR text and the caption its source gave;
- ``bm25``: BM25 over OCR text, caption and tags (label names in English and Chinese, colour names,
  has-text / QR / orientation), Chinese segmented with jieba;
- ``clip``: a CLIP / Chinese-CLIP pair, when one is configured;
- ``visual``: for image queries, the copy-detection descriptor index of dedup.

Each list ranks on its own and reciprocal rank fusion combines them: ranks, unlike raw scores, are
comparable across lists whose scores live on different scales (cosines, BM25). The indexes follow
the store's search log from their own cursor, so workers never write to them and a search process
catches up with whatever was ingested since it last looked.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from imgaudit.config import Settings
from imgaudit.errors import MediaError
from imgaudit.index.base import VectorIndex
from imgaudit.index.faiss_index import FaissVectorIndex
from imgaudit.index.text_index import ANALYZER_VERSION, TextDoc, TextFilters, TextIndex
from imgaudit.models.text import TextEncoder
from imgaudit.policy.fusion import paginate, rrf
from imgaudit.services.dedup import DedupService
from imgaudit.signals.semantic import LabelSpace, TextSpace, attribute_text, class_names
from imgaudit.store.repo import Facets, ItemRecord, Store, unpack_embedding
from imgaudit.types import ImageRef

log = logging.getLogger("imgaudit.search")

STATE_FILE = "state.json"
SYNC_BATCH = 500
CANDIDATES = 200  # per list, before filters and fusion
TAG_MIN_P = 0.05  # label names become tags above this probability


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


def probabilities_of(rec: ItemRecord) -> np.ndarray | None:
    if not rec.labels:
        return None
    p = np.zeros(1000, np.float32)
    for idx, prob in rec.labels:
        p[int(idx)] = prob
    return p


def tags_of(rec: ItemRecord) -> str:
    """Label names (English and Chinese) and attributes, for the sparse index."""
    names = class_names()
    parts = []
    for idx, p in rec.labels or []:
        if p >= TAG_MIN_P:
            c = names[int(idx)]
            parts.append(f"{c.english}, {c.chinese}")
    sig = rec.moderation_signals or {}
    colours = [(str(c[0]), str(c[1]), float(c[2])) for c in rec.colours or []]  # type: ignore[arg-type]
    has_qr = any(c.get("format") in ("QRCode", "MicroQRCode") for c in sig.get("codes") or [])  # type: ignore[union-attr]
    parts.append(attribute_text(colours, bool(rec.ocr_text), has_qr, rec.width or 1, rec.height or 1))
    return "; ".join(parts)


MIN_TEXT_CHARS = 4


def searchable_text(rec: ItemRecord) -> str:
    """OCR text and caption for the text embedding; a few stray OCR characters ("O", "1 2") say nothing
    and, embedded, would sit close to every query, so they are left out."""
    ocr = rec.ocr_text or ""
    if len("".join(ocr.split())) < MIN_TEXT_CHARS:
        ocr = ""
    return "\n".join(x for x in (ocr, caption_of(rec)) if x).strip()


def caption_of(rec: ItemRecord) -> str:
    """What the source said about the image (caption, other fields) and the remote captioner's words."""
    extra = [f"{v}" for v in (rec.meta or {}).values() if isinstance(v, str | int | float)]
    return "\n".join(p for p in [rec.caption or "", *extra, rec.ai_caption or ""] if p)


class SearchService:
    """Owns the search indexes of one data directory (loaded once, kept, caught up before each query)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        encoder: TextEncoder,
        labels: LabelSpace,
        text_index: TextIndex,
        dedup: DedupService | None = None,
        clip: object | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.encoder = encoder
        self.label_space = labels
        self.text_index = text_index
        self.dedup = dedup
        self.clip = clip
        self.dir = settings.data_dir / "search"
        self._lock = threading.RLock()
        self.dense: dict[str, VectorIndex] = {}
        self.seq = 0
        self._load()

    # -- persistence ---------------------------------------------------------------------------------

    def _identity(self) -> dict[str, object]:
        """What the stored vectors depend on: change any of it and the indexes are rebuilt."""
        return {
            "text_encoder": self.encoder.name,
            "label_space": self.label_space.cache_key(),
            "analyzer": ANALYZER_VERSION,
            "clip": getattr(self.clip, "model_id", None),
        }

    def _new_dense(self) -> dict[str, VectorIndex]:
        cfg = self.settings.index
        dim = self.encoder.dim
        dense: dict[str, VectorIndex] = {
            "labels": FaissVectorIndex(dim, exact_below=cfg.exact_below, nprobe=cfg.nprobe),
            "text": FaissVectorIndex(dim, exact_below=cfg.exact_below, nprobe=cfg.nprobe),
        }
        if self.clip is not None:
            dense["clip"] = FaissVectorIndex(self.clip.dim, exact_below=cfg.exact_below, nprobe=cfg.nprobe)  # type: ignore[attr-defined]
        return dense

    def _load(self) -> None:
        state_path = self.dir / STATE_FILE
        self.dense = self._new_dense()
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = None
        if state and int(state.get("seq", 0)) > self.store.last_search_seq():
            log.info("the store was reset since the search indexes were saved; rebuilding")
        elif state and state.get("identity") == self._identity():
            try:
                cfg = self.settings.index
                for name, index in list(self.dense.items()):
                    path = self.dir / f"{name}.faiss"
                    if path.is_file():
                        dim = index.dim  # type: ignore[attr-defined]
                        self.dense[name] = FaissVectorIndex.load(
                            path, dim, exact_below=cfg.exact_below, nprobe=cfg.nprobe
                        )
                self.seq = int(state.get("seq", 0))
                return
            except (OSError, ValueError, RuntimeError) as exc:
                log.warning("search indexes unreadable (%s); rebuilding", exc)
        elif state:
            log.info("search indexes were built with other models; rebuilding")
        self.dense = self._new_dense()
        self.text_index.clear()
        self.text_index.commit()
        self.seq = 0

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, index in self.dense.items():
            index.save(self.dir / f"{name}.faiss")
        self.text_index.commit()
        tmp = self.dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"seq": self.seq, "identity": self._identity(), "saved": time.time()}))
        tmp.replace(self.dir / STATE_FILE)

    def rebuild(self, progress: Callable[[int, int], None] | None = None) -> int:
        with self._lock:
            self.dense = self._new_dense()
            self.text_index.clear()
            self.seq = 0
            return self.sync(progress)

    # -- following the store ---------------------------------------------------------------------------

    def labels_ready(self) -> bool:
        """Whether the label space is already embedded and cached (the first build takes 1-5 minutes)."""
        path = self.label_space.cache_path()
        return path is None or path.is_file()

    def prepare_labels(self, progress: Callable[[int, int], None] | None = None) -> bool:
        """Embed and cache the label space now, reporting (texts embedded, total); True if it was built."""
        return build_label_space(self.label_space, progress)

    def pending(self) -> int:
        return max(0, self.store.last_search_seq() - self.seq)

    def sync(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Index everything finished since the last sync; returns how many items were (re)indexed."""
        with self._lock:
            total = self.pending()
            done = 0
            while True:
                feed = self.store.search_feed(self.seq, SYNC_BATCH)
                if not feed:
                    break
                latest = {rec.id: rec for _, rec in feed}  # an item finished twice: the later one
                self._index(list(latest.values()))
                self.seq = feed[-1][0]
                done += len(feed)
                if progress:
                    progress(done, total)
            if done:
                self.save()
            return done

    def _index(self, records: list[ItemRecord]) -> None:
        ok = [r for r in records if r.status == "done"]
        gone = np.array([r.id for r in records if r.status != "done"], np.int64)
        for index in self.dense.values():
            index.remove(gone)
        self.text_index.remove(gone.tolist())
        with_labels = [(r, p) for r in ok if (p := probabilities_of(r)) is not None]
        if with_labels:
            vecs = self.label_space.image_vector(np.stack([p for _, p in with_labels]))
            self.dense["labels"].add(np.array([r.id for r, _ in with_labels], np.int64), vecs)
        texts = [(r, t) for r in ok if (t := searchable_text(r))]
        if texts:
            vecs = self.encoder.passages([t[:2000] for _, t in texts])
            self.dense["text"].add(np.array([r.id for r, _ in texts], np.int64), vecs)
        if "clip" in self.dense:
            clipped = [(r.id, unpack_embedding(r.clip_embedding)) for r in ok if r.clip_embedding]
            if clipped:
                self.dense["clip"].add(
                    np.array([i for i, _ in clipped], np.int64), np.stack([v for _, v in clipped])
                )
        self.text_index.add(
            [
                TextDoc(
                    image_id=r.id,
                    ocr=r.ocr_text or "",
                    caption=caption_of(r),
                    tags=tags_of(r),
                    source=r.source,
                    decision=r.decision,
                    moderation=r.moderation,
                    has_text=bool(r.ocr_text),
                    created=int(r.created_at.timestamp()),
                )
                for r in ok
            ]
        )

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
            raise ValueError("give a text query, an image, or both")
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
        with self._lock:
            if text and text.strip():
                t = time.perf_counter()
                qvec = self.encoder.queries([text])[0]
                timings["embed"] = time.perf_counter() - t
                t = time.perf_counter()
                hits = self.text_index.search(
                    text, want, filters=filters.text_filters(), snippets=page * per_page
                )
                rankings["bm25"] = [h.image_id for h in hits]
                snippets = {h.image_id: h.field_hits for h in hits}
                timings["bm25"] = time.perf_counter() - t
                t = time.perf_counter()
                rankings["labels"] = self._dense("labels", qvec, want)
                # A text embedding below the floor stays only when BM25 saw the words too: e5 puts short
                # or misread OCR text close to every query.
                rankings["text"] = self._dense("text", qvec, want, keep=set(rankings["bm25"]))
                if "clip" in self.dense:
                    cvec = self.clip.encode_texts([text])[0]  # type: ignore[attr-defined]
                    rankings["clip"] = self._dense("clip", cvec, want)
                timings["dense"] = time.perf_counter() - t
            if image is not None:
                if self.dedup is None:
                    raise ValueError("image queries need the visual index")
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
        index = self.dense[name]
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
                parts = [f"{en} {zh} ({c:.2f})" for en, zh, c in self.label_space.explain(qvec, p, k=2)]
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
                raise ValueError("similar-content groups need the visual index")
            pairs = self._similar_pairs(threshold)
        else:
            raise ValueError(f"unknown group kind {kind!r} (duplicates or similar)")
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
