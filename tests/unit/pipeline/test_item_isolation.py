"""Whatever one image makes go wrong is that image's recorded failure, never its batch's or the process's."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dbs import db_env
from PIL import Image

from imgaudit.bootstrap import dedup_service
from imgaudit.config import Settings
from imgaudit.models.visual import VisualEncoder
from imgaudit.pipeline import batch as batch_module
from imgaudit.sources.files import FolderSource
from imgaudit.testing.fakes import FakeVisualSession, textured_image

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


# The case: two 1x1 PNGs that differ by one level, and strips one pixel wide or high.
TINY = {
    "a1.png": ((1, 1), (10, 20, 30)),
    "b1.png": ((1, 1), (10, 20, 31)),
    "strip_v800.png": ((1, 800), (200, 20, 30)),
    "strip_v200.png": ((1, 200), (200, 40, 30)),
    "strip_h800.png": ((800, 1), (20, 200, 30)),
    "strip_h200.png": ((200, 1), (40, 200, 30)),
}


def _tiny_images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (size, colour) in TINY.items():
        Image.new("RGB", size, colour).save(folder / name)
    return folder


def _kind(shape: tuple[int, ...]) -> str | None:
    h, w = shape[:2]
    return "1x1" if h == w == 1 else "1 wide" if w == 1 else "1 high" if h == 1 else None


def test_tiny_images_do_not_break_their_batch(
    settings: Settings, tmp_path: Path, fake_encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two 1x1 PNGs (and thin strips) used to raise from ORB and release the batch on every rerun.

    Geometric verification is where they broke, so every pair is sent there: nothing is a duplicate
    outright by descriptor (the fake encoder's cosines between these images stay below 0.9999, the two
    1x1 images' is 0.9996), and pHash, which cannot be switched off (its distance is at least 0) and
    finds all the flat images alike, is kept out by emptying the hash neighbours of every lookup."""
    folder = _tiny_images(_folder(tmp_path / "imgs", poison=0))
    n = 5 + len(TINY)
    settings.dedup.embed_duplicate = 0.9999
    settings.dedup.embed_verify = 0.0
    real_lookups = batch_module.Pipeline.lookups

    def lookups(self, *args, **kwargs):
        return dataclasses.replace(real_lookups(self, *args, **kwargs), hash_neighbours=[])

    monkeypatch.setattr(batch_module.Pipeline, "lookups", lookups)
    real_verify = batch_module.local_features.verify
    verified: list[str] = []

    def verify(views, candidate, features=None, *args, **kwargs):
        verified.extend(k for k in (_kind(np.shape(v)) for v in views) if k)
        return real_verify(views, candidate, features, *args, **kwargs)

    monkeypatch.setattr(batch_module.local_features, "verify", verify)
    with dedup_service(settings, fake_encoder) as svc:
        svc.enqueue(FolderSource(folder).refs(), "folder")
        summary = svc.process_queue(batch_size=16)
        counts = svc.store.counts()
        tiny = [svc.store.find_by_uri(str((folder / name).resolve())) for name in TINY]
    assert {"1x1", "1 wide", "1 high"} <= set(verified), f"not every tiny kind was verified: {verified}"
    assert summary.processed == n and summary.failed == 0, summary.errors
    assert counts["status"] == {"done": n}, counts
    assert counts["decision"] == {"unique": n}, counts
    for record in tiny:  # too small to verify is not a failed verification
        assert record is not None and "verification_failed" not in (record.evidence or {}), record


