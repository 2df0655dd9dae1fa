"""The composition root: the only module that picks concrete backends from the settings."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache, partial
from pathlib import Path
from typing import Any

from imgaudit.config import Settings
from imgaudit.errors import ConfigError, StoreError
from imgaudit.index.base import BruteForceHashIndex, BruteForceVectorIndex, IndexBackend
from imgaudit.index.faiss_index import FaissHashIndex, FaissVectorIndex
from imgaudit.index.replica import DedupReplica
from imgaudit.index.tantivy_index import TantivyTextIndex
from imgaudit.label_space import LabelSpace
from imgaudit.media.sandbox import DecodePool
from imgaudit.models.classifier import ClassifierHub
from imgaudit.models.clip import ClipEncoder
from imgaudit.models.export import VisualModelFile
from imgaudit.models.heads import LocalHeads
from imgaudit.models.nsfw import NsfwScorer
from imgaudit.models.ocr import OcrEngine
from imgaudit.models.ports import ImageTextEncoder, TextEncoder
from imgaudit.models.remote.dashscope_embedding import RemoteEmbedder
from imgaudit.models.remote.openai_chat import RemoteCaptioner
from imgaudit.models.text import E5TextEncoder
from imgaudit.models.visual import DESCRIPTOR_DIM, VisualEncoder
from imgaudit.pipeline import Moderator, Pipeline
from imgaudit.rules.matcher import TextRules
from imgaudit.services import training
from imgaudit.services.dedup import DedupService
from imgaudit.services.items import ItemsService
from imgaudit.services.prepare import Prepared, Progress, prepare_models
from imgaudit.services.search import SearchService
from imgaudit.services.search_index import SearchIndexes
from imgaudit.services.stats import StatsService
from imgaudit.services.worker import WorkerService
from imgaudit.sources.files import Source, source_for
from imgaudit.store.ports import Store
from imgaudit.store.sql import SqlStore
from imgaudit.store.thumbs import ThumbStore


def open_source(settings: Settings, target: str) -> Source:
    """The source a user's ``target`` names: a folder, a single image file, or a text file of URLs, read
    the way the settings say (``fetch.cdn_base`` for relative URLs, ``sources.follow_symlinks``).
    Resolved before any service opens, so a mistyped path fails at once and creates nothing."""
    return source_for(target, settings.fetch.cdn_base, follow_symlinks=settings.sources.follow_symlinks)


@contextmanager
def open_store(settings: Settings) -> Iterator[Store]:
    """The configured store, closed afterwards (commands that need no model or index)."""
    store = SqlStore(settings.store_url)
    try:
        yield store
    finally:
        store.close()


def index_backend(settings: Settings) -> IndexBackend:
    """The one registry of index backends, for the dedup indexes and the search vectors alike."""
    cfg = settings.index
    match cfg.backend:
        case "faiss":
            return IndexBackend(
                new_vectors=partial(FaissVectorIndex, exact_below=cfg.exact_below, nprobe=cfg.nprobe),
                new_hashes=FaissHashIndex,
                load_vectors=partial(FaissVectorIndex.load, exact_below=cfg.exact_below, nprobe=cfg.nprobe),
                load_hashes=FaissHashIndex.load,
            )
        case "memory":
            return IndexBackend(new_vectors=BruteForceVectorIndex, new_hashes=BruteForceHashIndex)
        case _:
            raise ConfigError(f"unknown index backend {cfg.backend!r} (expected 'faiss' or 'memory')")


def _bm25(settings: Settings, backend: IndexBackend) -> TantivyTextIndex:
    """The BM25 index: on disk beside the saved search vectors, or in memory when the backend saves none
    (both are rebuilt from the store together)."""
    if not backend.persistent:
        return TantivyTextIndex(None)
    path = settings.data_dir / "search" / "bm25"
    try:
        return TantivyTextIndex(path)
    except StoreError:  # built by another analyzer version: it is rebuilt from the store
        shutil.rmtree(path)
        return TantivyTextIndex(path)


def build_encoder(settings: Settings) -> VisualEncoder:
    return VisualEncoder.from_cache(
        settings.cache_dir,
        threads=settings.models.threads,
        input_size=settings.models.input_size,
        batch_size=settings.models.batch_size,
    )


@cache
def _ocr_engine(threads: int, min_score: float) -> OcrEngine:
    """One per process: the models load on first use and stay loaded for every later service."""
    return OcrEngine(threads=threads, min_score=min_score)


@cache
def _nsfw_scorer(threads: int, batch_size: int) -> NsfwScorer:
    return NsfwScorer.bundled(threads=threads, batch_size=batch_size)


def build_moderator(
    settings: Settings, encoder: VisualEncoder, pool: ThreadPoolExecutor, decoder: DecodePool
) -> Moderator | None:
    """The moderation stage with its models (each loaded on first use, then kept) and text rules."""
    cfg = settings.moderation
    if not cfg.enabled:
        return None
    threads = settings.models.threads
    return Moderator(
        settings,
        ocr=_ocr_engine(threads, cfg.ocr_min_score) if cfg.ocr else None,
        nsfw=_nsfw_scorer(threads, settings.models.batch_size) if cfg.nsfw else None,
        rules=TextRules.load(cfg.rules, cfg.words),
        classifiers=ClassifierHub(
            settings.data_dir / "classifiers",
            reload_every=cfg.reload_every,
            encoder_id=encoder.descriptor,
        )
        if cfg.classifier
        else None,
        pool=pool,
        decoder=decoder,
    )


@contextmanager
def dedup_service(settings: Settings, encoder: VisualEncoder | None = None) -> Iterator[DedupService]:
    """Everything dedup needs, wired, reconciled with the store, and closed afterwards."""
    backend = index_backend(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqlStore(settings.store_url)
    encoder = encoder or build_encoder(settings)
    indexes = DedupReplica.open(
        backend, DESCRIPTOR_DIM, descriptor=encoder.descriptor, directory=settings.data_dir / "index"
    )
    thumbs = ThumbStore(settings.data_dir / "thumbs")
    pool = ThreadPoolExecutor(2, thread_name_prefix="moderate")
    decoder = DecodePool(settings.decode)
    pipeline = Pipeline(
        settings,
        store,
        indexes,
        encoder,
        thumbs,
        build_moderator(settings, encoder, pool, decoder),
        decoder=decoder,
        image_text=build_image_text(settings),
        captioner=RemoteCaptioner.from_settings(settings.remote.captioner)
        if settings.remote.captioner.enabled
        else None,
    )
    service = DedupService(settings, store, indexes, pipeline, thumbs)
    try:
        service.reconcile()
        yield service
    finally:
        pipeline.close()
        pool.shutdown(wait=False)
        decoder.close()
        store.close()


@contextmanager
def worker_service(settings: Settings, encoder: VisualEncoder | None = None) -> Iterator[WorkerService]:
    """The dedup service plus the external business table when one is configured."""
    external = None
    if settings.external.url:
        from imgaudit.sources.table import ExternalTable

        external = ExternalTable(settings.external, cdn_base=settings.fetch.cdn_base)
    with dedup_service(settings, encoder) as dedup:
        try:
            yield WorkerService(settings, dedup, external)
        finally:
            if external is not None:
                external.close()


def build_image_text(settings: Settings) -> ImageTextEncoder | None:
    """The image-text model whose vectors join search, when one is configured: a local CLIP / Chinese-CLIP
    pair, else a remote multimodal embedding endpoint, else none."""
    if settings.clip.enabled:
        return _clip(settings.clip.model_dump_json(), settings.models.threads)
    if settings.remote.embedder.enabled:
        return RemoteEmbedder.from_settings(settings.remote.embedder)
    return None


@cache
def _clip(group_json: str, threads: int) -> ClipEncoder:
    from imgaudit.config import ClipSettings

    return ClipEncoder.from_settings(ClipSettings.model_validate_json(group_json), threads=threads)


@cache
def _text_encoder(threads: int) -> E5TextEncoder:
    return E5TextEncoder(threads=threads)


@contextmanager
def search_service(settings: Settings, encoder: VisualEncoder | None = None) -> Iterator[SearchService]:
    """Search over the store, with the dedup service behind it for image queries and groups; the search
    indexes catch up with the store before each query (or on ``sync``)."""
    text = _text_encoder(settings.models.threads)
    labels = label_space(settings, text)
    backend = index_backend(settings)
    with dedup_service(settings, encoder) as dedup, _bm25(settings, backend) as bm25:
        indexes = SearchIndexes(
            settings.data_dir / "search", dedup.store, text, labels, bm25, backend, dedup.pipeline.image_text
        )
        yield SearchService(settings, dedup.store, indexes, dedup)


@contextmanager
def items_service(settings: Settings) -> Iterator[ItemsService]:
    """Items one at a time (enqueue, find, explain, history, requeue): the store only, no model or index."""
    with open_store(settings) as store:
        yield ItemsService(store)


@contextmanager
def stats_service(settings: Settings) -> Iterator[StatsService]:
    """Counts, rates, queue depth and activity: the store only, no model or index."""
    with open_store(settings) as store:
        yield StatsService(store)


def label_space(settings: Settings, text: TextEncoder | None = None) -> LabelSpace:
    """The label space search uses, over ``text`` (default: the real text model) and the cache directory:
    ``models prepare`` builds the very file ``search_service`` reads."""
    return LabelSpace(text or E5TextEncoder(threads=settings.models.threads), settings.cache_dir)


def prepare(
    settings: Settings, progress: Progress | None = None, text: TextEncoder | None = None
) -> list[Prepared]:
    """``imgaudit models prepare``: the visual encoder's export and the label space, built when missing."""
    return prepare_models(VisualModelFile(settings.cache_dir), label_space(settings, text), progress)


def train(
    settings: Settings,
    dataset_dir: Path,
    encoder: VisualEncoder,
    options: training.TrainOptions | None = None,
    progress: training.Progress | None = None,
) -> training.TrainResult:
    """``imgaudit train``, with the local classifier heads."""
    return training.train(
        settings, dataset_dir, encoder, options, progress, heads=LocalHeads(settings.models.threads)
    )


def promote(settings: Settings, ref: str, encoder: VisualEncoder | None = None) -> dict[str, Any]:
    """``imgaudit models promote``: the head is loaded here as workers load it, so a broken one is refused."""
    return training.promote(settings, ref, encoder, heads=LocalHeads(settings.models.threads))


def rollback(settings: Settings, encoder: VisualEncoder | None = None) -> dict[str, Any]:
    """``imgaudit models rollback``, checked the same way."""
    return training.rollback(settings, encoder, heads=LocalHeads(settings.models.threads))
