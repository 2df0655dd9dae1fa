"""Frozen values that travel between the stages of the pipeline, and between the store and the layers above
it (services and entry points name these without importing the store)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import numpy as np

from imgaudit.errors import ImgauditError


class Status(StrEnum):
    """Where an item is in the queue's state machine.

    queued -> processing -> done | failed_retryable | failed_permanent;
    failed_retryable -> queued (retry) ; processing -> queued (lease expired or released).
    """

    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED_RETRYABLE = "failed_retryable"
    FAILED_PERMANENT = "failed_permanent"


class Decision(StrEnum):
    UNIQUE = "unique"
    DUPLICATE = "duplicate"


class Stage(StrEnum):
    """The cascade stage that decided."""

    EXACT_BYTES = "exact_bytes"
    EXACT_PIXELS = "exact_pixels"
    PHASH = "phash"
    EMBEDDING = "embedding"
    VERIFIED = "verified"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class ImageRef:
    """Where an image comes from: a local path, a URL, or a key in an external table, with what the
    source says about it (a title or description, arbitrary fields) for search.

    A source that cannot make a usable reference of one entry (a symlink loop, an undecodable line)
    still yields one, with ``error_reason`` set: the store records it as that entry's permanent failure
    instead of the whole source failing, and nothing tries to fetch it. A path ``uri`` may hold
    surrogate escapes (a file name that is not valid UTF-8, as ``os.fsdecode`` gives it)."""

    uri: str
    kind: str = "path"  # path | url | key
    external_key: str | None = None
    caption: str | None = None
    meta: dict[str, object] | None = field(default=None, compare=False, hash=False)
    error_reason: str | None = None  # set: refused by its source, with error_message saying why
    error_message: str | None = None

    @classmethod
    def refused(cls, uri: str, kind: str, reason: str, message: str) -> ImageRef:
        """An entry its source could not use, to be recorded as failed rather than abort the source."""
        return cls(uri, kind, error_reason=reason, error_message=message)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A safely decoded image, reduced to at most ``max_side`` for analysis."""

    pixels: np.ndarray  # HxWx3 uint8 RGB
    width: int  # original size, before any reduction
    height: int
    format: str
    sha256: str  # of the bytes as received


@dataclass(frozen=True, slots=True)
class DedupSignals:
    """What the dedup cascade needs about one image."""

    sha256: str
    pixel_sha256: str
    phash: int  # 64-bit DCT perceptual hash, as an unsigned int
    embedding: np.ndarray  # L2-normalised float32 copy-detection descriptor
    # Descriptor of the photo found inside a frame (screenshot, padding), when there is one: queried
    # beside the main descriptor, never indexed.
    inner_embedding: np.ndarray | None = None
    inner_box: tuple[int, int, int, int] | None = None


@dataclass(frozen=True, slots=True)
class Match:
    """A candidate original for an image."""

    image_id: int
    score: float
    stage: Stage
    detail: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The cascade's answer for one image."""

    decision: Decision
    stage: Stage
    score: float | None = None
    duplicate_of: int | None = None
    detail: dict[str, float] = field(default_factory=dict)


# -- moderation --------------------------------------------------------------------------------------------

Point = tuple[int, int]


class Moderation(StrEnum):
    """The moderation outcome: confident violations are rejected, the uncertain band goes to people."""

    PASS = "pass"
    REVIEW = "review"
    VIOLATE = "violate"


@dataclass(frozen=True, slots=True)
class OcrLine:
    """One recognised line; ``box`` is its quadrilateral in original-image pixels."""

    text: str
    score: float
    box: tuple[Point, Point, Point, Point]


@dataclass(frozen=True, slots=True)
class Code:
    """A decoded QR code or barcode."""

    format: str
    text: str
    box: tuple[Point, Point, Point, Point]


@dataclass(frozen=True, slots=True)
class Quality:
    """Cheap quality measurements on the analysis-size pixels."""

    sharpness: float  # variance of the Laplacian at a fixed working size (resolution-normalised)
    contrast: float  # standard deviation of the grey levels, 0..128
    dominant_fraction: float  # share of pixels in the most common coarse colour bin
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class ClassScores:
    """Output of the promoted classifier for one image."""

    model: str  # "<name>@v<version>"
    probabilities: dict[str, float]


@dataclass(frozen=True, slots=True)
class ModerationSignals:
    """Every moderation signal of one image; ``None`` means the signal was not computed (switched off)."""

    ocr: tuple[OcrLine, ...] | None = None
    text_found: bool | None = None  # the cheap text gate's answer (OCR runs only when it says yes)
    codes: tuple[Code, ...] | None = None
    nsfw: float | None = None
    skin: float | None = None  # share of skin-coloured pixels (the NSFW model runs above a floor)
    quality: Quality | None = None
    labels: tuple[tuple[str, float], ...] = ()  # top ImageNet labels of the visual encoder
    classes: ClassScores | None = None


@dataclass(frozen=True, slots=True)
class Reason:
    """One piece of evidence behind a moderation verdict."""

    category: str  # contact_info, prohibited, qr_code, nsfw, classifier, blurry, low_quality, ...
    decision: Moderation  # what this reason alone asks for
    message: str  # e.g. "phone 138****5678 (ocr 0.98)"
    score: float | None = None
    evidence: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModerationVerdict:
    decision: Moderation
    reasons: tuple[Reason, ...] = ()


