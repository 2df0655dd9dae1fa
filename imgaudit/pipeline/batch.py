"""A batch through load -> decode -> signals -> lookups -> decision -> persist, with per-stage timings.

Decode and hashing run in a small thread pool (Pillow and OpenCV release the GIL); the visual encoder
gets the whole batch in one call. Decisions are then taken in order, each unique image joining the
indexes at once, so that two copies inside one batch are caught too.

Whatever one image makes go wrong stays that image's failure: every per-image step catches what it
raises (an ``InternalError`` naming the step), and a batched model call that raises is run again image
by image so that only the image that breaks it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

import numpy as np

from imgaudit.config import Settings
from imgaudit.errors import ImgauditError, InternalError, MediaError, OverBudget
from imgaudit.index.replica import DedupReplica
from imgaudit.media.fetch import ByteBudget, Fetcher, read_local
from imgaudit.media.sandbox import DecodePool
from imgaudit.models.ports import ImageEncoder, ImageTextEncoder
from imgaudit.pipeline.moderation import Moderated, Moderator, Subject
from imgaudit.policy.cascade import Lookups, decide
from imgaudit.signals import local_features
from imgaudit.signals.colour import colour_names
from imgaudit.signals.framing import content_box
from imgaudit.signals.hashes import phash, pixel_sha256
from imgaudit.store.ports import Store
from imgaudit.store.thumbs import ThumbStore
from imgaudit.types import (
    Claimed,
    Completion,
    Decision,
    Decoded,
    DedupSignals,
    Failure,
    ImageRef,
    Stage,
    Verdict,
)

DECODE_THREADS = 2
log = logging.getLogger("imgaudit.pipeline")


@dataclass
class Analysed:
    """One image after decoding and signals, or the reason it failed."""

    decoded: Decoded | None = None
    signals: DedupSignals | None = None
    error: ImgauditError | None = None
    data: bytes | None = None  # the bytes as received, kept for the batch (larger decodes for OCR)
    probabilities: np.ndarray | None = None  # ImageNet-1k, from the visual encoder
    colours: list[tuple[str, str, float]] | None = None  # dominant colours, for search
    clip_embedding: np.ndarray | None = None  # from a configured image-text model
    ai_caption: str | None = None  # from the remote captioner
    moderated: Moderated | None = None


@dataclass
class BatchReport:
    completions: list[Completion] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)  # leases that expired and went to another worker
    deferred: list[int] = field(default_factory=list)  # over the batch's byte budget: queued again
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))


def _return_freed_memory() -> None:
    """Hand the heap a batch freed back to the system (glibc keeps it otherwise: image buffers of tens of
    MB fall under its adaptive mmap threshold), so a long-running worker's memory stays flat."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        _libc().malloc_trim(0)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


R = TypeVar("R")


class Captioner(Protocol):
    """What the pipeline asks of a captioner (the remote one): a description per image, or the error."""

    def caption_many(self, images: Sequence[np.ndarray]) -> Sequence[str | ImgauditError]: ...


def _guard(stage: str, fn: Callable[..., R], *args: object) -> R | InternalError:
    """``fn(*args)``, or the InternalError that one item's failure in ``stage`` becomes."""
    try:
        return fn(*args)
    except Exception as exc:
        return InternalError.during(stage, exc)


ExactFinder = Callable[[str, str], "tuple[int, str] | None"]


def _no_exact(sha256: str, pixel_sha256: str) -> None:
    return None


LABELS_KEPT = 32


def top_probabilities(probabilities: np.ndarray | None) -> list[list[float]] | None:
    """The most probable ImageNet classes as [index, probability]: enough of the mass for search's label
    bridge (the tail of 1,000 classes holds little), at a few hundred bytes per image."""
    if probabilities is None:
        return None
    top = np.argsort(-probabilities)[:LABELS_KEPT]
    return [[int(i), round(float(probabilities[i]), 5)] for i in top if probabilities[i] >= 1e-4]


