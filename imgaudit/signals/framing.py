"""Find the photo inside a frame: screenshots, padding, product cards.

Re-uploads often embed the original in a phone screenshot or pad it onto a canvas; a global
descriptor of the whole frame then describes mostly the frame. The photo is the largest dense,
textured block; UI text lines and bars are thin and vanish under a morphological opening.
"""

from __future__ import annotations

import cv2
import numpy as np

WORK_SIDE = 256
EDGE_THRESHOLD = 12  # morphological gradient, 0..255 grey levels
MAX_AREA = 0.80  # a box covering more than this is the whole picture: nothing to trim
MIN_AREA = 0.06  # smaller boxes are logos or stickers, not the photo
MIN_SIDE = 24  # pixels at WORK_SIDE


def content_box(pixels: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the embedded photo in ``pixels`` coordinates, or None if nothing to trim."""
    h, w = pixels.shape[:2]
    scale = WORK_SIDE / max(h, w)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    grey = cv2.cvtColor(cv2.resize(pixels, (sw, sh), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    grad = cv2.morphologyEx(grey, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    mask: np.ndarray = (grad > EDGE_THRESHOLD).astype(np.uint8)
    # Join a photo's texture into one blob, but only across small gaps, then erase anything thinner
    # than k (text lines, bars, buttons); a final closing fills smooth areas inside the photo (sky).
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    k = max(5, min(sw, sh) // 12)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((k, k), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, bw, bh = (int(v) for v in stats[best, :4])
    if bw < MIN_SIDE or bh < MIN_SIDE:
        return None
    frac = (bw * bh) / (sw * sh)
    if not MIN_AREA <= frac <= MAX_AREA:
        return None
    return (
        int(x / scale),
        int(y / scale),
        min(w, int(np.ceil((x + bw) / scale))),
        min(h, int(np.ceil((y + bh) / scale))),
    )
