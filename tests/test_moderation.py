"""The moderation policy on hand-made signals, and the whole stage end to end over the real CLI."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import segno
from PIL import Image, ImageDraw, ImageFont
from test_cli import cli

from imgaudit.config import ModerationSettings
from imgaudit.policy.moderation import decide
from imgaudit.rules.matcher import TextRules
from imgaudit.testing.fakes import jpeg_bytes, textured_image
from imgaudit.types import ClassScores, Code, Moderation, ModerationSignals, OcrLine, Quality

BOX = ((10, 400), (300, 400), (300, 440), (10, 440))
SHARP = Quality(sharpness=900.0, contrast=40.0, dominant_fraction=0.2, width=800, height=600)


@pytest.fixture(scope="module")
def rules() -> TextRules:
    return TextRules.load()


def verdict(rules: TextRules, cfg: ModerationSettings | None = None, **signals: object):
    return decide(ModerationSignals(**{"quality": SHARP, **signals}), rules, cfg or ModerationSettings())  # type: ignore[arg-type]


def test_nothing_found_passes(rules: TextRules) -> None:
    v = verdict(rules, ocr=(OcrLine("¥199 包邮 正品保证", 0.99, BOX),), codes=(), nsfw=0.01)
    assert v.decision == Moderation.PASS and v.reasons == ()


def test_a_phone_number_read_confidently_violates_with_evidence(rules: TextRules) -> None:
    v = verdict(rules, ocr=(OcrLine("全新正品", 0.99, BOX), OcrLine("电话 138 1234 5678", 0.97, BOX)))
    assert v.decision == Moderation.VIOLATE
    (r,) = v.reasons
    assert r.category == "contact_info" and r.evidence["kind"] == "phone"
    assert r.evidence["value"] == "13812345678" and r.evidence["line"] == "电话 138 1234 5678"
    assert "138****5678" in r.message and "ocr 0.97" in r.message and "box 10,400,300,440" in r.message


def test_a_contact_detail_read_with_low_confidence_goes_to_review(rules: TextRules) -> None:
    v = verdict(rules, ocr=(OcrLine("微信 shop8888", 0.62, BOX),))
    assert v.decision == Moderation.REVIEW
    assert "low OCR confidence" in v.reasons[0].message
    strict = ModerationSettings(ocr_confident=0.5)
    assert verdict(rules, strict, ocr=(OcrLine("微信 shop8888", 0.62, BOX),)).decision == Moderation.VIOLATE


def test_qr_code_decision_is_configurable_and_its_payload_is_scanned(rules: TextRules) -> None:
    qr = (Code("QRCode", "https://shop-abc.cn/u/1", BOX),)
    v = verdict(rules, codes=qr)
    assert v.decision == Moderation.VIOLATE
    assert {r.category for r in v.reasons} == {"qr_code", "contact_info"}
    relaxed = verdict(rules, ModerationSettings(qr_decision="review"), codes=(Code("QRCode", "hello", BOX),))
    assert relaxed.decision == Moderation.REVIEW
    ean = verdict(rules, codes=(Code("EAN13", "6901234567892", BOX),))
    assert ean.decision == Moderation.PASS  # a product barcode is not a violation


@pytest.mark.parametrize(("score", "expected"), [(0.95, "violate"), (0.7, "review"), (0.3, "pass")])
def test_nsfw_thresholds(rules: TextRules, score: float, expected: str) -> None:
    assert verdict(rules, nsfw=score).decision == expected


@pytest.mark.parametrize(
    ("probs", "expected"),
    [
        ({"normal": 0.05, "violate": 0.95}, "violate"),
        ({"normal": 0.35, "violate": 0.65}, "review"),
        ({"normal": 0.8, "violate": 0.2}, "pass"),
        ({"normal": 0.02, "weapons": 0.03, "drugs": 0.95}, "violate"),
    ],
)
def test_classifier_thresholds(rules: TextRules, probs: dict[str, float], expected: str) -> None:
    v = verdict(rules, classes=ClassScores("default@v1", probs))
    assert v.decision == expected
    if expected != "pass":
        assert v.reasons[0].category == "classifier" and "default@v1" in v.reasons[0].message


def test_legacy_point_seven_rule(rules: TextRules) -> None:
    legacy = ModerationSettings(classifier_violate=0.7, classifier_review=0.3)
    assert (
        verdict(rules, legacy, classes=ClassScores("m@v1", {"normal": 0.25, "violate": 0.75})).decision
        == "violate"
    )
    assert (
        verdict(rules, legacy, classes=ClassScores("m@v1", {"normal": 0.6, "violate": 0.4})).decision
        == "review"
    )


@pytest.mark.parametrize(
    ("quality", "category"),
    [
        (Quality(20.0, 40.0, 0.2, 800, 600), "blurry"),
        (Quality(900.0, 1.0, 1.0, 800, 600), "low_quality"),
        (Quality(900.0, 30.0, 0.99, 800, 600), "low_quality"),
        (Quality(900.0, 30.0, 0.2, 50, 40), "low_quality"),
    ],
)
def test_quality_problems_go_to_review(rules: TextRules, quality: Quality, category: str) -> None:
    v = decide(ModerationSignals(quality=quality), rules, ModerationSettings())
    assert v.decision == Moderation.REVIEW and category in {r.category for r in v.reasons}


def test_the_most_severe_reason_wins(rules: TextRules) -> None:
    v = verdict(
        rules, nsfw=0.7, quality=Quality(20.0, 40.0, 0.2, 800, 600), ocr=(OcrLine("QQ 12345678", 0.99, BOX),)
    )
    assert v.decision == Moderation.VIOLATE and len(v.reasons) == 3


def test_switched_off_signals_are_not_evidence(rules: TextRules) -> None:
    assert decide(ModerationSignals(), rules, ModerationSettings()).decision == Moderation.PASS


# -- end to end ------------------------------------------------------------------------------------------


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
