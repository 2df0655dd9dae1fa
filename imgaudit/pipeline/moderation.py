"""The moderation stage of a batch: every signal computed in batches, then the policy per image.

Cheap signals first, expensive ones only where they can matter: quality and codes on the analysis-size
pixels (a few ms), NSFW batched where there is skin, the text detector on the analysis-size pixels, and
recognition (on a larger decode, batched across the batch's lines) only for the images with text.
Labels and the classifier head reuse the visual encoder's outputs of the dedup stage, so they cost
nothing more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from imgaudit.config import Settings
from imgaudit.errors import ImgauditError, MediaError
from imgaudit.media.sandbox import DecodePool
from imgaudit.models.ports import ClassifierSet, NsfwModel, OcrReader
from imgaudit.policy.moderation import decide
from imgaudit.rules.matcher import TextRules
from imgaudit.signals import codes as code_reader
from imgaudit.signals import quality
from imgaudit.signals.labels import top_labels
from imgaudit.types import Code, Decoded, ModerationSignals, ModerationVerdict, OcrLine, Quality

log = logging.getLogger("imgaudit.moderation")


def _took(timings: dict[str, float], stage: str, since: float) -> None:
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - since


@dataclass
class Subject:
    """What the stage needs of one decoded image."""

    decoded: Decoded
    data: bytes  # the original bytes, for a larger decode when text or an unreadable code is seen
    descriptor: np.ndarray
    probabilities: np.ndarray


@dataclass(slots=True)
class _Found:
    """One image's signals as the stage computes them (None: not computed)."""

    quality: Quality | None = None
    skin: float | None = None
    codes: tuple[Code, ...] | None = None
    nsfw: float | None = None
    text_found: bool | None = None
    ocr: tuple[OcrLine, ...] | None = None


@dataclass(frozen=True, slots=True)
class Moderated:
    signals: ModerationSignals
    verdict: ModerationVerdict


class Moderator:
    """Owns the moderation models (loaded once, on first use) and the compiled text rules."""

    def __init__(
        self,
        settings: Settings,
        *,
        ocr: OcrReader | None,
        nsfw: NsfwModel | None,
        rules: TextRules,
        classifiers: ClassifierSet | None,
        pool: ThreadPoolExecutor,
        decoder: DecodePool,
    ) -> None:
        self.settings = settings
        self.cfg = settings.moderation
        self.ocr = ocr if self.cfg.ocr else None
        self.nsfw = nsfw if self.cfg.nsfw else None
        self.rules = rules
        self.classifiers = classifiers if self.cfg.classifier else None
        self.pool = pool
        self.decoder = decoder  # the pipeline's: larger decodes get the same deadline and memory cap

    def _larger(self, s: Subject) -> tuple[np.ndarray, float]:
        """A decode at OCR size (or the analysis pixels when the image is no larger), and its scale."""
        d = s.decoded
        if max(d.width, d.height) <= max(d.pixels.shape[:2]):
            return d.pixels, d.width / d.pixels.shape[1]
        try:
            big = self.decoder.decode(s.data, max_side=self.cfg.ocr_read_side)
        except MediaError:  # it decoded once; keep what we have rather than fail the image
            return d.pixels, d.width / d.pixels.shape[1]
        return big.pixels, d.width / big.pixels.shape[1]

    def run(self, subjects: Sequence[Subject], timings: dict[str, float]) -> list[Moderated | ImgauditError]:
        n = len(subjects)
        if n == 0:
            return []
        cfg = self.cfg
        found = [_Found() for _ in subjects]

        def cheap(i: int) -> None:
            s = subjects[i]
            d = s.decoded
            scale = d.width / d.pixels.shape[1]
            if cfg.quality:
                found[i].quality = quality.measure(d.pixels, d.width, d.height)
            if self.nsfw is not None:
                found[i].skin = quality.skin_fraction(d.pixels)
            if cfg.qr:
                found[i].codes = code_reader.read_codes(
                    d.pixels, barcodes=cfg.barcodes, scale=scale, larger=lambda: self._larger(s)
                )

        t = time.perf_counter()
        list(self.pool.map(cheap, range(n)))
        _took(timings, "quality+codes", t)

        pixels = [s.decoded.pixels for s in subjects]
        try:
            if self.nsfw is not None:
                t = time.perf_counter()
                skinny = [
                    i for i, f in enumerate(found) if f.skin is not None and f.skin >= cfg.nsfw_min_skin
                ]
                for i, score in zip(skinny, self.nsfw.score([pixels[i] for i in skinny]), strict=True):
                    found[i].nsfw = round(score, 4)
                _took(timings, "nsfw", t)
            if self.ocr is not None:
                self._ocr(subjects, found, timings)
            heads = None
            if self.classifiers is not None:
                t = time.perf_counter()
                head = self.classifiers.current()
                if head is not None:
                    heads = head.predict(np.stack([s.descriptor for s in subjects]), pixels)
                _took(timings, "classifier", t)
        except ImgauditError as exc:
            return [exc] * n

        out: list[Moderated | ImgauditError] = []
        for i, (s, f) in enumerate(zip(subjects, found, strict=True)):
            signals = ModerationSignals(
                ocr=f.ocr,
                text_found=f.text_found,
                codes=f.codes,
                nsfw=f.nsfw,
                skin=f.skin,
                quality=f.quality,
                labels=top_labels(s.probabilities),
                classes=heads[i] if heads is not None else None,
            )
            out.append(Moderated(signals, decide(signals, self.rules, cfg)))
        return out

    def _ocr(self, subjects: Sequence[Subject], found: list[_Found], timings: dict[str, float]) -> None:
        assert self.ocr is not None
        t = time.perf_counter()
        boxes = self.ocr.detect([s.decoded.pixels for s in subjects], self.cfg.ocr_det_side)
        _took(timings, "ocr_detect", t)
        t = time.perf_counter()
        texty = [i for i, b in enumerate(boxes) if len(b)]
        for i, b in enumerate(boxes):
            found[i].text_found = bool(len(b))
            found[i].ocr = ()
        if texty:
            # Read where the detector looked, on a larger decode: small print needs the pixels.
            larger = list(self.pool.map(lambda i: self._larger(subjects[i]), texty))
            big_boxes = [
                boxes[i] * (big.shape[1] / subjects[i].decoded.pixels.shape[1])
                for i, (big, _) in zip(texty, larger, strict=True)
            ]
            lines = self.ocr.recognise([p for p, _ in larger], big_boxes, [f for _, f in larger])
            for i, ls, (big, factor) in zip(texty, lines, larger, strict=True):
                found[i].ocr = tuple(ls)
                if self.cfg.qr and not found[i].codes and big is not subjects[i].decoded.pixels:
                    # A small code beside the text may only be readable on the larger decode.
                    found[i].codes = code_reader.read_codes(big, barcodes=self.cfg.barcodes, scale=factor)
        _took(timings, "ocr_read", t)
