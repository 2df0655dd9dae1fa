"""Sharpness and basic quality: unusable shots go to review before anyone looks at their content.

Sharpness is the variance of the Laplacian measured at a fixed working size, so that the same photo
scores the same whether it arrived at 640 px or 4000 px (at full size the Laplacian sees pixel-level
noise, downscaled it sees edges).
"""

from __future__ import annotations

import cv2
import numpy as np

from imgaudit.types import Quality

WORK_SIDE = 384


def measure(rgb: np.ndarray, width: int, height: int) -> Quality:
    """``width`` / ``height`` are the original size (``rgb`` may be reduced)."""
    h, w = rgb.shape[:2]
    f = WORK_SIDE / max(h, w)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if f < 1:
        grey = cv2.resize(grey, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    sharpness = float(cv2.Laplacian(grey, cv2.CV_32F).var())
    contrast = float(grey.std())
    # Most common colour at 3 bits per channel: a flat background with a small product still varies.
    bins = (rgb[::2, ::2] >> 5).astype(np.int32)
    keys = (bins[..., 0] << 6) | (bins[..., 1] << 3) | bins[..., 2]
    dominant = float(np.bincount(keys.ravel(), minlength=512).max() / keys.size)
    return Quality(round(sharpness, 2), round(contrast, 2), round(dominant, 4), width, height)


def skin_fraction(rgb: np.ndarray) -> float:
    """Share of skin-coloured pixels (YCrCb box of Chai & Ngan), or 1.0 for a grey image, where colour
    says nothing. Only a gate: beige walls and sand count too, which costs time, never recall."""
    small = rgb[:: max(1, rgb.shape[0] // 96), :: max(1, rgb.shape[1] // 128)]
    ycc = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2YCrCb)
    if float(np.abs(ycc[..., 1:].astype(np.int16) - 128).mean()) < 3.0:
        return 1.0
    mask = cv2.inRange(ycc, (0, 133, 77), (255, 178, 130))
    return round(float(mask.mean() / 255.0), 4)
