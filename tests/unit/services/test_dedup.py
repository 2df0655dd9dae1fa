"""Dedup service end to end on generated images, with the fake encoder (the real one: tests/models)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageOps

from imgaudit.bootstrap import dedup_service
from imgaudit.config import Settings
from imgaudit.models.visual import VisualEncoder
from imgaudit.sources.files import FolderSource
from imgaudit.testing.fakes import textured_image
from imgaudit.types import ImageRef


def make_folder(root: Path, n: int = 6) -> dict[str, str | None]:
    """n originals, and copies: re-encoded, resized, byte-identical, mirrored; plus two broken files."""
    root.mkdir(parents=True, exist_ok=True)
    answers: dict[str, str | None] = {}
    for i in range(n):
        im = textured_image(100 + i, (480, 360))
        im.save(root / f"o{i}.jpg", quality=92)
        answers[f"o{i}.jpg"] = None
    Image.open(root / "o0.jpg").save(root / "z_o0_png.png")  # same pixels, other bytes
    (root / "z_o1_copy.jpg").write_bytes((root / "o1.jpg").read_bytes())
    Image.open(root / "o2.jpg").resize((240, 180)).save(root / "z_o2_small.jpg", quality=60)
    ImageOps.mirror(Image.open(root / "o3.jpg")).save(root / "z_o3_mirror.jpg", quality=85)
    answers.update(
        {
            "z_o0_png.png": "o0.jpg",
            "z_o1_copy.jpg": "o1.jpg",
            "z_o2_small.jpg": "o2.jpg",
            "z_o3_mirror.jpg": "o3.jpg",
        }
    )
    (root / "zz_truncated.jpg").write_bytes((root / "o4.jpg").read_bytes()[:500])
    (root / "zz_text.jpg").write_text("not an image")
    return answers


def run(settings: Settings, folder: Path, encoder: VisualEncoder):
    with dedup_service(settings, encoder) as svc:
        svc.enqueue(FolderSource(folder).refs(), "folder")
        summary = svc.process_queue(batch_size=4)
        pairs = {Path(d.uri).name: (Path(o.uri).name, d.stage) for d, o in svc.store.duplicate_pairs()}
        return summary, pairs, svc.store.counts(), len(svc.indexes)


def test_ingest_finds_copies_and_records_failures(
    settings: Settings, tmp_path: Path, fake_encoder: VisualEncoder
) -> None:
    folder = tmp_path / "imgs"
    answers = make_folder(folder)
    summary, pairs, counts, indexed = run(settings, folder, fake_encoder)
    assert summary.processed == 12 and summary.failed == 2
    assert pairs["z_o1_copy.jpg"] == ("o1.jpg", "exact_bytes")
    assert pairs["z_o0_png.png"] == ("o0.jpg", "exact_pixels")
    assert pairs["z_o2_small.jpg"][0] == "o2.jpg"
    assert counts["error"] == {"corrupt": 1, "not_an_image": 1}
    assert counts["status"] == {"done": 10, "failed_permanent": 2}
    assert indexed == counts["decision"]["unique"]
    for name, (orig, _) in pairs.items():
        assert answers[name] == orig


def test_ingest_is_resumable_and_index_survives_restart(
    settings: Settings, tmp_path: Path, fake_encoder: VisualEncoder
) -> None:
    folder = tmp_path / "imgs"
    make_folder(folder)
    with dedup_service(settings, fake_encoder) as svc:
        svc.enqueue(FolderSource(folder).refs(), "folder")
        first = svc.process_queue(batch_size=4, limit=4)  # stop half-way, as after a crash
        assert first.processed == 4
    with dedup_service(settings, fake_encoder) as svc:
        added, known = svc.enqueue(FolderSource(folder).refs(), "folder")
        assert (added, known) == (0, 12)
        rest = svc.process_queue(batch_size=4)
        assert rest.processed == 8
        assert len(svc.indexes) == svc.store.count_indexed()
    calls_before = fake_encoder.session.calls
    with dedup_service(settings, fake_encoder) as svc:
        assert svc.process_queue().processed == 0
        assert len(svc.indexes) == svc.store.count_indexed() > 0
    assert fake_encoder.session.calls == calls_before  # nothing re-embedded


def test_index_is_rebuilt_from_the_store_when_files_are_lost(
    settings: Settings, tmp_path: Path, fake_encoder: VisualEncoder
) -> None:
    folder = tmp_path / "imgs"
    make_folder(folder)
    run(settings, folder, fake_encoder)
    import shutil

    shutil.rmtree(settings.data_dir / "index")
    with dedup_service(settings, fake_encoder) as svc:
        assert len(svc.indexes) == svc.store.count_indexed() == svc.store.counts()["decision"]["unique"] >= 6
        scores, ids = svc.indexes.vectors.search(
            svc.pipeline.analyse([ImageRef(str(folder / "o5.jpg"))], defaultdict(float))[0].signals.embedding[
                None, :
            ],
            1,
        )
        assert svc.store.get(int(ids[0][0])).uri.endswith("o5.jpg") and scores[0][0] > 0.99


def test_check_does_not_store(settings: Settings, tmp_path: Path, fake_encoder: VisualEncoder) -> None:
    from imgaudit.types import ImageRef

    folder = tmp_path / "imgs"
    make_folder(folder)
    run(settings, folder, fake_encoder)
    probe = tmp_path / "probe.jpg"
    Image.open(folder / "o5.jpg").resize((300, 225)).save(probe, quality=70)
    with dedup_service(settings, fake_encoder) as svc:
        before = svc.store.counts()
        (res,) = svc.check([ImageRef(str(probe))])
        assert res.verdict.decision == "duplicate" and res.original.uri.endswith("o5.jpg")
        (bad,) = svc.check([ImageRef(str(tmp_path / "missing.jpg"))])
        assert bad.verdict is None and bad.error_reason
        assert svc.store.counts() == before


def test_store_changes_after_the_last_index_save_trigger_a_rebuild(
    settings: Settings, tmp_path: Path, fake_encoder: VisualEncoder
) -> None:
    """A crash between the store's commit and the index save must not leave an image unsearchable."""
    folder = tmp_path / "imgs"
    make_folder(folder)
    run(settings, folder, fake_encoder)
    late = tmp_path / "late.jpg"
    textured_image(999, (480, 360)).save(late, quality=90)
    with dedup_service(settings, fake_encoder) as svc:
        svc.enqueue([ImageRef(str(late))], "folder")
        claimed = svc.store.claim("w", 10, 60)
        svc.pipeline.process(claimed)  # committed to the store; the index file is not saved ("crash")
        late_id = claimed[0].id
    with dedup_service(settings, fake_encoder) as svc:
        assert late_id in svc.indexes.vectors
        assert len(svc.indexes) == svc.store.count_indexed()