def _fail(a: Analysed, error: ImgauditError) -> None:
    a.error, a.decoded, a.signals = error, None, None


# Past its signals step an image has its decode and signals, and past the encoder its probabilities: only
# such images reach the encoder, moderation and verification.


def _signals(a: Analysed) -> DedupSignals:
    assert a.signals is not None
    return a.signals


def _pixels(a: Analysed) -> np.ndarray:
    assert a.decoded is not None
    return a.decoded.pixels


def _subject(a: Analysed) -> Subject:
    assert a.decoded is not None and a.signals is not None and a.probabilities is not None
    return Subject(a.decoded, a.data or b"", a.signals.embedding, a.probabilities)


def _crop(a: Analysed) -> np.ndarray:
    assert a.decoded is not None and a.signals is not None and a.signals.inner_box is not None
    x0, y0, x1, y1 = a.signals.inner_box
    return np.ascontiguousarray(a.decoded.pixels[y0:y1, x0:x1])


class Pipeline:
    """Owns no resources of its own: the store, indexes, encoder and thumbnails are handed in. The dedup
    replica is read for lookups, caught up and added to only through its own methods."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        indexes: DedupReplica,
        encoder: ImageEncoder,
        thumbs: ThumbStore,
        moderator: Moderator | None = None,
        image_text: ImageTextEncoder | None = None,
        captioner: Captioner | None = None,
        decoder: DecodePool | None = None,
    ) -> None:
        self.image_text = image_text
        self.captioner = captioner
        self.settings = settings
        self.moderator = moderator if settings.moderation.enabled else None
        self.store = store
        self.indexes = indexes
        self.encoder = encoder
        self.thumbs = thumbs
        self._pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")
        # Decoding untrusted bytes runs in worker processes with a deadline and a memory cap.
        self._own_decoder = decoder is None
        self.decoder = decoder or DecodePool(settings.decode)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        if self._own_decoder:
            self.decoder.close()

    # -- stages ----------------------------------------------------------------------------------------

    def load_decoded(
        self, refs: Sequence[ImageRef], timings: dict[str, float], patient: Collection[int] | None = None
    ) -> list[Analysed]:
        """Each reference read or downloaded, then decoded and hashed; failures are returned in place.

        Decoding starts as soon as each image's bytes are in (a slow server holds up only its own item),
        and the bytes the batch holds at once are bounded by ``decode.batch_max_bytes``: past it an item
        ends as OverBudget, to be queued again without losing an attempt. The bytes stay reserved while
        the batch keeps them (moderation decodes text images larger from them), until ``release_bytes``.

        With ``patient`` (the indexes of items on their last attempt), downloads still running
        ``fetch.straggler_seconds`` after the rest of the batch are cut off as SlowServer (retried later)
        so that one slow server holds up only its own item; None waits for every download.
        """
        t = time.perf_counter()
        budget = ByteBudget(self.settings.decode.batch_max_bytes)
        futures: list[Future[Analysed] | None] = [None] * len(refs)

        def start(i: int, data: bytes | ImgauditError) -> None:
            futures[i] = self._pool.submit(self._decode_one, data, budget)

        remote = ("url", "key")  # external-table rows carry the image URL
        urls = [(i, r.uri) for i, r in enumerate(refs) if r.kind in remote]
        for i, r in enumerate(refs):
            if r.kind not in remote:
                start(i, self._read(r, budget))
        if urls:

            async def fetch_all() -> None:
                async with Fetcher(self.settings.fetch) as fetcher:
                    await fetcher.fetch_many(
                        [u for _, u in urls],
                        on_result=lambda k, res: start(urls[k][0], res),
                        budget=budget,
                        patience=self.settings.fetch.straggler_seconds if patient is not None else None,
                        patient=[k for k, (i, _) in enumerate(urls) if patient is not None and i in patient],
                    )

            asyncio.run(fetch_all())
        items = [f.result() if f is not None else Analysed(error=MediaError("not loaded")) for f in futures]
        timings["load+decode+hash"] += time.perf_counter() - t
        return items

    def _read(self, ref: ImageRef, budget: ByteBudget) -> bytes | ImgauditError:
        try:
            data = read_local(ref.uri, max_bytes=self.settings.fetch.max_bytes)
        except MediaError as exc:
            return exc
        except Exception as exc:  # e.g. a path no filesystem call accepts
            return InternalError.during("read", exc)
        if not budget.try_reserve(len(data)):
            return OverBudget(f"the batch already holds {budget.in_flight} bytes of images")
        return data

    @staticmethod
    def release_bytes(items: Sequence[Analysed]) -> None:
        """Drop the raw bytes the batch kept once every stage that reads them is done."""
        for a in items:
            a.data = None

    def _decode_one(self, data: bytes | ImgauditError, budget: ByteBudget | None = None) -> Analysed:
        try:
            a = self._decode_signals(data)
        except Exception as exc:  # hashes or framing on an image no check foresaw
            a = Analysed(error=InternalError.during("decode and hashing", exc))
        if budget is not None and isinstance(data, bytes) and a.data is None:
            budget.release(len(data))  # failed: the batch keeps nothing of it
        return a

    def _decode_signals(self, data: bytes | ImgauditError) -> Analysed:
        if isinstance(data, ImgauditError):
            return Analysed(error=data)
        try:
            d = self.decoder.decode(data)
        except MediaError as exc:
            return Analysed(error=exc)
        return Analysed(
            data=data,
            colours=colour_names(d.pixels),
            decoded=d,
            signals=DedupSignals(
                d.sha256,
                pixel_sha256(d.pixels),
                phash(d.pixels),
                np.empty(0, np.float32),
                inner_box=content_box(d.pixels),
            ),
        )

    def analyse(
        self, refs: Sequence[ImageRef], timings: dict[str, float], patient: Collection[int] | None = None
    ) -> list[Analysed]:
        """Every stage before the decision: load, decode and hash, embed, moderate, enrich."""
        items = self.load_decoded(refs, timings, patient)
        ok = [a for a in items if a.decoded is not None and a.signals is not None]
        if ok:
            t = time.perf_counter()
            # One encoder call for the whole batch: every image, then the framed photos' insides.
            try:
                self._embed(ok)
            except Exception:
                for a in ok:  # one image at a time: only the one that breaks the encoder fails
                    try:
                        self._embed([a])
                    except Exception as exc:
                        _fail(
                            a, exc if isinstance(exc, ImgauditError) else InternalError.during("embed", exc)
                        )
            timings["embed"] += time.perf_counter() - t
            ok = [a for a in ok if a.error is None]
            if self.moderator is not None and ok:
                self._moderate(ok, timings)
            self._enrich([a for a in ok if a.error is None], timings)
        return items

    def _embed(self, ok: list[Analysed]) -> None:
        """One encoder call for these images: every image, then the framed photos' insides."""
        framed = [a for a in ok if _signals(a).inner_box is not None]
        views = [_pixels(a) for a in ok] + [_crop(a) for a in framed]
        out = self.encoder.encode(views)
        inner = dict(zip(map(id, framed), out.descriptors[len(ok) :], strict=True))
        for a, emb, probs in zip(ok, out.descriptors[: len(ok)], out.probabilities, strict=False):
            assert a.signals is not None
            a.signals = replace(a.signals, embedding=emb, inner_embedding=inner.get(id(a)))
            a.probabilities = probs

    def _enrich(self, ok: list[Analysed], timings: dict[str, float]) -> None:
        """Optional search enrichments: an image-text embedding, a remote caption. A failure leaves the
        image without them (logged), never fails it: search still has labels, OCR and captions."""
        pixels = [a.decoded.pixels for a in ok if a.decoded is not None]
        if not pixels:
            return
        if self.image_text is not None:
            t = time.perf_counter()
            try:
                for a, v in zip(ok, self.image_text.encode_images(pixels), strict=True):
                    a.clip_embedding = v
            except Exception as exc:
                log.warning("image-text embedding failed for a batch of %d: %s", len(pixels), exc)
            timings["image_text"] += time.perf_counter() - t
        if self.captioner is not None:
            t = time.perf_counter()
            try:
                captions: list[object] = list(self.captioner.caption_many(pixels))
            except Exception as exc:
                log.warning("captions failed for a batch of %d: %s", len(pixels), exc)
                captions = [None] * len(ok)
            for a, cap in zip(ok, captions, strict=True):
                if isinstance(cap, str):
                    a.ai_caption = cap or None
                elif cap is not None:
                    log.warning("caption failed: %s", getattr(cap, "message", cap))
            timings["caption"] += time.perf_counter() - t

    def _moderate(self, ok: list[Analysed], timings: dict[str, float]) -> None:
        subjects = [_subject(a) for a in ok]
        assert self.moderator is not None
        try:
            results = self.moderator.run(subjects, timings)
        except Exception:  # the model errors come back per image; anything else: isolate the image
            results = [self._moderate_alone(s, timings) for s in subjects]
        for a, result in zip(ok, results, strict=True):
            if isinstance(result, ImgauditError):
                _fail(a, result)
            else:
                a.moderated = result

    def _moderate_alone(self, subject: Subject, timings: dict[str, float]) -> Moderated | ImgauditError:
        assert self.moderator is not None
        try:
            return self.moderator.run([subject], timings)[0]
        except Exception as exc:
            return InternalError.during("moderation", exc)

    def lookups(
        self,
        signals: DedupSignals,
        batch_exact: dict[str, tuple[int, Stage]],
        find_exact: ExactFinder | None = None,
    ) -> Lookups:
        cfg = self.settings.dedup
        exact = batch_exact.get("b:" + signals.sha256) or batch_exact.get("p:" + signals.pixel_sha256)
        if exact is None:
            found = (find_exact or self.store.find_exact)(signals.sha256, signals.pixel_sha256)
            exact = (found[0], Stage(found[1])) if found else None
        dists, hids = self.indexes.hashes.search([signals.phash], cfg.phash_candidates)
        queries = [signals.embedding] + (
            [signals.inner_embedding] if signals.inner_embedding is not None else []
        )
        scores, vids = self.indexes.vectors.search(np.stack(queries), cfg.top_k)
        # A candidate's score is its best over the views (whole image, photo inside a frame).
        known: dict[int, float] = {}
        for row_ids, row_scores in zip(vids, scores, strict=True):
            for i, sc in zip(row_ids.tolist(), row_scores.tolist(), strict=True):
                if i >= 0 and sc > known.get(i, -2.0):
                    known[i] = sc
        neighbours = sorted(known.items(), key=lambda kv: -kv[1])[: cfg.top_k]
        vectors = self.indexes.vectors

        def cosine_of(image_id: int) -> float:
            if image_id in known:
                return known[image_id]
            v = vectors.vector(image_id)
            return max(float(v @ q) for q in queries) if v is not None else -1.0

        return Lookups(
            exact,
            [(int(i), int(d)) for i, d in zip(hids[0], dists[0], strict=True) if i >= 0],
            neighbours,
            cosine_of,
        )

    def verifier(
        self, a: Analysed, pending: dict[int, bytes] | None = None
    ) -> Callable[[int], local_features.Verification]:
        """Geometric verification of ``a`` against indexed thumbnails (or, for images of the same batch
        not yet written, their encoded thumbnails in ``pending``); query features are computed once and
        each candidate is verified once (the result is remembered)."""
        assert a.signals is not None and a.decoded is not None
        views = [a.decoded.pixels] + ([_crop(a)] if a.signals.inner_box is not None else [])
        features: list[local_features.Features] = []
        memo: dict[int, local_features.Verification] = {}

        def verify(candidate: int) -> local_features.Verification:
            if candidate in memo:
                return memo[candidate]
            try:
                thumb = (
                    ThumbStore.decode(pending[candidate])
                    if pending and candidate in pending
                    else self.thumbs.get(candidate)
                )
                if thumb is None:
                    return local_features.NOT_VERIFIED
                if not features:
                    features.extend(local_features.extract(v) for v in views)
                memo[candidate] = local_features.verify(views, thumb, features)
            except Exception as exc:  # decided without it; the evidence says verification failed
                log.warning("verification against %d failed: %s: %s", candidate, type(exc).__name__, exc)
                memo[candidate] = local_features.Verification(error=f"{type(exc).__name__}: {exc}"[:200])
            return memo[candidate]

        return verify

    def _verify_within_batch(
        self,
        ok: list[tuple[Claimed, Analysed]],
        verifiers: Mapping[int, Callable[[int], object]],
        settled: set[int],
    ) -> None:
        """Copies inside one batch meet only under the lock, when the earlier one has just been indexed;
        verify such pairs now, in parallel with other workers, so the lock finds the answers remembered."""
        if len(ok) < 2:
            return
        cfg = self.settings.dedup
        emb = np.stack([_signals(a).embedding for _, a in ok])
        sims = emb @ emb.T
        for j in range(1, len(ok)):
            earlier = sims[j, :j]
            if ok[j][0].id in settled or earlier.max() >= cfg.embed_duplicate:
                continue  # decided without verification
            band = np.flatnonzero((earlier >= cfg.embed_verify) & (earlier < cfg.embed_duplicate))
            for i in band[np.argsort(-earlier[band])][: cfg.verify_candidates]:
                verifiers[ok[j][0].id](ok[int(i)][0].id)

    @staticmethod
    def _keep_good(
        ok: list[tuple[Claimed, Analysed]], results: Sequence[R | InternalError], report: BatchReport
    ) -> tuple[list[tuple[Claimed, Analysed]], list[R]]:
        """The items whose step succeeded, with their results; the others become the batch's failures."""
        kept: list[tuple[Claimed, Analysed]] = []
        values: list[R] = []
        for pair, result in zip(ok, results, strict=True):
            if isinstance(result, InternalError):
                report.failures.append(Failure(id=pair[0].id, error=result))
            else:
                kept.append(pair)
                values.append(result)
        return kept, values

    def decide_one(self, a: Analysed, batch_exact: dict[str, tuple[int, Stage]]) -> Verdict:
        assert a.signals is not None
        return decide(self.lookups(a.signals, batch_exact), self.verifier(a), self.settings.dedup)

    # -- a whole batch -----------------------------------------------------------------------------------

    def process(self, claimed: Sequence[Claimed], worker: str | None = None) -> BatchReport:
        """Run claimed items through every stage and persist the results.

        Loading, decoding, embedding and most verification run in parallel with other workers; only
        catching up with their index changes, the final decisions and the write happen under the
        store's dedup lock, in one transaction.
        """
        report = BatchReport()
        cfg = self.settings.dedup
        last = {i for i, c in enumerate(claimed) if c.attempts >= self.settings.max_attempts}
        analysed = self.analyse([c.ref for c in claimed], report.timings, patient=last)
        self.release_bytes(analysed)
        ok: list[tuple[Claimed, Analysed]] = []
        for item, a in zip(claimed, analysed, strict=True):
            if isinstance(a.error, OverBudget):  # no fault of the image's: back to the queue, no attempt lost
                report.deferred.append(item.id)
            elif a.error is not None or a.signals is None or a.decoded is None:
                report.failures.append(Failure(id=item.id, error=a.error or MediaError("no signals")))
            else:
                ok.append((item, a))

        self.store.release(report.deferred)

        # Outside the lock: verify against what is indexed now; results are remembered.
        t = time.perf_counter()
        # Thumbnails are encoded now, outside the lock; only the uniques' are written, under it.
        encoded = list(
            self._pool.map(lambda ia: _guard("thumbnail", ThumbStore.encode, ia[1].decoded.pixels), ok)
        )
        ok, blobs = self._keep_good(ok, encoded, report)
        thumbs = {item.id: blob for (item, _), blob in zip(ok, blobs, strict=True)}
        verifiers = {item.id: self.verifier(a, thumbs) for item, a in ok}
        early = [
            _guard(
                "lookup",
                lambda a=a, item=item: decide(
                    self.lookups(a.signals, {}, _no_exact), verifiers[item.id], cfg
                ),
            )
            for item, a in ok
        ]
        ok, verdicts = self._keep_good(ok, early, report)
        # Already a duplicate of something indexed: nothing more to verify.
        settled = {item.id for (item, _), v in zip(ok, verdicts, strict=True) if v.duplicate_of}
        try:
            self._verify_within_batch(ok, verifiers, settled)
        except Exception:  # only a head start: the decisions below verify what is still needed
            log.warning("verifying copies within the batch failed", exc_info=True)
        report.timings["verify"] += time.perf_counter() - t

        t = time.perf_counter()
        # What the batch indexes is taken back unless the store commits the batch.
        with self.indexes.batch() as entries:
            with self.store.decision_lock() as tx:
                self.indexes.sync(tx)
                find_exact = tx.exact_finder(
                    [a.signals.sha256 for _, a in ok if a.signals],
                    [a.signals.pixel_sha256 for _, a in ok if a.signals],
                )
                batch_exact: dict[str, tuple[int, Stage]] = {}
                for item, a in ok:
                    assert a.signals is not None and a.decoded is not None
                    try:
                        verdict = decide(
                            self.lookups(a.signals, batch_exact, find_exact), verifiers[item.id], cfg
                        )
                    except Exception as exc:
                        error = InternalError.during("decision", exc)
                        report.failures.append(Failure(id=item.id, error=error))
                        continue
                    index_it = verdict.decision == Decision.UNIQUE or cfg.index_duplicates
                    if index_it:
                        entries.add(item.id, a.signals.phash, a.signals.embedding)
                        self.thumbs.put_bytes(item.id, thumbs[item.id])
                    if verdict.decision == Decision.UNIQUE:
                        batch_exact.setdefault("b:" + a.signals.sha256, (item.id, Stage.EXACT_BYTES))
                        batch_exact.setdefault("p:" + a.signals.pixel_sha256, (item.id, Stage.EXACT_PIXELS))
                    d = a.decoded
                    report.completions.append(
                        Completion(
                            id=item.id,
                            signals=a.signals,
                            verdict=verdict,
                            format=d.format,
                            width=d.width,
                            height=d.height,
                            indexed=index_it,
                            moderation_signals=a.moderated.signals if a.moderated else None,
                            moderation=a.moderated.verdict if a.moderated else None,
                            labels=top_probabilities(a.probabilities),
                            colours=a.colours,
                            clip_embedding=a.clip_embedding,
                            ai_caption=a.ai_caption,
                        )
                    )
                t_write = time.perf_counter()
                report.lost = tx.finish(
                    report.completions, report.failures, self.settings.max_attempts, worker
                )
                report.timings["write"] += time.perf_counter() - t_write
                logged = tx.last_seq()
            entries.written(logged, report.lost)
        if report.lost:
            lost = set(report.lost)
            report.completions = [c for c in report.completions if c.id not in lost]
            report.failures = [f for f in report.failures if f.id not in lost]
        report.timings["decide+store"] += time.perf_counter() - t
        _return_freed_memory()
        return report

    def check(self, refs: Sequence[ImageRef]) -> list[tuple[Verdict | None, Analysed]]:
        """Decide for each image against what is indexed, without storing anything."""
        timings: dict[str, float] = defaultdict(float)
        analysed = self.analyse(refs, timings)
        return [(self.decide_one(a, {}) if a.error is None else None, a) for a in analysed]

    def similar(self, ref: ImageRef, k: int) -> list[tuple[int, float]]:
        """Indexed images nearest to one image by descriptor cosine."""
        (a,) = self.analyse([ref], defaultdict(float))
        if a.error is not None or a.signals is None:
            raise a.error or MediaError()
        scores, ids = self.indexes.vectors.search(a.signals.embedding[None, :], k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
