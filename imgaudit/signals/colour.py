"""Colour names and attribute text: what the pixels show beyond labels, in words both languages share
with a query ("红色 red"), for the sparse index of cross-modal search.

Colours come from the pixels directly (a 32x32 thumbnail, about a millisecond).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import cv2
import numpy as np

# Basic colour terms with a few sRGB prototypes each (light, dark, saturated variants): a pixel takes the
# name of its nearest prototype in CIELAB. Near-grey pixels are named by lightness alone.
PALETTE: dict[tuple[str, str], tuple[tuple[int, int, int], ...]] = {
    ("red", "红色"): ((255, 0, 0), (200, 30, 30), (139, 0, 0), (220, 20, 60)),
    ("orange", "橙色"): ((255, 140, 0), (255, 165, 0), (240, 120, 40)),
    ("yellow", "黄色"): ((255, 255, 0), (255, 215, 0), (240, 230, 140), (220, 200, 40)),
    ("green", "绿色"): (
        (0, 128, 0),
        (0, 255, 0),
        (34, 139, 34),
        (107, 142, 35),
        (144, 238, 144),
        (0, 100, 0),
    ),
    ("blue", "蓝色"): (
        (0, 0, 255),
        (30, 144, 255),
        (0, 0, 139),
        (70, 130, 180),
        (135, 206, 235),
        (0, 255, 255),
        (0, 128, 128),
        (25, 25, 112),
    ),
    ("purple", "紫色"): ((128, 0, 128), (148, 0, 211), (186, 85, 211), (75, 0, 130), (200, 160, 230)),
    ("pink", "粉色"): ((255, 192, 203), (255, 105, 180), (255, 20, 147), (219, 112, 147), (255, 0, 255)),
    ("brown", "棕色"): (
        (139, 69, 19),
        (160, 82, 45),
        (101, 67, 33),
        (205, 133, 63),
        (210, 180, 140),
        (120, 90, 60),
    ),
}
ACHROMATIC_CHROMA = 10.0  # CIELAB chroma below which a pixel counts as black, grey or white
BLACK_L, WHITE_L = 22.0, 88.0
MIN_SHARE = 0.08  # colours covering less of the image are not named
THUMB = 32
_ALL_NAMES: tuple[tuple[str, str], ...] = (*PALETTE, ("black", "黑色"), ("grey", "灰色"), ("white", "白色"))
_NAME_INDEX = {name: i for i, name in enumerate(_ALL_NAMES)}
_BLACK, _GREY, _WHITE = len(PALETTE), len(PALETTE) + 1, len(PALETTE) + 2


def _lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> float32 CIELAB (L 0-100)."""
    arr = np.asarray(rgb, np.float32).reshape(-1, 1, 3) / 255.0
    return cv2.cvtColor(arr, cv2.COLOR_RGB2Lab).reshape(-1, 3)


@cache
def _prototypes() -> tuple[np.ndarray, tuple[tuple[str, str], ...]]:
    names: list[tuple[str, str]] = []
    protos: list[tuple[int, int, int]] = []
    for name, cols in PALETTE.items():
        names += [name] * len(cols)
        protos += cols
    return _lab(np.array(protos, np.uint8)), tuple(names)


def colour_names(rgb: np.ndarray, max_colours: int = 3) -> list[tuple[str, str, float]]:
    """The dominant basic colours of an RGB uint8 image as (english, chinese, share), largest first."""
    small = cv2.resize(np.ascontiguousarray(rgb[..., :3]), (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    lab = _lab(small)
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    protos, names = _prototypes()
    # Chromatic pixels: nearest prototype, with lightness counting half (hue and chroma name a colour
    # more than lightness does: dark red is still red).
    d = ((lab[:, None, 1:] - protos[None, :, 1:]) ** 2).sum(-1) + 0.25 * (
        lab[:, None, 0] - protos[None, :, 0]
    ) ** 2
    colour_index = np.array([_NAME_INDEX[n] for n in names])[d.argmin(axis=1)]
    grey = np.where(lab[:, 0] < BLACK_L, _BLACK, np.where(lab[:, 0] > WHITE_L, _WHITE, _GREY))
    which = np.where(chroma < ACHROMATIC_CHROMA, grey, colour_index)
    share = np.bincount(which, minlength=len(_ALL_NAMES)) / float(len(which))
    order = np.argsort(-share, kind="stable")
    return [
        (_ALL_NAMES[i][0], _ALL_NAMES[i][1], round(float(share[i]), 3))
        for i in order
        if share[i] >= MIN_SHARE
    ][:max_colours]


def attribute_text(
    colours: Sequence[tuple[str, str, float]], has_text: bool, has_qr: bool, width: int, height: int
) -> str:
    """A short bilingual description of what the pixels show beyond labels, for the sparse index."""
    parts = [" ".join(f"{zh} {en}" for en, zh, _ in colours)] if colours else []
    ratio = width / max(height, 1)
    if ratio > 1.2:
        parts.append("横图 landscape")
    elif ratio < 1 / 1.2:
        parts.append("竖图 portrait")
    else:
        parts.append("方图 square")
    if has_text:
        parts.append("有文字 text")
    if has_qr:
        parts.append("二维码 QR code")
    return "; ".join(parts)
