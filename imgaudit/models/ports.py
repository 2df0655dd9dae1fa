"""What the pipeline and the services ask of the models: narrow ports, so that only ``imgaudit.bootstrap``
picks the concrete ones (ONNX sessions, rapidocr, remote endpoints) and a twin can stand in for any.

Each port lists only what its callers call; the value types they return are defined here too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from imgaudit.types import ClassScores, OcrLine

DEFAULT_EPOCHS = 5  # fine-tuning defaults, offered by ``TrainOptions``
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True, slots=True)
class VisualOutput:
    descriptors: np.ndarray  # (n, descriptor dim) float32, L2-normalised
    probabilities: np.ndarray  # (n, 1000) float32 ImageNet class probabilities


class ImageEncoder(Protocol):
    """The visual encoder: a copy-detection descriptor and ImageNet probabilities per RGB uint8 image."""

    @property
    def descriptor(self) -> str:
        """Names the descriptor space; indexes and heads built for another space are never mixed."""
        ...

    @property
    def input_size(self) -> int: ...

    @property
    def batch_size(self) -> int: ...

    def encode(self, images: Sequence[np.ndarray]) -> VisualOutput: ...


class OcrReader(Protocol):
    """Text detection on small pixels, then recognition of the detected boxes on larger ones."""

    def detect(self, images: Sequence[np.ndarray], side: int) -> list[np.ndarray]:
        """(N, 4, 2) text quadrilaterals per image, in its own pixels, detected at most ``side`` px."""
        ...

    def recognise(
        self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], scales: Sequence[float]
    ) -> list[list[OcrLine]]:
        """The lines in ``boxes[i]`` of image ``i``, their points scaled by ``scales[i]``."""
        ...


class NsfwModel(Protocol):
    def score(self, images: Sequence[np.ndarray]) -> list[float]:
        """The NSFW probability of each image."""
        ...


class ClassifierHead(Protocol):
    """A loaded classifier head; each kind reads the descriptors or the pixels of the batch."""

    @property
    def ref(self) -> str: ...

    def probabilities(self, descriptors: np.ndarray | None, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """(n, classes) float32, each row summing to 1."""
        ...

    def predict(self, descriptors: np.ndarray | None, pixels: Sequence[np.ndarray]) -> list[ClassScores]: ...


class ClassifierSet(Protocol):
    """The promoted head of a long-running process, followed as promotions replace it."""

    def current(self) -> ClassifierHead | None:
        """The head in use now, or None when there is none (or it cannot be used)."""
        ...


@runtime_checkable
class TextEncoder(Protocol):
    """Embeds text into a shared space; every row is L2-normalised, so a dot product is a cosine."""

    @property
    def name(self) -> str:
        """Identifies the space (model + version); caches of embeddings are keyed by it."""
        ...

    @property
    def dim(self) -> int: ...

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32 embeddings of search queries."""
        ...

    def passages(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32 embeddings of texts that describe stored items."""
        ...


class ImageTextEncoder(Protocol):
    """Images and texts into one space (ClipEncoder, RemoteEmbedder): rows L2-normalised float32."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


class DerivedModel(Protocol):
    """A model file derived once into the cache directory (the visual encoder's ONNX export)."""

    @property
    def path(self) -> Path: ...

    def ensure(self) -> bool:
        """Build the file when it is missing; True when it did."""
        ...


@dataclass
class FinetuneReport:
    seconds: float
    export_seconds: float
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    parameters: dict[str, Any] = field(default_factory=dict)


class HeadModels(Protocol):
    """What training and the head registry need of the classifier models: heads built from fitted weights
    or loaded from a saved version (as workers load them), and the network fine-tuned and exported."""

    def linear(self, meta: dict[str, Any], weights: np.ndarray, bias: np.ndarray) -> ClassifierHead: ...

    def load(self, vdir: Path, *, encoder_id: str | None) -> ClassifierHead:
        """The saved head in ``vdir``, refused (ModelError) if it was trained for another descriptor
        space than ``encoder_id`` (None: not checked)."""
        ...

    def training_image(self, image: np.ndarray, input_size: int) -> np.ndarray:
        """``image`` shrunk to what fine-tuning keeps in memory."""
        ...

    def finetune(
        self,
        images: Sequence[np.ndarray],
        labels: np.ndarray,
        n_classes: int,
        dest: Path,
        *,
        input_size: int,
        epochs: int,
        batch_size: int,
        class_weights: np.ndarray,
        seed: int,
        progress: Callable[[int], None] | None,
    ) -> FinetuneReport:
        """Fine-tune on ``images`` / ``labels`` and write the ONNX model at ``dest``."""
        ...
