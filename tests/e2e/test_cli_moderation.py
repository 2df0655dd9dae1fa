"""Moderation end to end over the real CLI: ingest, explain and check on generated listing images."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import segno
from PIL import Image, ImageDraw, ImageFont
from real_cli import cli

from imgaudit.testing.fakes import jpeg_bytes, textured_image


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size)


def make_listing_images(folder: Path) -> None:
    """A phone number banner, a QR code, a clean photo, a blurred photo, and a price banner."""
    folder.mkdir(parents=True)
    base = textured_image(246, (800, 600)).convert("RGB")
    phone = base.copy()
    draw = ImageDraw.Draw(phone)
    draw.rectangle((20, 500, 780, 580), fill=(255, 255, 255))
    draw.text((40, 515), "Call 138-1234-5678 now", font=_font(44), fill=(200, 0, 0))
    (folder / "phone.jpg").write_bytes(jpeg_bytes(phone, quality=90))

    qr = textured_image(126, (800, 600)).convert("RGB")
    buf = io.BytesIO()
    segno.make("weixin://wxpay/bizpayurl?pr=Zx81", error="m").save(buf, kind="png", scale=5, border=2)
    qr.paste(Image.open(buf).convert("RGB"), (500, 80))
    (folder / "qr.jpg").write_bytes(jpeg_bytes(qr, quality=90))

    (folder / "clean.jpg").write_bytes(jpeg_bytes(textured_image(98, (800, 600)), quality=90))
    blurred = cv2.GaussianBlur(np.asarray(textured_image(114, (800, 600)).convert("RGB")), (0, 0), 8)
    (folder / "blurred.jpg").write_bytes(jpeg_bytes(Image.fromarray(blurred), quality=90))

    price = textured_image(278, (800, 600)).convert("RGB")
    draw = ImageDraw.Draw(price)
    draw.rectangle((20, 500, 780, 580), fill=(255, 255, 255))
    draw.text((40, 515), "SALE $19.99 size XL 500ml", font=_font(44), fill=(0, 0, 0))
    (folder / "price.jpg").write_bytes(jpeg_bytes(price, quality=90))


@pytest.fixture(scope="module")
def listing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("moderation")
    make_listing_images(root / "imgs")
    data = root / "data"
    cli("ingest", root / "imgs", "--json", data_dir=data, cwd=root)
    return root, data


def test_ingest_stores_verdicts_and_explain_shows_the_evidence(listing: tuple[Path, Path]) -> None:
    root, data = listing
    got = {}
    for name in ("phone", "qr", "clean", "blurred", "price"):
        (row,) = cli("explain", str(root / "imgs" / f"{name}.jpg"), "--json", data_dir=data, cwd=root).rows
        got[name] = row
    assert got["phone"]["moderation"] == "violate"
    (phone,) = [r for r in got["phone"]["reasons"] if r["category"] == "contact_info"]
    assert phone["evidence"]["kind"] == "phone" and "138****5678" in phone["message"]
    assert "138-1234-5678" in got["phone"]["ocr_text"]
    assert got["qr"]["moderation"] == "violate"
    assert any(r["category"] == "qr_code" and "weixin://" in r["message"] for r in got["qr"]["reasons"])
    assert got["clean"]["moderation"] == "pass" and got["clean"]["moderation_signals"]["text_found"] is False
    assert got["blurred"]["moderation"] == "review"
    assert [r["category"] for r in got["blurred"]["reasons"]] == ["blurry"]
    assert got["price"]["moderation"] == "pass", got["price"]["reasons"]
    assert "19.99" in (got["price"]["ocr_text"] or "")

    text = cli("explain", str(root / "imgs" / "phone.jpg"), data_dir=data, cwd=root).stdout
    assert "moderation: violate" in text and "contact_info: phone 138****5678" in text
    assert "ocr 0." in text and "labels:" in text and "nsfw" in text

    (stats,) = cli("stats", "--json", data_dir=data, cwd=root).rows
    assert stats["moderation"] == {"violate": 2, "review": 1, "pass": 2}


def test_check_json_has_the_moderation_verdict_and_signals(listing: tuple[Path, Path]) -> None:
    root, data = listing
    (row,) = cli("check", root / "imgs" / "qr.jpg", "--json", data_dir=data, cwd=root).rows
    assert row["decision"] == "duplicate"  # it was ingested
    assert row["moderation"] == "violate"
    (code,) = row["signals"]["codes"]
    assert code["format"] == "QRCode" and code["text"] == "weixin://wxpay/bizpayurl?pr=Zx81"
    assert row["signals"]["quality"]["width"] == 800 and row["signals"]["labels"]


def test_moderation_can_be_switched_off(listing: tuple[Path, Path]) -> None:
    root, data = listing
    (row,) = cli(
        "check",
        root / "imgs" / "phone.jpg",
        "--json",
        data_dir=data,
        cwd=root,
        IMGAUDIT_MODERATION__ENABLED="false",
    ).rows
    assert "moderation" not in row and row["decision"] == "duplicate"


def test_a_failing_moderation_model_fails_the_batch_cleanly(
    settings, fake_encoder, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A model error during moderation (which runs beside verification) is a recorded, retryable failure
    for the batch's images; nothing is half-written and the next batch is unaffected."""
    from imgaudit.bootstrap import dedup_service
    from imgaudit.errors import ModelError
    from imgaudit.sources.files import FolderSource

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, seed in enumerate((278, 371)):
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(textured_image(seed, (320, 240))))
    with dedup_service(settings, fake_encoder) as svc:
        assert svc.pipeline.moderator is not None

        def broken(*_a: object, **_k: object) -> object:
            raise ModelError("the OCR model file is damaged")

        # The OCR engine is shared by the whole process: patched for this test only.
        monkeypatch.setattr(svc.pipeline.moderator.ocr, "detect", broken)
        svc.enqueue(FolderSource(folder).refs(), "folder")
        summary = svc.process_queue(limit=2)
        assert summary.failed == 2 and summary.errors == {"model": 2}
        assert svc.store.counts()["status"] == {"failed_retryable": 2}
