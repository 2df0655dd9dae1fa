"""Moderation policy: signals in, ``pass / review / violate`` out, with one reason per piece of evidence.

Every reason says what it alone asks for; the verdict is the most severe of them. Confident findings
violate; uncertain ones (an ambiguous classifier score, a contact detail read from a low-confidence OCR
line, a mid NSFW score, an unusable photo) go to people. Thresholds are per category (settings
``moderation.*``); the legacy "classifier confidence below 0.7 goes to review" rule is
``classifier_violate = 0.7`` with ``classifier_review = 0.3``.
"""

from __future__ import annotations

from collections.abc import Sequence

from imgaudit.config import ModerationSettings
from imgaudit.rules.matcher import TextHit, TextRules
from imgaudit.types import Moderation, ModerationSignals, ModerationVerdict, Reason

SEVERITY = {Moderation.PASS: 0, Moderation.REVIEW: 1, Moderation.VIOLATE: 2}
QR_FORMATS = {"QRCode", "MicroQRCode"}


def most_severe(decisions: Sequence[Moderation]) -> Moderation:
    return max(decisions, key=SEVERITY.__getitem__, default=Moderation.PASS)


def _text_reasons(
    signals: ModerationSignals, hits: Sequence[TextHit], cfg: ModerationSettings
) -> list[Reason]:
    lines = signals.ocr or ()
    out = []
    for hit in hits:
        decision = Moderation(hit.severity)
        line = lines[hit.line] if 0 <= hit.line < len(lines) else None
        detail = []
        evidence: dict[str, object] = {"kind": hit.kind, "value": hit.value, "text": hit.text}
        if line is not None:
            detail.append(f"ocr {line.score:.2f}")
            evidence.update(ocr_score=line.score, box=[list(p) for p in line.box], line=line.text)
            if decision == Moderation.VIOLATE and line.score < cfg.ocr_confident:
                decision = Moderation.REVIEW  # a misread digit must not reject a listing on its own
                detail.append("low OCR confidence")
            x0 = min(p[0] for p in line.box)
            y0 = min(p[1] for p in line.box)
            x1 = max(p[0] for p in line.box)
            y1 = max(p[1] for p in line.box)
            detail.append(f"box {x0},{y0},{x1},{y1}")
        else:
            detail.append("in a QR code")
        out.append(
            Reason(
                hit.category,
                decision,
                f"{hit.kind} {hit.masked} ({', '.join(detail)})",
                line.score if line is not None else None,
                evidence,
            )
        )
    return out


def decide(signals: ModerationSignals, rules: TextRules, cfg: ModerationSettings) -> ModerationVerdict:
    reasons: list[Reason] = []
    if signals.ocr:
        reasons += _text_reasons(signals, rules.scan([line.text for line in signals.ocr]), cfg)
    for code in signals.codes or ():
        if code.format in QR_FORMATS or code.format in {"DataMatrix", "Aztec"}:
            reasons.append(
                Reason(
                    "qr_code",
                    Moderation(cfg.qr_decision),
                    f"{code.format} {code.text[:80]}",
                    None,
                    {"kind": code.format, "value": code.text, "box": [list(p) for p in code.box]},
                )
            )
        # What a code says is text too: a contact detail in a payload is reported as such.
        for hit in rules.scan([code.text]):
            reasons += _text_reasons(ModerationSignals(), [hit], cfg)
    if signals.nsfw is not None:
        if signals.nsfw >= cfg.nsfw_violate:
            reasons.append(Reason("nsfw", Moderation.VIOLATE, f"nsfw {signals.nsfw:.2f}", signals.nsfw))
        elif signals.nsfw >= cfg.nsfw_review:
            reasons.append(Reason("nsfw", Moderation.REVIEW, f"nsfw {signals.nsfw:.2f}", signals.nsfw))
    if signals.classes is not None:
        reasons += _classifier_reasons(signals, cfg)
    if signals.quality is not None:
        reasons += _quality_reasons(signals, cfg)
    return ModerationVerdict(most_severe([r.decision for r in reasons]), tuple(reasons))


def _classifier_reasons(signals: ModerationSignals, cfg: ModerationSettings) -> list[Reason]:
    assert signals.classes is not None
    passing = {c.lower() for c in cfg.pass_classes}
    bad = {c: p for c, p in signals.classes.probabilities.items() if c.lower() not in passing}
    if not bad:
        return []
    label, p = max(bad.items(), key=lambda kv: kv[1])
    if p >= cfg.classifier_violate:
        decision = Moderation.VIOLATE
    elif p >= cfg.classifier_review:
        decision = Moderation.REVIEW
    else:
        return []
    return [
        Reason(
            "classifier",
            decision,
            f"classifier {label} {p:.2f} ({signals.classes.model})",
            p,
            {"kind": label, "model": signals.classes.model, "probabilities": signals.classes.probabilities},
        )
    ]


def _quality_reasons(signals: ModerationSignals, cfg: ModerationSettings) -> list[Reason]:
    q = signals.quality
    assert q is not None
    out = []
    if min(q.width, q.height) < cfg.min_side:
        out.append(Reason("low_quality", Moderation.REVIEW, f"too small ({q.width}x{q.height})", None))
    if q.contrast < cfg.min_contrast:
        out.append(
            Reason("low_quality", Moderation.REVIEW, f"near blank (contrast {q.contrast:.1f})", q.contrast)
        )
    elif q.dominant_fraction > cfg.max_dominant_fraction:
        out.append(
            Reason(
                "low_quality",
                Moderation.REVIEW,
                f"mostly one colour ({q.dominant_fraction:.0%})",
                q.dominant_fraction,
            )
        )
    elif q.sharpness < cfg.min_sharpness:
        out.append(Reason("blurry", Moderation.REVIEW, f"blurry (sharpness {q.sharpness:.0f})", q.sharpness))
    return out
