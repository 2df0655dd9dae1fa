"""A batch through load -> decode -> signals -> lookups -> decision -> persist, with per-stage timings.

Decode and hashing run in a small thread pool (Pillow and OpenCV release the GIL); the visual encoder
gets the whole batch in one call. Decisions are then taken in order, each unique image joining the
indexes at once, so that two copies inside one batch are caught too.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from imgaudit.config import Settings
from imgaudit.errors import ImgauditError, MediaError
from imgaudit.index.catalog import Indexes
from imgaudit.media.decode import decode
from imgaudit.media.fetch import Fetcher, read_local
from imgaudit.models.visual import VisualEncoder
from imgaudit.policy.cascade import Lookups, decide
from imgaudit.signals import local_features
from imgaudit.signals.hashes import phash, pixel_sha256
from imgaudit.store.repo import Claimed, Completion, Failure, Store
from imgaudit.store.thumbs import ThumbStore
from imgaudit.types import Decision, Decoded, DedupSignals, ImageRef, Stage, Verdict

DECODE_THREADS = 2


@dataclass
class Analysed:
    """One image after decoding and signals, or the reason it failed."""

    decoded: Decoded | None = None
    signals: DedupSignals | None = None
    error: ImgauditError | None = None


@dataclass
class BatchReport:
    completions: list[Completion] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))


class Pipeline:
    """Owns no resources of its own: the store, indexes, encoder and thumbnails are handed in."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        indexes: Indexes,
        encoder: VisualEncoder,
        thumbs: ThumbStore,
    ) -> None:
        self.settings = settings
        self.store = store
        self.indexes = indexes
        self.encoder = encoder
        self.thumbs = thumbs
        self._pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    # -- stages ----------------------------------------------------------------------------------------

    def load(self, refs: Sequence[ImageRef]) -> list[bytes | ImgauditError]:
        """Bytes for each reference; failures are returned in place, never raised."""
        out: list[bytes | ImgauditError] = [b""] * len(refs)
        urls = [(i, r.uri) for i, r in enumerate(refs) if r.kind == "url"]
        for i, r in enumerate(refs):
            if r.kind != "url":
                try:
                    out[i] = read_local(r.uri, max_bytes=self.settings.fetch.max_bytes)
                except MediaError as exc:
                    out[i] = exc
        if urls:

            async def fetch_all() -> list[bytes | MediaError]:
                async with Fetcher(self.settings.fetch) as fetcher:
                    return await fetcher.fetch_many([u for _, u in urls])

            for (i, _), result in zip(urls, asyncio.run(fetch_all()), strict=True):
                out[i] = result
        return out

    def _decode_one(self, data: bytes | ImgauditError) -> Analysed:
        if isinstance(data, ImgauditError):
            return Analysed(error=data)
        try:
            d = decode(
                data, max_pixels=self.settings.decode.max_pixels, max_side=self.settings.decode.max_side
            )
        except MediaError as exc:
            return Analysed(error=exc)
        return Analysed(
            decoded=d,
            signals=DedupSignals(d.sha256, pixel_sha256(d.pixels), phash(d.pixels), np.empty(0, np.float32)),
        )

    def analyse(self, blobs: Sequence[bytes | ImgauditError], timings: dict[str, float]) -> list[Analysed]:
        t = time.perf_counter()
        items = list(self._pool.map(self._decode_one, blobs))
        timings["decode+hash"] += time.perf_counter() - t
        ok = [a for a in items if a.decoded is not None]
        if ok:
            t = time.perf_counter()
            try:
                out = self.encoder.encode([a.decoded.pixels for a in ok])  # type: ignore[union-attr]
            except ImgauditError as exc:
                for a in ok:
                    a.error, a.decoded, a.signals = exc, None, None
                return items
            for a, emb in zip(ok, out.descriptors, strict=True):
                s = a.signals
                assert s is not None
                a.signals = DedupSignals(s.sha256, s.pixel_sha256, s.phash, emb)
            timings["embed"] += time.perf_counter() - t
        return items

    def lookups(self, signals: DedupSignals, batch_exact: dict[str, tuple[int, Stage]]) -> Lookups:
        cfg = self.settings.dedup
        exact = batch_exact.get("b:" + signals.sha256) or batch_exact.get("p:" + signals.pixel_sha256)
        if exact is None:
            found = self.store.find_exact(signals.sha256, signals.pixel_sha256)
            exact = (found[0], Stage(found[1])) if found else None
        dists, hids = self.indexes.hashes.search([signals.phash], cfg.phash_candidates)
        scores, vids = self.indexes.vectors.search(signals.embedding[None, :], cfg.top_k)
        neighbours = [(int(i), float(s)) for i, s in zip(vids[0], scores[0], strict=True) if i >= 0]
        known = dict(neighbours)
        vectors = self.indexes.vectors

        def cosine_of(image_id: int) -> float:
            if image_id in known:
                return known[image_id]
            v = vectors.vector(image_id)
            return float(v @ signals.embedding) if v is not None else -1.0

        return Lookups(
            exact,
            [(int(i), int(d)) for i, d in zip(hids[0], dists[0], strict=True) if i >= 0],
            neighbours,
            cosine_of,
        )

    def decide_one(self, a: Analysed, batch_exact: dict[str, tuple[int, Stage]]) -> Verdict:
        assert a.signals is not None and a.decoded is not None
        cfg = self.settings.dedup
        cache: dict[str, local_features.Features] = {}

        def verify(candidate: int) -> int:
            thumb = self.thumbs.get(candidate)
            if thumb is None:
                return 0
            if "q" not in cache:
                cache["q"] = local_features.extract(a.decoded.pixels)  # type: ignore[union-attr]
            return local_features.verify(a.decoded.pixels, thumb, cache["q"])  # type: ignore[union-attr]

        return decide(self.lookups(a.signals, batch_exact), verify, cfg)

    # -- a whole batch -----------------------------------------------------------------------------------

    def process(self, claimed: Sequence[Claimed]) -> BatchReport:
        """Run claimed items through every stage and persist the results (one transaction)."""
        report = BatchReport()
        t = time.perf_counter()
        blobs = self.load([c.ref for c in claimed])
        report.timings["load"] += time.perf_counter() - t
        analysed = self.analyse(blobs, report.timings)

        t = time.perf_counter()
        batch_exact: dict[str, tuple[int, Stage]] = {}
        for item, a in zip(claimed, analysed, strict=True):
            if a.error is not None or a.signals is None or a.decoded is None:
                report.failures.append(Failure(item.id, a.error or MediaError("no signals")))
                continue
            verdict = self.decide_one(a, batch_exact)
            index_it = verdict.decision == Decision.UNIQUE or self.settings.dedup.index_duplicates
            if index_it:
                ids = np.array([item.id], np.int64)
                self.indexes.add(ids, [a.signals.phash], a.signals.embedding[None, :])
                self.thumbs.put(item.id, a.decoded.pixels)
            if verdict.decision == Decision.UNIQUE:
                batch_exact.setdefault("b:" + a.signals.sha256, (item.id, Stage.EXACT_BYTES))
                batch_exact.setdefault("p:" + a.signals.pixel_sha256, (item.id, Stage.EXACT_PIXELS))
            d = a.decoded
            report.completions.append(
                Completion(item.id, a.signals, verdict, d.format, d.width, d.height, index_it)
            )
        report.timings["decide+index"] += time.perf_counter() - t

        t = time.perf_counter()
        self.store.finish(report.completions, report.failures, self.settings.max_attempts)
        report.timings["store"] += time.perf_counter() - t
        return report

    def check(self, refs: Sequence[ImageRef]) -> list[tuple[Verdict | None, Analysed]]:
        """Decide for each image against what is indexed, without storing anything."""
        timings: dict[str, float] = defaultdict(float)
        analysed = self.analyse(self.load(refs), timings)
        return [(self.decide_one(a, {}) if a.error is None else None, a) for a in analysed]

    def similar(self, ref: ImageRef, k: int) -> list[tuple[int, float]]:
        """Indexed images nearest to one image by descriptor cosine."""
        (a,) = self.analyse(self.load([ref]), defaultdict(float))
        if a.error is not None or a.signals is None:
            raise a.error or MediaError()
        scores, ids = self.indexes.vectors.search(a.signals.embedding[None, :], k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
