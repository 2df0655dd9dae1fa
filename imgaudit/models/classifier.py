"""Trained classifier heads: loading, inference, and the hub that follows promotions without a restart.

A head lives in the registry (``imgaudit.models.classifier_registry``): a ``linear`` head keeps
``head.npz`` (W, b with the feature scaling folded in) and reads the shared encoder's descriptors, so it
costs one small matrix product per batch; a ``finetuned`` head keeps ``model.onnx`` (a whole fine-tuned
EfficientNet-Lite0 with a softmax) and reads pixels.

Only numpy here; ONNX Runtime comes in through ``imgaudit.models.session``.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from imgaudit.errors import ImgauditError, ModelError
from imgaudit.models.classifier_registry import (
    ACTIVE_FILE,
    HEAD_FILE,
    ONNX_FILE,
    model_ref,
    parse_ref,
    read_active,
    read_meta,
    version_dir,
)
from imgaudit.models.session import ModelSession, OrtSession
from imgaudit.models.visual import DESCRIPTOR_DIM, INPUT_MEAN, INPUT_STD, softmax
from imgaudit.types import ClassScores

log = logging.getLogger("imgaudit.classifier")

# -- heads -----------------------------------------------------------------------------------------------


def square_input(image: np.ndarray, size: int) -> np.ndarray:
    """Exactly ``VisualEncoder.preprocess`` with centre framing (a test holds them together): a fine-tuned
    head must see at inference what the encoder it was trained from sees."""
    h, w = image.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    resized = cv2.resize(image[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)
    return ((resized.astype(np.float32) - INPUT_MEAN) / INPUT_STD).transpose(2, 0, 1)


class Head(ABC):
    """A loaded head. ``predict`` gets both the batch's descriptors and pixels; each kind uses its own."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.name: str = str(meta["name"])
        self.version: int = int(meta["version"])
        self.kind: str = str(meta["kind"])
        self.classes: list[str] = [str(c) for c in meta["classes"]]

    @property
    def ref(self) -> str:
        return model_ref(self.name, self.version)

    @abstractmethod
    def probabilities(self, descriptors: np.ndarray | None, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """(n, len(classes)) float32, each row summing to 1."""

    def predict(self, descriptors: np.ndarray | None, pixels: Sequence[np.ndarray]) -> list[ClassScores]:
        probs = self.probabilities(descriptors, pixels)
        return [
            ClassScores(self.ref, {c: round(float(p), 6) for c, p in zip(self.classes, row, strict=True)})
            for row in probs
        ]


class LinearHead(Head):
    """Softmax regression on the encoder's descriptor: ``softmax(x @ W.T + b)``."""

    def __init__(self, meta: dict[str, Any], weights: np.ndarray, bias: np.ndarray) -> None:
        super().__init__(meta)
        k = len(self.classes)
        if weights.shape != (k, DESCRIPTOR_DIM) or bias.shape != (k,):
            raise ModelError(
                f"{self.ref}: weights {weights.shape} / bias {bias.shape} do not fit "
                f"{k} classes over {DESCRIPTOR_DIM}-d descriptors"
            )
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)

    def probabilities(self, descriptors: np.ndarray | None, pixels: Sequence[np.ndarray]) -> np.ndarray:
        if descriptors is None:
            raise ModelError(f"{self.ref} is a linear head: it needs the encoder's descriptors")
        x = np.asarray(descriptors, dtype=np.float32).reshape(-1, DESCRIPTOR_DIM)
        return softmax(x @ self.weights.T + self.bias).astype(np.float32)