def moderation_signals_json(s: ModerationSignals) -> dict[str, object]:
    """JSON-ready form, as stored and as printed by ``check --json``."""
    q = s.quality
    return {
        "ocr": None
        if s.ocr is None
        else [{"text": ln.text, "score": ln.score, "box": [list(p) for p in ln.box]} for ln in s.ocr],
        "text_found": s.text_found,
        "codes": None
        if s.codes is None
        else [{"format": c.format, "text": c.text, "box": [list(p) for p in c.box]} for c in s.codes],
        "nsfw": s.nsfw,
        "skin": s.skin,
        "quality": None
        if q is None
        else {
            "sharpness": q.sharpness,
            "contrast": q.contrast,
            "dominant_fraction": q.dominant_fraction,
            "width": q.width,
            "height": q.height,
        },
        "labels": [[name, p] for name, p in s.labels],
        "classifier": None
        if s.classes is None
        else {"model": s.classes.model, "probabilities": s.classes.probabilities},
    }


def reasons_json(v: ModerationVerdict) -> list[dict[str, object]]:
    return [
        {
            "category": r.category,
            "decision": r.decision.value,
            "message": r.message,
            "score": r.score,
            "evidence": r.evidence,
        }
        for r in v.reasons
    ]


# -- the queue and the pipeline's outputs ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    """An item the queue handed to one claimer, with the attempt this claim is (1 for the first)."""

    id: int
    ref: ImageRef
    attempts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    """What the pipeline learned about one claimed item."""

    id: int
    signals: DedupSignals
    verdict: Verdict
    format: str
    width: int
    height: int
    indexed: bool
    moderation_signals: ModerationSignals | None = None
    moderation: ModerationVerdict | None = None
    labels: list[list[float]] | None = None  # top ImageNet [index, probability], for search
    colours: list[tuple[str, str, float]] | None = None  # dominant colours (english, chinese, share)
    clip_embedding: np.ndarray | None = None  # image-text embedding, when a CLIP model is configured
    ai_caption: str | None = None  # the remote captioner's description, when enabled


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """A claimed item that could not be processed, and why (``error.retryable`` picks its next state)."""

    id: int
    error: ImgauditError


@dataclass(frozen=True, slots=True)
class IndexChange:
    """One entry of the dedup index log: every worker replays these to keep its index replica current."""

    seq: int
    image_id: int
    op: str  # add | remove
    phash: int | None
    embedding: np.ndarray | None


# -- what the store reports ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lease:
    """The items one claimer holds and has not finished or given back."""

    worker: str
    items: int
    until: datetime  # the latest of their leases


class Enqueued(tuple[int, int]):
    """``(added, skipped)``, so callers unpacking two numbers keep working, plus the entries recorded as
    failed at once (``refusals``: reason -> count): these are in neither number."""

    refusals: Counter[str]

    def __new__(cls, added: int, skipped: int, refusals: Counter[str] | None = None) -> Enqueued:
        self = super().__new__(cls, (added, skipped))
        self.refusals = Counter(refusals or {})
        return self

    @property
    def added(self) -> int:
        return self[0]

    @property
    def skipped(self) -> int:
        return self[1]

    @property
    def refused(self) -> int:
        return sum(self.refusals.values())


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """Everything the store holds about one item."""

    id: int
    source: str
    uri: str  # as stored: a path that is not valid UTF-8 is a ``file:`` URI (see store.encoding)
    kind: str
    external_key: str | None
    status: str
    attempts: int
    error_reason: str | None
    last_error: str | None
    sha256: str | None
    format: str | None
    width: int | None
    height: int | None
    phash: int | None
    decision: str | None
    duplicate_of: int | None
    score: float | None
    stage: str | None
    evidence: dict[str, float] | None
    indexed: bool
    processed_by: str | None
    writeback: str | None
    created_at: datetime
    processed_at: datetime | None
    moderation: str | None = None  # pass | review | violate; None: moderation did not run
    reasons: list[dict[str, object]] | None = None
    moderation_signals: dict[str, object] | None = None
    ocr_text: str | None = None
    caption: str | None = None
    meta: dict[str, object] | None = None
    labels: list[list[float]] | None = None
    colours: list[list[object]] | None = None
    clip_embedding: bytes | None = None
    ai_caption: str | None = None

    def as_dict(self) -> dict[str, object]:
        d = {k: getattr(self, k) for k in self.__slots__}
        d["phash"] = f"{self.phash:016x}" if self.phash is not None else None
        d.pop("clip_embedding", None)  # binary, and only for the search indexes
        for key in ("created_at", "processed_at"):
            d[key] = d[key].isoformat() if d[key] else None
        return d


@dataclass(frozen=True, slots=True)
class Facets:
    """The filterable attributes of an item (search filters many candidates before fetching a page)."""

    id: int
    status: str
    decision: str | None
    moderation: str | None
    source: str
    has_text: bool
    created_at: datetime
    labels: list[list[float]] | None