def _cli(*args: str | Path, data_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real ``imgaudit`` in a subprocess, on ``data_dir`` only (as in tests/e2e/test_cli.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGAUDIT_")}
    env.update({**db_env(data_dir), "IMGAUDIT_DATA_DIR": str(data_dir)})
    proc = subprocess.run(
        [sys.executable, "-m", "imgaudit.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    detail = f"imgaudit {' '.join(map(str, args))}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, detail
    assert "Traceback" not in proc.stderr, detail
    return proc


@pytest.mark.model
def test_tiny_images_through_the_real_worker(tmp_path: Path) -> None:
    """The issue as reported: enqueue the folder, ``worker run --once`` with the real model; every image
    ends done (or failed for a recorded reason), none is left queued or processing."""
    folder = _tiny_images(tmp_path / "imgs")
    data = tmp_path / "data"
    _cli("enqueue", folder, "--json", data_dir=data, cwd=tmp_path)
    _cli("worker", "run", "--once", "--json", data_dir=data, cwd=tmp_path)
    stats = json.loads(_cli("stats", "--json", data_dir=data, cwd=tmp_path).stdout)
    status, errors = stats["status"], stats["error"]
    assert stats["total"] == len(TINY) and stats["queue_depth"] == 0, stats
    assert set(status) <= {"done", "failed_permanent"}, status
    assert status.get("done", 0) + status.get("failed_permanent", 0) == len(TINY), status
    assert sum(errors.values()) == status.get("failed_permanent", 0), stats  # every failure has a reason


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


def _cheap_moderation(settings: Settings) -> None:
    """Moderation on, without the models that load on first use (OCR, NSFW); quality and codes stay."""
    settings.moderation.enabled = True
    settings.moderation.ocr = False
    settings.moderation.nsfw = False


def test_moderation_that_raises_for_one_image_fails_only_that_image(
    settings: Settings, tmp_path: Path, fake_encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The moderator runs on the whole batch; when that call raises, each image is moderated alone."""
    _cheap_moderation(settings)
    folder = _folder(tmp_path / "imgs")
    calls: list[tuple[int, bool]] = []  # (subjects, poison among them)
    with dedup_service(settings, fake_encoder) as svc:
        moderator = svc.pipeline.moderator
        assert moderator is not None, "moderation is off: the test proves nothing"
        real_run = moderator.run

        def run(subjects, timings):
            poisoned = any(s.decoded.width == POISON_SIDE for s in subjects)
            calls.append((len(subjects), poisoned))
            if poisoned:
                raise RuntimeError("moderation blew up")
            return real_run(subjects, timings)

        monkeypatch.setattr(moderator, "run", run)
        svc.enqueue(FolderSource(folder).refs(), "folder")
        svc.process_queue(batch_size=8)
        counts = svc.store.counts()
        poison = svc.store.find_by_uri(str((folder / "poison0.png").resolve()))
    assert calls[0] == (6, True), calls  # the batch call, then one call per image
    assert sorted(calls[1:]) == [(1, False)] * 5 + [(1, True)], calls
    assert counts["status"] == {"done": 5, "failed_permanent": 1}
    assert counts["error"] == {"internal_error": 1}
    assert poison is not None and poison.error_reason == "internal_error", poison
    assert (poison.last_error or "").startswith("moderation failed: RuntimeError"), poison.last_error
    assert sum(counts["moderation"].values()) == 5, counts  # every other image has its verdict


def test_optional_enrichments_that_raise_fail_no_image(
    settings: Settings, tmp_path: Path, fake_encoder
) -> None:
    """A caption service (or image-text model) that raises leaves the batch without captions, not failed."""
    _cheap_moderation(settings)
    folder = _folder(tmp_path / "imgs", poison=0)
    called: list[str] = []

    class Broken:
        def caption_many(self, images):
            called.append("caption_many")
            raise RuntimeError("caption service down")

        def encode_images(self, images):
            called.append("encode_images")
            raise RuntimeError("image-text model broken")

    with dedup_service(settings, fake_encoder) as svc:
        svc.pipeline.captioner = svc.pipeline.image_text = Broken()  # type: ignore[assignment]
        svc.enqueue(FolderSource(folder).refs(), "folder")
        summary = svc.process_queue(batch_size=8)
        counts = svc.store.counts()
        records = [svc.store.get(i) for i in range(1, 6)]
    assert summary.failed == 0 and counts["status"] == {"done": 5}, counts
    assert sorted(called) == ["caption_many", "encode_images"], called
    assert sum(counts["moderation"].values()) == 5, counts
    assert all(r is not None and r.ai_caption is None and r.clip_embedding is None for r in records)


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


def test_a_value_the_database_refuses_fails_only_its_item(
    settings: Settings, tmp_path: Path, fake_encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DataError while writing the batch is some item's doing: isolate it, do not release forever."""
    from sqlalchemy.exc import DataError

    from imgaudit.store.sql import decisions as repo

    folder = _folder(tmp_path / "imgs", n=4)
    real_finish = repo.SqlDecisionTx.finish

    def finish(self, completions, failures, max_attempts, worker=None):
        if any(c.width == POISON_SIDE for c in completions):
            raise DataError("UPDATE images", {}, ValueError("value too long"))
        return real_finish(self, completions, failures, max_attempts, worker)

    monkeypatch.setattr(repo.SqlDecisionTx, "finish", finish)
    _, counts = _ingest(settings, folder, fake_encoder)
    assert counts["status"] == {"done": 4, "failed_permanent": 1}
    assert counts["error"] == {"internal_error": 1}
