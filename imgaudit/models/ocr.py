"""Chinese + English OCR with PP-OCRv4 (the models bundled in ``rapidocr-onnxruntime``).

rapidocr's own entry point scales every image so that its *short* side is 736 px before detection, which
costs ~150 ms per image whatever its content. Most listing photos carry no text at all, so imgaudit runs
the same detector in two steps: a cheap look at a small size (``gate_side``) that only asks "is there any
text?", then detection at ``side`` and batched recognition only for the images where the answer was yes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from imgaudit.errors import ModelError
from imgaudit.types import OcrLine

GATE_BOX_THRESH = 0.4  # generous: a false "maybe text" only costs time, a miss costs recall
REC_BATCH = 16


def _quad(points: np.ndarray, scale: float) -> tuple[tuple[int, int], ...]:
    return tuple((round(float(x) * scale), round(float(y) * scale)) for x, y in points)


class OcrEngine:
    """Loaded once per process (three ONNX sessions, ~16 MB) and shared by every batch."""

    def __init__(self, threads: int = 0, min_score: float = 0.5) -> None:
        self.threads = threads
        self.min_score = min_score
        self._engine: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    try:
                        from rapidocr_onnxruntime import RapidOCR
                        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

                        kwargs: dict[str, Any] = {"rec_batch_num": REC_BATCH}
                        if self.threads:
                            kwargs["intra_op_num_threads"] = self.threads
                        engine = RapidOCR(**kwargs)
                    except ImportError as exc:
                        raise ModelError(
                            "OCR needs rapidocr-onnxruntime (installed with --no-deps, see README)"
                        ) from exc
                    except Exception as exc:  # rapidocr raises its own untyped errors
                        raise ModelError(f"cannot load the OCR models: {exc}") from exc
                    self._gate_post = DBPostProcess(thresh=0.3, box_thresh=GATE_BOX_THRESH, unclip_ratio=1.6)
                    self._engine = engine
        return self._engine

    def _detect(self, rgb: np.ndarray, side: int, gate: bool = False) -> np.ndarray:
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
        post = self._gate_post if gate else det.postprocess_op
        boxes, _ = post(pred, (h, w))
        if len(boxes) == 0:
            return np.zeros((0, 4, 2), np.float32)
        return det.filter_tag_det_res(boxes, (h, w))

    def has_text(self, images: Sequence[np.ndarray], gate_side: int) -> list[bool]:
        """The cheap question, asked of the analysis-size pixels."""
        return [len(self._detect(im, gate_side, gate=True)) > 0 for im in images]

    def read(self, images: Sequence[np.ndarray], side: int, scales: Sequence[float]) -> list[list[OcrLine]]:
        """Detect and recognise the lines of each image; recognition is batched over all their lines.
        ``scales[i]`` maps image ``i``'s pixels to original-image pixels (for the stored boxes)."""
        engine = self._load()
        crops: list[np.ndarray] = []
        owners: list[tuple[int, np.ndarray]] = []
        for i, im in enumerate(images):
            boxes = self._detect(im, side)
            if len(boxes) == 0:
                continue
            bgr = np.ascontiguousarray(im[:, :, ::-1])
            ordered = engine.sorted_boxes(boxes)
            crops.extend(engine.get_crop_img_list(bgr, [b.copy() for b in ordered]))
            owners.extend((i, b) for b in ordered)
        out: list[list[OcrLine]] = [[] for _ in images]
        if not crops:
            return out
        try:
            recognised, _ = engine.text_rec(crops)
        except Exception as exc:  # rapidocr raises its own untyped errors
            raise ModelError(f"OCR recognition failed: {exc}") from exc
        for (i, box), (text, score) in zip(owners, recognised, strict=True):
            text = text.strip()
            if text and float(score) >= self.min_score:
                out[i].append(OcrLine(text, round(float(score), 4), _quad(box, scales[i])))  # type: ignore[arg-type]
        return out


def resize_longest(rgb: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """``rgb`` with its longest side at most ``side``, and the factor back to the input's pixels."""
    h, w = rgb.shape[:2]
    if max(h, w) <= side:
        return rgb, 1.0
    f = side / max(h, w)
    small = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return small, 1.0 / f
