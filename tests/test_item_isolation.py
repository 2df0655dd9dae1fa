"""Whatever one image makes go wrong is that image's recorded failure, never its batch's or the process's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgaudit.bootstrap import dedup_service
from imgaudit.config import Settings
from imgaudit.models.visual import VisualEncoder
from imgaudit.pipeline import batch as batch_module
from imgaudit.sources.files import FolderSource
from imgaudit.testing import FakeVisualSession, textured_image

POISON_SIDE = 97  # images this wide break the fakes below


def _folder(root: Path, n: int = 5, poison: int = 1) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        textured_image(300 + i, (320, 240)).save(root / f"ok{i}.jpg", quality=90)
    for i in range(poison):
        textured_image(400 + i, (POISON_SIDE, 80)).save(root / f"poison{i}.png")
    return root


def _ingest(settings: Settings, folder: Path, encoder: VisualEncoder, batch_size: int = 8):
    with dedup_service(settings, encoder) as svc:
        svc.enqueue(FolderSource(folder).refs(), "folder")
        summary = svc.process_queue(batch_size=batch_size)
        counts = svc.store.counts()
    return summary, counts


def test_tiny_images_do_not_break_their_batch(settings: Settings, tmp_path: Path, fake_encoder) -> None:
    """Two 1x1 PNGs (and thin strips) used to raise from ORB and release the batch on every rerun."""
    folder = _folder(tmp_path / "imgs", poison=0)
    Image.new("RGB", (1, 1), (10, 20, 30)).save(folder / "a1.png")
    Image.new("RGB", (1, 1), (10, 20, 31)).save(folder / "b1.png")
    Image.new("RGB", (1, 800), (200, 20, 30)).save(folder / "strip800.png")
    Image.new("RGB", (1, 200), (200, 20, 30)).save(folder / "strip200.png")
    summary, counts = _ingest(settings, folder, fake_encoder)
    assert summary.processed == 9
    assert counts["status"].get("processing", 0) == 0 and counts["status"].get("queued", 0) == 0
    assert counts["status"]["done"] + counts["status"].get("failed_permanent", 0) == 9


def test_an_exception_in_one_images_step_fails_only_that_image(
    settings: Settings, tmp_path: Path, fake_encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _folder(tmp_path / "imgs")
    real = batch_module.content_box

    def content_box(pixels: np.ndarray):
        if pixels.shape[1] == POISON_SIDE:
            raise ValueError("framing bug")
        return real(pixels)

    monkeypatch.setattr(batch_module, "content_box", content_box)
    summary, counts = _ingest(settings, folder, fake_encoder)
    assert summary.processed == 6 and summary.failed == 1
    assert counts["status"] == {"done": 5, "failed_permanent": 1}
    assert counts["error"] == {"internal_error": 1}


def test_a_batched_model_call_that_raises_is_retried_image_by_image(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _folder(tmp_path / "imgs")
    encoder = VisualEncoder(FakeVisualSession(), batch_size=8)
    real_encode = encoder.encode

    def encode(views: list[np.ndarray]):
        if any(v.shape[1] == POISON_SIDE for v in views):
            raise RuntimeError("encoder blew up")
        return real_encode(views)

    monkeypatch.setattr(encoder, "encode", encode)
    _, counts = _ingest(settings, folder, encoder)
    assert counts["status"] == {"done": 5, "failed_permanent": 1}
    assert counts["error"] == {"internal_error": 1}


def test_an_error_escaping_the_pipeline_is_isolated_by_halving_the_batch(
    settings: Settings, tmp_path: Path, fake_encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug no per-step guard catches (here: in the decision) must not release the batch forever."""
    folder = _folder(tmp_path / "imgs", n=6)
    real = batch_module.Pipeline.process

    def process(self, claimed, worker=None):
        if any("poison" in c.ref.uri for c in claimed):
            raise KeyError("somewhere deep")
        return real(self, claimed, worker)

    monkeypatch.setattr(batch_module.Pipeline, "process", process)
    _summary, counts = _ingest(settings, folder, fake_encoder)
    assert counts["status"] == {"done": 6, "failed_permanent": 1}
    assert counts["error"] == {"internal_error": 1}


def test_a_store_failure_still_releases_the_batch(
    settings: Settings, tmp_path: Path, fake_encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    folder = _folder(tmp_path / "imgs", n=3, poison=0)

    def process(self, claimed, worker=None):
        raise OperationalError("SELECT 1", {}, ConnectionError("database went away"))

    monkeypatch.setattr(batch_module.Pipeline, "process", process)
    with dedup_service(settings, fake_encoder) as svc:
        svc.enqueue(FolderSource(folder).refs(), "folder")
        with pytest.raises(OperationalError):
            svc.process_queue(batch_size=8)
        assert svc.store.counts()["status"] == {"queued": 3}


def test_a_failing_verification_is_a_decision_without_it(
    settings: Settings, tmp_path: Path, fake_encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Near copies reach geometric verification; when it raises, the cascade decides without it."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    im = textured_image(7, (480, 360))
    im.save(folder / "a.jpg", quality=95)
    im.crop((40, 30, 470, 350)).save(folder / "b.jpg", quality=70)
    calls = []

    def verify(*args, **kwargs):
        calls.append(1)
        raise np.linalg.LinAlgError("singular")

    monkeypatch.setattr(batch_module.local_features, "verify", verify)
    settings.dedup.embed_duplicate = 0.9999  # force the pair into the verification band
    settings.dedup.embed_verify = 0.0
    with dedup_service(settings, fake_encoder) as svc:
        svc.enqueue(FolderSource(folder).refs(), "folder")
        svc.process_queue(batch_size=8)
        counts = svc.store.counts()
        evidence = svc.store.find_by_uri(str((folder / "b.jpg").resolve())).evidence or {}
    assert calls, "the pair never reached verification: the test proves nothing"
    assert counts["status"] == {"done": 2}
    assert counts["decision"] == {"unique": 2}
    assert evidence.get("verification_failed") == 1, evidence
