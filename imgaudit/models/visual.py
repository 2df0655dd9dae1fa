"""The visual encoder: EfficientNet-Lite0 on ONNX Runtime, turned into a copy-detection descriptor.

Descriptor design (measured with ``bench/dedup.py``, see README):
- the last 1280-channel feature map, GeM-pooled (p=3): it weights the strongest local responses and is
  more robust to overlays and crops than mean pooling;
- computed on the image and its mirror and summed, so a flipped copy has the same descriptor;
- L2-normalised, so the inner product is the cosine.
The ImageNet logits come out of the same call, for labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict, Unpack

import cv2
import numpy as np

from imgaudit.models.ports import VisualOutput
from imgaudit.models.session import ModelSession, OrtSession

# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128 (TF-Lite convention): checked on
# scikit-image's photos, where it gives higher top-1 confidence than ImageNet mean/std.
INPUT_MEAN = 127.0
INPUT_STD = 128.0
GEM_P = 3.0
DESCRIPTOR_DIM = 1280


def gem(features: np.ndarray, p: float = GEM_P, eps: float = 1e-6) -> np.ndarray:
    """Generalised-mean pooling over the spatial axes of an (n, c, h, w) map."""
    return (np.clip(features, eps, None) ** p).mean(axis=(2, 3)) ** (1.0 / p)


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class EncoderOptions(TypedDict, total=False):
    """``VisualEncoder``'s keyword options, as ``from_cache`` passes them through."""

    input_size: int
    batch_size: int
    flip_invariant: bool
    pooling: str
    framing: str


class VisualEncoder:
    """Batched descriptor + label probabilities for RGB uint8 images. Load once per process."""

    def __init__(
        self,
        session: ModelSession,
        *,
        input_size: int = 224,
        batch_size: int = 32,
        flip_invariant: bool = False,
        pooling: str = "gem",
        framing: str = "center",
    ) -> None:
        self.session = session
        self.input_size = input_size
        self.batch_size = batch_size
        self.flip_invariant = flip_invariant
        self.pooling = pooling
        self.framing = framing

    @classmethod
    def from_cache(
        cls, cache_dir: Path, *, threads: int = 0, **options: Unpack[EncoderOptions]
    ) -> VisualEncoder:
        """Use the ONNX export in the cache directory, exporting it first if it is missing."""
        from imgaudit.models.export import VISUAL_MODEL_NAME, export_efficientnet_lite0

        path = Path(cache_dir) / VISUAL_MODEL_NAME
        if not path.is_file():
            export_efficientnet_lite0(path)
        return cls(OrtSession(path, threads=threads), **options)

    @property
    def descriptor(self) -> str:
        """Names the descriptor space; indexes built for another space are rebuilt, never mixed."""
        flip = "flip" if self.flip_invariant else "noflip"
        return f"efficientnet-lite0/{self.pooling}/{flip}/{self.framing}/{self.input_size}/v1"

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """Whole image squashed to the input square (crops would hide the borders where copies differ
        least often, but also drop content; measured: whole image wins on crops and framing)."""
        s = self.input_size
        if self.framing == "center":
            h, w = image.shape[:2]
            side = min(h, w)
            y, x = (h - side) // 2, (w - side) // 2
            image = image[y : y + side, x : x + side]
        elif self.framing != "whole":
            raise ValueError(f"unknown framing {self.framing!r}")
        resized = cv2.resize(image, (s, s), interpolation=cv2.INTER_AREA)
        return ((resized.astype(np.float32) - INPUT_MEAN) / INPUT_STD).transpose(2, 0, 1)

    def _pool(self, features: np.ndarray) -> np.ndarray:
        if self.pooling == "gem":
            return gem(features)
        if self.pooling == "mean":
            return features.mean(axis=(2, 3))
        if self.pooling == "max":
            return features.max(axis=(2, 3))
        raise ValueError(f"unknown pooling {self.pooling!r}")

    def encode(self, images: Sequence[np.ndarray]) -> VisualOutput:
        descs: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            batch = np.stack([self.preprocess(im) for im in images[start : start + self.batch_size]])
            n = len(batch)
            if self.flip_invariant:
                batch = np.concatenate([batch, batch[:, :, :, ::-1]])
            out = self.session.run({"pixels": np.ascontiguousarray(batch)})
            pooled = self._pool(out["features"])
            if self.flip_invariant:
                pooled = pooled[:n] + pooled[n:]
            descs.append(l2n(pooled).astype(np.float32))
            probs.append(softmax(out["logits"][:n]).astype(np.float32))
        if not descs:
            return VisualOutput(np.zeros((0, DESCRIPTOR_DIM), np.float32), np.zeros((0, 1000), np.float32))
        return VisualOutput(np.concatenate(descs), np.concatenate(probs))
