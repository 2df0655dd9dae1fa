"""Fakes shipped with the package, for tests here and in code that builds on imgaudit."""

from __future__ import annotations

import hashlib
import io
import itertools
import re
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from imgaudit.models.text import normalize_text
from imgaudit.models.visual import DESCRIPTOR_DIM, INPUT_MEAN, INPUT_STD


class FakeVisualSession:
    """Stands in for EfficientNet-Lite0: deterministic, cheap, and similar images get similar features
    (a random projection of a 16x16 thumbnail, rectified), so cascade behaviour is testable."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.projection = rng.normal(size=(16 * 16 * 3, DESCRIPTOR_DIM)).astype(np.float32)
        self.calls = 0

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        x = inputs["pixels"] * INPUT_STD + INPUT_MEAN  # back to 0..255, (n, 3, h, w)
        n = x.shape[0]
        thumbs = (
            np.stack(
                [cv2.resize(im.transpose(1, 2, 0), (16, 16), interpolation=cv2.INTER_AREA) for im in x]
            ).reshape(n, -1)
            / 255.0
        )
        thumbs -= thumbs.mean(axis=1, keepdims=True)
        feats = np.maximum(thumbs @ self.projection, 0) + 1e-3
        features = feats.reshape(n, DESCRIPTOR_DIM, 1, 1).astype(np.float32)
        return {"features": features, "logits": features[:, :1000, 0, 0]}

    def input_names(self) -> list[str]:
        return ["pixels"]

    def output_names(self) -> list[str]:
        return ["features", "logits"]


def textured_image(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A random photo-like picture: gradients, blobs and lines, distinct for every seed, with enough
    corners for ORB."""
    rng = np.random.default_rng(seed)
    w, h = size
    _, xx = np.mgrid[0:h, 0:w]
    base = np.stack(
        [(np.sin(xx / rng.uniform(8, 40) + rng.uniform(0, 6)) * 60 + rng.uniform(60, 190)) for _ in range(3)],
        axis=-1,
    )
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(25):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(10, w // 3)), y0 + int(rng.integers(10, h // 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.ellipse((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0))
    return im


def jpeg_bytes(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class FakeTextEncoder:
    """Stands in for the multilingual text model: a hashed bag of words (Chinese characters count as
    words) and character bigrams, after the real model's normalisation (full width folded, Traditional to
    Simplified), so texts sharing words are close and others are not. Bigrams keep a long prompt template
    ("a photo of a {}") from drowning the one word that differs. Deterministic and instant; ``calls``
    counts embedding calls (a cache hit makes none) and ``name`` keys caches as a model's name does."""

    dim = 384

    def __init__(self, name: str = "fake-bag-of-words/v1") -> None:
        self._name = name
        self.calls = 0

    @property
    def name(self) -> str:
        return self._name

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            text = normalize_text(text).lower()
            features = re.findall(r"[a-z0-9]+|[\u4e00-\u9fff]", text)
            features += [a + b for a, b in itertools.pairwise(text)]
            for feature in features:
                h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=4).digest(), "little")
                out[row, h % self.dim] += 1.0
            out[row, -1] += 0.05  # no zero vectors
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(texts)

    def passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(texts)
