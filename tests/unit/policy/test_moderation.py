"""The moderation policy on hand-made signals (over the real CLI: tests/e2e/test_cli_moderation.py)."""

from __future__ import annotations

import pytest

from imgaudit.config import ModerationSettings
from imgaudit.policy.moderation import decide
from imgaudit.rules.matcher import TextRules
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