class FinetunedHead(Head):
    """A fine-tuned network run on the pixels (its own ONNX file; the output is already probabilities)."""

    def __init__(self, meta: dict[str, Any], session: ModelSession, batch_size: int = 32) -> None:
        super().__init__(meta)
        self.session = session
        self.input_size = int(meta.get("parameters", {}).get("input_size", 224))
        self.batch_size = batch_size

    def probabilities(self, descriptors: np.ndarray | None, pixels: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for start in range(0, len(pixels), self.batch_size):
            batch = np.stack(
                [square_input(p, self.input_size) for p in pixels[start : start + self.batch_size]]
            )
            out.append(self.session.run({"pixels": np.ascontiguousarray(batch)})["probabilities"])
        if not out:
            return np.zeros((0, len(self.classes)), np.float32)
        probs = np.concatenate(out).astype(np.float32)
        if probs.shape[1] != len(self.classes):
            raise ModelError(
                f"{self.ref}: the network gives {probs.shape[1]} classes, meta.json names {len(self.classes)}"
            )
        return probs


def load_head(vdir: Path, *, encoder_id: str | None, threads: int = 0, batch_size: int = 32) -> Head:
    """Load one saved head, refusing (ModelError) what would give wrong answers.

    A linear head whose descriptors came from another encoder configuration (another input size,
    pooling or framing: see ``VisualEncoder.descriptor``) would read a different vector space and return
    confident nonsense, so it is refused. A fine-tuned head carries its own network and preprocessing, so
    the running encoder does not matter to it. ``encoder_id=None`` skips the check (inspection only).
    """
    vdir = Path(vdir)
    meta = read_meta(vdir)
    ref = model_ref(str(meta.get("name")), int(meta.get("version", 0)))
    if meta["kind"] == "linear":
        trained_on = meta.get("encoder")
        if encoder_id is not None and trained_on != encoder_id:
            raise ModelError(
                f"classifier {ref} was trained on {trained_on} descriptors but the running encoder makes "
                f"{encoder_id}: retrain it (imgaudit train) or promote a head trained with these settings"
            )
        try:
            with np.load(vdir / HEAD_FILE) as npz:
                weights, bias = npz["W"], npz["b"]
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"classifier {ref}: unreadable {HEAD_FILE}: {exc}") from exc
        return LinearHead(meta, weights, bias)
    path = vdir / ONNX_FILE
    if not path.is_file():
        raise ModelError(f"classifier {ref}: {ONNX_FILE} missing")
    session = OrtSession(path, threads=threads)
    session.input_names()  # load now: a broken file is refused here, not in the middle of a batch
    return FinetunedHead(meta, session, batch_size=batch_size)


# -- the promoted head, followed -------------------------------------------------------------------------


class ClassifierHub:
    """The promoted head for a long-running process, reloaded when ``active.json`` changes.

    ``current()`` is called once per batch; it looks at the file at most every ``reload_every`` seconds
    (one ``stat``), and only reads and loads when the file was replaced. A head that cannot be used (its
    files are broken, or it was trained for another encoder) is logged once and ``current()`` returns None
    until the next promotion: the pipeline carries on without a classifier rather than failing every image,
    and never silently keeps applying a head the operator has replaced.
    """

    def __init__(
        self,
        root: Path,
        encoder_id: str,
        *,
        reload_every: float = 5.0,
        threads: int = 0,
        batch_size: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = Path(root)
        self.encoder_id = encoder_id
        self.reload_every = reload_every
        self.threads = threads
        self.batch_size = batch_size
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._signature: tuple[int, int, int] | None = None
        self._head: Head | None = None
        self.error: str | None = None  # why the promoted head is not in use, for status displays

    def current(self) -> Head | None:
        with self._lock:
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= self.reload_every:
                self._checked_at = now
                self._refresh()
            return self._head

    def _refresh(self) -> None:
        path = self.root / ACTIVE_FILE
        try:
            st = path.stat()
            signature: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            signature = None
        if signature == self._signature:
            return
        self._signature = signature
        if signature is None:
            if self._head is not None:
                log.info("classifier %s retired (no %s)", self._head.ref, ACTIVE_FILE)
            self._head, self.error = None, None
            return
        try:
            ref = read_active(self.root).get("active")
            if not ref:
                self._head, self.error = None, None
                return
            if self._head is not None and self._head.ref == ref:
                return
            name, version = parse_ref(str(ref))
            if version is None:
                raise ModelError(f"{ACTIVE_FILE} names {ref!r} without a version")
            head = load_head(
                version_dir(self.root, name, version),
                encoder_id=self.encoder_id,
                threads=self.threads,
                batch_size=self.batch_size,
            )
        except (ImgauditError, OSError) as exc:
            message = exc.message if isinstance(exc, ImgauditError) else str(exc)
            log.error("classifier not loaded, continuing without one: %s", message)
            self._head, self.error = None, message
            return
        log.info("classifier %s loaded (%s, classes %s)", head.ref, head.kind, ", ".join(head.classes))
        self._head, self.error = head, None