def test_memory_backend_is_rebuilt_from_the_store(tmp_path: Path, fake_encoder: VisualEncoder) -> None:
    from imgaudit.config import load_settings

    settings = load_settings(data_dir=tmp_path / "data", index={"backend": "memory"})
    folder = tmp_path / "imgs"
    make_folder(folder)
    _, _, counts, indexed = run(settings, folder, fake_encoder)
    assert indexed == counts["decision"]["unique"]
    with dedup_service(settings, fake_encoder) as svc:
        assert len(svc.indexes) == indexed


def test_a_slow_batch_keeps_its_leases(tmp_path: Path, fake_encoder: VisualEncoder) -> None:
    """A batch slower than its lease is not taken by another worker: the heartbeat extends it."""
    import threading
    import time

    from imgaudit.bootstrap import worker_service
    from imgaudit.config import load_settings

    settings = load_settings(data_dir=tmp_path / "data", lease_seconds=5)
    folder = tmp_path / "imgs"
    make_folder(folder)
    with worker_service(settings, fake_encoder) as svc:
        svc.store.enqueue(FolderSource(folder).refs(), "folder")
        real_process = svc.dedup.pipeline.process
        stolen: list[int] = []

        def slow_process(claimed, worker=None):
            time.sleep(7)  # longer than the 5 s lease
            stolen.extend(c.id for c in svc.store.claim("thief", 100, 5))
            return real_process(claimed, worker)

        svc.dedup.pipeline.process = slow_process
        t = threading.Thread(target=svc.step)
        t.start()
        t.join(30)
        assert not stolen
        assert svc.store.counts()["status"].get("processing", 0) == 0
