"""Thumbnails of indexed images on disk: used by geometric verification (the original may be a URL we
do not want to download again) and by reports. JPEG, longest side THUMB_SIDE."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from imgaudit.fsio import atomic_write_bytes

THUMB_SIDE = 480
THUMB_QUALITY = 85


class ThumbStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, image_id: int) -> Path:
        return self.root / f"{image_id // 1000:06d}" / f"{image_id}.jpg"

    @staticmethod
    def encode(pixels: np.ndarray) -> bytes:
        """The thumbnail's bytes: the costly part, done before the dedup lock is taken."""
        im = Image.fromarray(pixels)
        im.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=THUMB_QUALITY)
        return buf.getvalue()

    @staticmethod
    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))

    def put(self, image_id: int, pixels: np.ndarray) -> None:
        self.put_bytes(image_id, self.encode(pixels))

    def put_bytes(self, image_id: int, data: bytes) -> None:
        atomic_write_bytes(self.path(image_id), data)

    def get(self, image_id: int) -> np.ndarray | None:
        path = self.path(image_id)
        if not path.is_file():
            return None
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
