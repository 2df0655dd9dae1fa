"""The search indexes of one data directory and their only owner: one dense vector index per list
(``labels``, ``text``, and ``clip`` when an image-text model is configured) and the BM25 text index.

They follow the store's search feed from their own cursor (``seq``), so workers never write to them and a
search process catches up with whatever was ingested since it last looked. What an image contributes is
computed here from its record: its label probabilities bridged into the text space, the passage
embedding of its OCR text and captions, its stored image-text vector, and a text document.

Saved under ``directory`` (vector files and a state file naming the cursor and the models the vectors
come from) when the backend keeps its indexes; otherwise rebuilt from the feed at each start. A change
of models, or a store reset since the save, rebuilds them too.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imgaudit.fsio import atomic_write_text
from imgaudit.index.base import IndexBackend, VectorIndex
from imgaudit.index.text_analysis import ANALYZER_VERSION
from imgaudit.index.text_base import TextDoc, TextIndex
from imgaudit.label_space import LabelSpace
from imgaudit.models.ports import ImageTextEncoder, TextEncoder
from imgaudit.signals.colour import attribute_text
from imgaudit.signals.labels import class_names
from imgaudit.store.encoding import unpack_embedding
from imgaudit.store.ports import SearchFeedStore
from imgaudit.types import ItemRecord

log = logging.getLogger("imgaudit.search")

STATE_FILE = "state.json"
SYNC_BATCH = 500
TAG_MIN_P = 0.05  # label names become tags above this probability
MIN_TEXT_CHARS = 4

Progress = Callable[[int, int], None]


class SearchIndexes:
    """The dense and BM25 search indexes and their cursor in the search feed; ``lock`` is held while they
    change, and by queries that read several of them."""

    def __init__(
        self,
        directory: Path,
        feed: SearchFeedStore,
        encoder: TextEncoder,
        labels: LabelSpace,
        text: TextIndex,
        backend: IndexBackend,
        clip: ImageTextEncoder | None = None,
    ) -> None:
        self.dir = directory
        self.feed = feed
        self.encoder = encoder
        self.label_space = labels
        self.text = text
        self.backend = backend
        self.clip = clip
        self.lock = threading.RLock()
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
            "clip": self.clip.model_id if self.clip is not None else None,
        }

    def _new_dense(self) -> dict[str, VectorIndex]:
        new, dim = self.backend.new_vectors, self.encoder.dim
        dense = {"labels": new(dim), "text": new(dim)}
        if self.clip is not None:
            dense["clip"] = new(self.clip.dim)
        return dense

    def _path(self, name: str) -> Path:
        return self.dir / f"{name}.faiss"  # named when FAISS was the only saved backend

    def _saved_state(self) -> dict[str, Any] | None:
        if not self.backend.persistent:
            return None
        try:
            state = json.loads((self.dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None

    def _load(self) -> None:
        self.dense = self._new_dense()
        state = self._saved_state()
        if state and int(state.get("seq", 0)) > self.feed.last_search_seq():
            log.info("the store was reset since the search indexes were saved; rebuilding")
        elif state and state.get("identity") == self._identity():
            assert self.backend.load_vectors is not None
            try:
                for name, index in list(self.dense.items()):
                    if self._path(name).is_file():
                        self.dense[name] = self.backend.load_vectors(self._path(name), index.dim)
                self.seq = int(state.get("seq", 0))
                return
            except (OSError, ValueError, RuntimeError) as exc:
                log.warning("search indexes unreadable (%s); rebuilding", exc)
        elif state:
            log.info("search indexes were built with other models; rebuilding")
        self.dense = self._new_dense()
        self.text.clear()
        self.text.commit()
        self.seq = 0

    def save(self) -> None:
        """Commit the text index; with a backend that keeps its indexes, write the vectors and the state."""
        self.text.commit()
        if not self.backend.persistent:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, index in self.dense.items():
            index.save(self._path(name))
        state = {"seq": self.seq, "identity": self._identity(), "saved": time.time()}
        atomic_write_text(self.dir / STATE_FILE, json.dumps(state))

    def rebuild(self, progress: Progress | None = None) -> int:
        """Empty every index and index the whole feed again; returns how many items were indexed."""
        with self.lock:
            self.dense = self._new_dense()
            self.text.clear()
            self.seq = 0
            return self.sync(progress)

    # -- following the store ---------------------------------------------------------------------------

    def pending(self) -> int:
        return max(0, self.feed.last_search_seq() - self.seq)

    def sync(self, progress: Progress | None = None) -> int:
        """Index everything finished since the last sync; returns how many items were (re)indexed."""
        with self.lock:
            total = self.pending()
            done = 0
            while True:
                feed = self.feed.search_feed(self.seq, SYNC_BATCH)
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
        self.text.remove(gone.tolist())
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
        self.text.add(
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


# -- what an image record contributes ----------------------------------------------------------------


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
    # Stored as JSON rows [english, chinese, share]: the record types them as objects.
    colours = [(str(c[0]), str(c[1]), float(c[2])) for c in rec.colours or []]  # type: ignore[arg-type]
    codes = sig.get("codes") or []
    has_qr = isinstance(codes, list) and any(c.get("format") in ("QRCode", "MicroQRCode") for c in codes)
    parts.append(attribute_text(colours, bool(rec.ocr_text), has_qr, rec.width or 1, rec.height or 1))
    return "; ".join(parts)


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
