"""Geometric verification with local features: ORB keypoints, ratio-tested matches, RANSAC homography.

Used only in the cascade's borderline band, where global descriptors cannot tell a cropped or
overlaid copy from a look-alike (the same product photographed twice, burst shots): a copy shares many
keypoints that one homography maps onto each other; a look-alike does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ORB_FEATURES = 1000
RATIO = 0.8  # Lowe's ratio test
RANSAC_REPROJ_PX = 5.0
VERIFY_SIDE = 480  # both images are compared at this longest side


@dataclass(frozen=True, slots=True)
class Features:
    points: np.ndarray  # (n, 2) float32
    descriptors: np.ndarray | None  # (n, 32) uint8
    shape: tuple[int, int]


def _grey(pixels: np.ndarray, side: int = VERIFY_SIDE) -> np.ndarray:
    grey = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    scale = side / max(h, w)
    if scale < 1:
        grey = cv2.resize(grey, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return grey


def extract(pixels: np.ndarray) -> Features:
    grey = _grey(pixels)
    orb = cv2.ORB_create(nfeatures=ORB_FEATURES)
    keypoints, descriptors = orb.detectAndCompute(grey, None)
    pts = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    return Features(pts, descriptors, grey.shape[:2])


def mirrored(f: Features, pixels: np.ndarray) -> Features:
    """Features of the mirror image (ORB descriptors are not mirror-invariant)."""
    return extract(np.ascontiguousarray(pixels[:, ::-1]))


def inliers(a: Features, b: Features) -> int:
    """Number of matches consistent with one homography (0 when there are too few to fit one)."""
    if a.descriptors is None or b.descriptors is None or len(a.points) < 8 or len(b.points) < 8:
        return 0
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    pairs = matcher.knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m for m, *rest in (p for p in pairs if p) if not rest or m.distance < RATIO * rest[0].distance]
    if len(good) < 8:
        return 0
    src = a.points[[m.queryIdx for m in good]]
    dst = b.points[[m.trainIdx for m in good]]
    _, mask = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_REPROJ_PX)
    return int(mask.sum()) if mask is not None else 0


def verify(query: np.ndarray, candidate: np.ndarray, query_features: Features | None = None) -> int:
    """Best inlier count between the query (or its mirror) and the candidate."""
    qf = query_features or extract(query)
    cf = extract(candidate)
    best = inliers(qf, cf)
    if best < 8:
        best = max(best, inliers(mirrored(qf, query), cf))
    return best
