"""Chinese + English OCR with PP-OCRv4 (the models bundled in ``rapidocr-onnxruntime``).

rapidocr's own entry point scales every image so that its *short* side is 736 px before detection, which
costs ~150 ms per image whatever its content. imgaudit detects once, on the analysis-size pixels it
already has (512 px: ~25 ms on 2 cores, and it still finds text 16 px tall in a 1200 px photo), and only
for the images with text decodes the original larger and reads the detected boxes there, recognition
batched over every line of the batch. Measured on the overlay benchmark: detecting at 320 px would be
three times cheaper but misses one contact overlay in six.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from imgaudit.errors import ModelError
from imgaudit.types import OcrLine, Point

REC_BATCH = 16


def _quad(points: np.ndarray, scale: float) -> tuple[Point, Point, Point, Point]:
    """A detected (4, 2) quadrilateral in original-image pixels."""
    a, b, c, d = ((round(float(x) * scale), round(float(y) * scale)) for x, y in points)
    return a, b, c, d


class OcrEngine:
    """Loaded once per process (three ONNX sessions, ~16 MB) and shared by every batch.

    Images are detected in parallel, one per core, each run single-threaded: the detector's tensors are
    small, and two single-threaded runs side by side do ~1.6x the work of one run on two threads
    (measured on 2 cores: 5.4 against 8.5 ms per image at 256 px).
    """

    def __init__(self, threads: int = 0, min_score: float = 0.5) -> None:
        self.threads = threads or os.cpu_count() or 1
        self.min_score = min_score
        self._engine: Any = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="ocr")

    def _load(self) -> Any:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    try:
                        from rapidocr_onnxruntime import RapidOCR

                        engine = RapidOCR(rec_batch_num=REC_BATCH, intra_op_num_threads=1)
                    except ImportError as exc:
                        raise ModelError(
                            "OCR needs rapidocr-onnxruntime (installed with --no-deps, see README)"
                        ) from exc
                    except Exception as exc:  # rapidocr raises its own untyped errors
                        raise ModelError(f"cannot load the OCR models: {exc}") from exc
                    self._engine = engine
        return self._engine

    def _detect(self, rgb: np.ndarray, side: int) -> np.ndarray:
        """Text quadrilaterals (N, 4, 2) in ``rgb``'s coordinates, detected with the longest side at
        most ``side`` (never enlarged beyond the image itself, rounded to the model's stride of 32)."""
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

        engine = self._load()
        det = engine.text_det
        h, w = rgb.shape[:2]
        limit = min(side, max(32, max(h, w)))
        pre = DetPreProcess(limit, "max", det.mean, det.std)
        x = pre(np.ascontiguousarray(rgb[:, :, ::-1]))  # the model was trained on BGR
        if x is None:
            return np.zeros((0, 4, 2), np.float32)
        pred = det.infer(x)[0]
        boxes, _ = det.postprocess_op(pred, (h, w))
        if len(boxes) == 0:
            return np.zeros((0, 4, 2), np.float32)
        return np.asarray(engine.sorted_boxes(det.filter_tag_det_res(boxes, (h, w))), np.float32)

    def detect(self, images: Sequence[np.ndarray], side: int) -> list[np.ndarray]:
        """Text boxes of each image (in its own pixels), the images detected in parallel."""
        self._load()
        return list(self._pool.map(lambda im: self._detect(im, side), images))

    def recognise(
        self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], scales: Sequence[float]
    ) -> list[list[OcrLine]]:
        """Read the lines in ``boxes[i]`` (image ``i``'s pixels) of each image, batched over all lines;
        ``scales[i]`` maps image ``i``'s pixels to original-image pixels (for the stored boxes)."""
        engine = self._load()
        crops: list[np.ndarray] = []
        owners: list[tuple[int, np.ndarray]] = []
        for i, (im, bs) in enumerate(zip(images, boxes, strict=True)):
            if len(bs) == 0:
                continue
            bgr = np.ascontiguousarray(im[:, :, ::-1])
            crops.extend(engine.get_crop_img_list(bgr, [b.astype(np.float32).copy() for b in bs]))
            owners.extend((i, b) for b in bs)
        out: list[list[OcrLine]] = [[] for _ in images]
        if not crops:
            return out
        # Vertical lines were turned a quarter turn, which way round is a guess: the angle classifier
        # turns upside-down crops back (it only runs on those, the others are upright by construction).
        turned = [k for k, (_, b) in enumerate(owners) if _is_vertical(b)]
        if turned:
            try:
                fixed, _, _ = engine.text_cls([crops[k] for k in turned])
            except Exception as exc:  # rapidocr raises its own untyped errors
                raise ModelError(f"OCR orientation failed: {exc}") from exc
            for k, crop in zip(turned, fixed, strict=True):
                crops[k] = crop
        n = min(self.threads, len(crops))
        order = np.argsort([c.shape[1] / max(1, c.shape[0]) for c in crops])  # similar widths batch together
        parts = [[int(k) for k in order[j::n]] for j in range(n)]
        try:
            results = list(self._pool.map(lambda idx: engine.text_rec([crops[k] for k in idx])[0], parts))
        except Exception as exc:  # rapidocr raises its own untyped errors
            raise ModelError(f"OCR recognition failed: {exc}") from exc
        recognised: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        for idx, res in zip(parts, results, strict=True):
            for k, r in zip(idx, res, strict=True):
                recognised[k] = (r[0], r[1])
        for (i, box), (text, score) in zip(owners, recognised, strict=True):
            text = text.strip()
            if text and float(score) >= self.min_score:
                out[i].append(OcrLine(text, round(float(score), 4), _quad(box, scales[i])))
        return out

    def read(self, images: Sequence[np.ndarray], side: int, scales: Sequence[float]) -> list[list[OcrLine]]:
        """Detect at ``side`` and recognise on the same pixels (tests, tools)."""
        return self.recognise(images, self.detect(images, side), scales)


def _is_vertical(box: np.ndarray) -> bool:
    """Whether rapidocr's crop of this quadrilateral is rotated (it turns crops 1.5x taller than wide)."""
    width = max(float(np.linalg.norm(box[0] - box[1])), float(np.linalg.norm(box[2] - box[3])))
    height = max(float(np.linalg.norm(box[0] - box[3])), float(np.linalg.norm(box[1] - box[2])))
    return height >= 1.5 * max(width, 1.0)


def resize_longest(rgb: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """``rgb`` with its longest side at most ``side``, and the factor back to the input's pixels."""
    h, w = rgb.shape[:2]
    if max(h, w) <= side:
        return rgb, 1.0
    f = side / max(h, w)
    small = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return small, 1.0 / f
