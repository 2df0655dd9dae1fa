"""Frozen values that travel between the stages of the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


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
    """Where an image comes from: a local path, a URL, or a key in an external table."""

    uri: str
    kind: str = "path"  # path | url | key
    external_key: str | None = None


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
