"""Exact and perceptual hashes.

pHash follows the classic DCT recipe (and imagehash's bit order, so legacy thresholds such as
"Hamming <= 5" mean the same thing here): greyscale, 32x32 Lanczos, 2-D DCT-II, top-left 8x8 block,
bit = coefficient > median.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image
from scipy.fft import dct

HASH_BITS = 64


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixel_sha256(pixels: np.ndarray) -> str:
    """Hash of the decoded pixels with their shape: the same picture re-saved losslessly (PNG vs BMP,
    stripped metadata) has other bytes but the same pixels."""
    h = hashlib.sha256(np.asarray(pixels.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def phash(pixels: np.ndarray) -> int:
    """64-bit DCT perceptual hash of an RGB uint8 array, as an unsigned int."""
    grey = Image.fromarray(pixels).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    coeffs = dct(dct(np.asarray(grey, dtype=np.float64), axis=0), axis=1)[:8, :8]
    bits = (coeffs > np.median(coeffs)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def hash_to_bytes(h: int) -> bytes:
    return h.to_bytes(8, "big")


def hashes_to_array(hashes: list[int]) -> np.ndarray:
    """(n, 8) uint8 codes for FAISS binary indexes."""
    return np.frombuffer(b"".join(hash_to_bytes(h) for h in hashes), dtype=np.uint8).reshape(-1, 8)


def to_signed(h: int) -> int:
    """Signed 64-bit view, for databases whose BIGINT is signed."""
    return h - (1 << 64) if h >= 1 << 63 else h


def from_signed(h: int) -> int:
    return h + (1 << 64) if h < 0 else h
