"""Search over ingested images: following the store, text and image queries, filters, pages, groups."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import ImageDraw, ImageFont

from imgaudit.bootstrap import dedup_service, index_backend
from imgaudit.config import Settings
from imgaudit.errors import InvalidRequest
from imgaudit.index.tantivy_index import TantivyTextIndex
from imgaudit.index.text_base import TextIndex
from imgaudit.label_space import LabelSpace
from imgaudit.models.ports import ImageTextEncoder, TextEncoder
from imgaudit.models.visual import VisualEncoder
from imgaudit.services.dedup import DedupService
from imgaudit.services.search import SearchFilters, SearchService
from imgaudit.services.search_index import SearchIndexes
from imgaudit.sources.files import FolderSource
from imgaudit.testing.fakes import FakeTextEncoder, jpeg_bytes, textured_image
from imgaudit.types import ImageRef

SEEDS = [278, 371, 246, 126, 98, 114]
CAPTIONS = {
    0: {"title": "红色连衣裙 夏季新款", "brand": "ACME"},
    1: {"title": "Leather hiking boots, brown"},
    2: {"title": "蓝色牛仔裤"},
    3: {"title": "Red dress for summer evenings"},
}


def make_folder(root: Path) -> Path:
    """Six pictures, four with a sidecar caption, one with a phone number drawn on it, and a copy."""
    folder = root / "imgs"
    folder.mkdir(parents=True)
    for i, seed in enumerate(SEEDS):
        im = textured_image(seed, (480, 360)).convert("RGB")
        if i == 4:
            draw = ImageDraw.Draw(im)
            draw.rectangle((10, 290, 470, 350), fill=(255, 255, 255))
            draw.text((20, 300), "Call 13812345678", font=ImageFont.load_default(40), fill=(0, 0, 0))
        (folder / f"p{i}.jpg").write_bytes(jpeg_bytes(im))
        if i in CAPTIONS:
            (folder / f"p{i}.jpg.json").write_text(
                json.dumps(CAPTIONS[i], ensure_ascii=False), encoding="utf-8"
            )
    (folder / "z_copy_of_p1.jpg").write_bytes((folder / "p1.jpg").read_bytes())
    return folder


def open_search(
    settings: Settings,
    dedup: DedupService,
    encoder: TextEncoder,
    labels: LabelSpace,
    text_index: TextIndex,
    clip: ImageTextEncoder | None = None,
) -> SearchService:
    """A search service wired as bootstrap wires it, over a given text encoder and BM25 index."""
    indexes = SearchIndexes(
        settings.data_dir / "search", dedup.store, encoder, labels, text_index, index_backend(settings), clip
    )
    return SearchService(settings, dedup.store, indexes, dedup)


@pytest.fixture
def searched(
    settings: Settings, fake_encoder: VisualEncoder, tmp_path: Path
) -> Iterator[tuple[SearchService, Path]]:
    folder = make_folder(tmp_path)
    text = FakeTextEncoder()
    with dedup_service(settings, fake_encoder) as dedup:
        dedup.enqueue(FolderSource(folder).refs(), "folder")
        dedup.process_queue()
        index = TantivyTextIndex(settings.data_dir / "search" / "bm25")
        svc = open_search(settings, dedup, text, LabelSpace(text, tmp_path / "cache"), index)
        try:
            yield svc, folder
        finally:
            index.close()


def uri(svc: SearchService, hit_id: int) -> str:
    return Path(svc.store.get(hit_id).uri).name


def test_sidecar_captions_are_stored(searched: tuple[SearchService, Path]) -> None:
    svc, folder = searched
    rec = svc.store.find_by_uri(str((folder / "p0.jpg").resolve()))
    assert rec is not None and rec.caption == "红色连衣裙 夏季新款" and rec.meta == {"brand": "ACME"}
    assert rec.labels and all(0 <= i < 1000 for i, _ in rec.labels)


def test_sync_follows_the_store_once(searched: tuple[SearchService, Path]) -> None:
    svc, _ = searched
    assert svc.pending() == 7
    assert svc.sync() == 7
    assert svc.pending() == 0 and svc.sync() == 0
    assert len(svc.indexes.dense["labels"]) == 7


def test_chinese_caption_found_by_a_word_inside_it(searched: tuple[SearchService, Path]) -> None:
    svc, _ = searched
    res = svc.search("连衣裙")
    assert [uri(svc, h.record.id) for h in res.hits][:1] == ["p0.jpg"]
    top = res.hits[0]
    assert "bm25" in top.ranks and any("<b>连衣裙</b>" in w for w in top.why), top.why


def test_ocr_text_is_searchable_and_explained(searched: tuple[SearchService, Path]) -> None:
    svc, _ = searched
    res = svc.search("13812345678")
    assert uri(svc, res.hits[0].record.id) == "p4.jpg"
    assert any(w.startswith("ocr:") for w in res.hits[0].why)


def test_filters_apply_before_paging(searched: tuple[SearchService, Path]) -> None:
    svc, _ = searched
    everything = svc.search("dress", per_page=100)
    violations = svc.search("dress", filters=SearchFilters(moderation=["violate"]))
    assert {uri(svc, h.record.id) for h in violations.hits} == {"p4.jpg"}
    assert violations.total == 1 < everything.total
    uniques = svc.search("boots", filters=SearchFilters(decision=["unique"]), per_page=100)
    assert "z_copy_of_p1.jpg" not in {uri(svc, h.record.id) for h in uniques.hits}


def test_pages_do_not_overlap_and_cover_the_first_results(searched: tuple[SearchService, Path]) -> None:
    svc, _ = searched
    all_ids = [h.record.id for h in svc.search("red dress", per_page=6).hits]
    pages = [h.record.id for p in (1, 2, 3) for h in svc.search("red dress", page=p, per_page=2).hits]
    assert pages == all_ids[: len(pages)] and len(set(pages)) == len(pages)


def test_image_query_finds_the_original_and_its_copy(searched: tuple[SearchService, Path]) -> None:
    svc, folder = searched
    res = svc.search(image=ImageRef(str((folder / "p1.jpg").resolve())), per_page=3)
    assert {uri(svc, h.record.id) for h in res.hits[:2]} == {"p1.jpg", "z_copy_of_p1.jpg"}
    assert all("visual" in h.ranks for h in res.hits[:2])


def test_indexes_survive_a_restart_and_are_rebuilt_for_another_model(
    searched: tuple[SearchService, Path], tmp_path: Path
) -> None:
    svc, _ = searched
    svc.sync()
    ix = svc.indexes
    again = open_search(svc.settings, svc.dedup, ix.encoder, ix.label_space, ix.text)
    assert again.indexes.seq == ix.seq and again.pending() == 0 and len(again.indexes.dense["labels"]) == 7

    class Other(FakeTextEncoder):
        name = "another-model/v2"

    other = Other()
    rebuilt = open_search(svc.settings, svc.dedup, other, LabelSpace(other, tmp_path / "c2"), ix.text)
    assert rebuilt.indexes.seq == 0 and rebuilt.pending() == 7


def test_duplicate_groups(searched: tuple[SearchService, Path]) -> None:
    svc, _ = searched
    (group,) = svc.groups("duplicates")
    assert group.size == 2 and uri(svc, group.representative.id) == "p1.jpg"
    with pytest.raises(InvalidRequest):
        svc.groups("nonsense")


def test_similar_groups_use_the_visual_index(searched: tuple[SearchService, Path]) -> None:
    svc, _ = searched
    # Duplicates are not in the visual index: the six originals are linked by any cosine at all, and by
    # nothing above 1.
    assert svc.groups("similar", threshold=1.01) == []
    assert sum(g.size for g in svc.groups("similar", threshold=-1.0)) == 6


def test_an_empty_query_is_an_error(searched: tuple[SearchService, Path]) -> None:
    svc, _ = searched
    with pytest.raises(InvalidRequest):
        svc.search("   ")


def test_a_configured_clip_joins_the_search(
    tmp_path: Path, database_url: str, fake_encoder: VisualEncoder
) -> None:
    """With [clip] pointing at (tiny, generated) ONNX towers, ingest stores each image's CLIP vector and a
    text query ranks by it: "red" finds the red picture although no label, OCR or caption says so."""
    from PIL import Image

    from imgaudit.bootstrap import build_image_text
    from imgaudit.config import load_settings
    from imgaudit.testing.clip import make_tiny_clip

    tiny = make_tiny_clip(tmp_path / "clip", colours={"red": (220, 30, 30), "green": (30, 200, 40)})
    settings = load_settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        clip={
            "image_model": tiny.image_model,
            "text_model": tiny.text_model,
            "vocab": tiny.vocab,
            "merges": tiny.merges,
            "image_size": tiny.image_size,
            "framing": tiny.framing,
        },
        moderation={"enabled": False},
    )
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, rgb in (("red", (220, 30, 30)), ("green", (30, 200, 40)), ("grey", (128, 128, 128))):
        Image.new("RGB", (200, 150), rgb).save(folder / f"{name}.png")
    text = FakeTextEncoder()
    clip = build_image_text(settings)
    assert clip is not None
    with dedup_service(settings, fake_encoder) as dedup:
        assert dedup.pipeline.image_text is not None
        dedup.enqueue(FolderSource(folder).refs(), "folder")
        dedup.process_queue()
        rec = dedup.store.find_by_uri(str((folder / "red.png").resolve()))
        assert rec is not None and rec.clip_embedding is not None
        index = TantivyTextIndex(None)
        svc = open_search(settings, dedup, text, LabelSpace(text, tmp_path / "c"), index, clip)
        for word in ("red", "green"):
            res = svc.search(word, per_page=3)
            top = res.hits[0]
            assert Path(top.record.uri).stem == word and top.ranks.get("clip") == 1, [
                h.ranks for h in res.hits
            ]
            assert any("image-text model" in w for w in top.why)


def test_captions_from_a_captioner_are_stored_and_searchable(
    settings: Settings, fake_encoder: VisualEncoder, tmp_path: Path
) -> None:
    """The remote captioner's description is kept with the image and indexed like a caption; a failed
    caption leaves the image without one instead of failing it."""
    from imgaudit.errors import RemoteError

    class Captioner:
        def caption_many(self, images: list[object]) -> list[str | RemoteError]:
            return ["一双棕色皮靴 brown leather boots", RemoteError("quota exceeded")][: len(images)]

    folder = tmp_path / "two"
    folder.mkdir()
    for i, seed in enumerate((278, 371)):
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(textured_image(seed, (320, 240))))
    text = FakeTextEncoder()
    with dedup_service(settings, fake_encoder) as dedup:
        dedup.pipeline.captioner = Captioner()  # type: ignore[assignment]
        dedup.enqueue(FolderSource(folder).refs(), "folder")
        summary = dedup.process_queue(batch_size=2)
        assert summary.failed == 0
        first = dedup.store.find_by_uri(str((folder / "0.jpg").resolve()))
        second = dedup.store.find_by_uri(str((folder / "1.jpg").resolve()))
        assert first is not None and first.ai_caption == "一双棕色皮靴 brown leather boots"
        assert second is not None and second.ai_caption is None and second.status == "done"
        svc = open_search(settings, dedup, text, LabelSpace(text, tmp_path / "c"), TantivyTextIndex(None))
        top = svc.search("皮靴").hits[0]
        assert top.record.id == first.id and "bm25" in top.ranks


def test_a_reset_store_empties_the_search_indexes(searched: tuple[SearchService, Path]) -> None:
    svc, _ = searched
    svc.sync()
    assert svc.search("连衣裙").hits
    svc.store.reset()
    ix = svc.indexes
    again = open_search(svc.settings, svc.dedup, ix.encoder, ix.label_space, ix.text)
    assert again.indexes.seq == 0 and len(again.indexes.dense["labels"]) == 0
    assert again.search("连衣裙").hits == []
