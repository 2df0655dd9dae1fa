"""Geometric verification: ORB keypoints, ratio-tested matches, a RANSAC homography, then a check that
the aligned pixels agree.

Used in the cascade's uncertain band, where global descriptors cannot tell a cropped, framed or
overlaid copy from a look-alike (the same product or building photographed twice, a stereo pair, burst
shots). A copy shares many keypoints that one homography maps onto each other *and*, once aligned, its
pixels match the original almost everywhere; a look-alike fails one of the two: parallax and other
lighting leave the aligned patches poorly correlated. Measured on bench/dedup.py's set: median cell
correlation >= 0.93 for nearly all true copies, 0.50-0.72 for the look-alikes that pass on keypoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ORB_FEATURES = 600
RATIO = 0.8  # Lowe's ratio test
RANSAC_REPROJ_PX = 5.0
RANSAC_ITERS = 1000
VERIFY_SIDE = 480  # both images are compared at this longest side
MIN_MATCHES = 8
GRID = 4  # the aligned overlap is split into GRID x GRID cells; overlays spoil only a few
MIN_CELL_COVER = 0.9
ALIGN_BLUR_SIGMA = 2.0  # removes JPEG noise and blur differences before correlating


@dataclass(frozen=True, slots=True)
class Features:
    points: np.ndarray  # (n, 2) float32
    descriptors: np.ndarray | None  # (n, 32) uint8
    grey: np.ndarray  # the image the points refer to


@dataclass(frozen=True, slots=True)
class Verification:
    inliers: int = 0
    agreement: float = 0.0  # median normalised cross-correlation of aligned cells, -1..1
    distortion: float = 0.0  # degrees: how far the mapped frame's corners are from right angles

    def confirms(self, min_inliers: int, min_agreement: float, max_distortion: float) -> bool:
        return (
            self.inliers >= min_inliers
            and self.agreement >= min_agreement
            and self.distortion <= max_distortion
        )


NOT_VERIFIED = Verification()


def _grey(pixels: np.ndarray, side: int = VERIFY_SIDE) -> np.ndarray:
    grey = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    scale = side / max(h, w)
    if scale < 1:
        grey = cv2.resize(grey, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(grey)


def extract(pixels: np.ndarray) -> Features:
    grey = _grey(pixels)
    orb = cv2.ORB_create(nfeatures=ORB_FEATURES)
    keypoints, descriptors = orb.detectAndCompute(grey, None)
    pts = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    return Features(pts, descriptors, grey)


def _homography(a: Features, b: Features) -> tuple[int, np.ndarray | None]:
    if a.descriptors is None or b.descriptors is None or min(len(a.points), len(b.points)) < MIN_MATCHES:
        return 0, None
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m for m, *rest in (p for p in pairs if p) if not rest or m.distance < RATIO * rest[0].distance]
    if len(good) < MIN_MATCHES:
        return 0, None
    src = a.points[[m.queryIdx for m in good]]
    dst = b.points[[m.trainIdx for m in good]]
    h, mask = cv2.findHomography(
        src, dst, cv2.USAC_MAGSAC, RANSAC_REPROJ_PX, maxIters=RANSAC_ITERS, confidence=0.995
    )
    if h is None or mask is None:
        return 0, None
    return int(mask.sum()), h


def _distortion(h: np.ndarray, shape: tuple[int, int]) -> float:
    """Largest deviation from 90 degrees of the corners of ``shape``'s frame once mapped by ``h``."""
    rows, cols = shape
    corners = np.array([[0, 0], [cols, 0], [cols, rows], [0, rows]], np.float32).reshape(-1, 1, 2)
    q = cv2.perspectiveTransform(corners, h).reshape(4, 2)
    worst = 0.0
    for i in range(4):
        u, v = q[i - 1] - q[i], q[(i + 1) % 4] - q[i]
        denom = float(np.linalg.norm(u) * np.linalg.norm(v))
        if denom < 1e-6:
            return 90.0
        angle = float(np.degrees(np.arccos(np.clip(np.dot(u, v) / denom, -1, 1))))
        worst = max(worst, abs(angle - 90.0))
    return worst


def _agreement(a: Features, b: Features, h: np.ndarray) -> float:
    """Median over cells of the normalised cross-correlation between b and a warped onto b."""
    rows, cols = b.grey.shape
    warped = cv2.warpPerspective(a.grey, h, (cols, rows), flags=cv2.INTER_LINEAR)
    cover = cv2.warpPerspective(np.full_like(a.grey, 255), h, (cols, rows), flags=cv2.INTER_NEAREST) > 0
    ys, xs = np.nonzero(cover)
    if len(ys) < 100:
        return 0.0
    wa = cv2.GaussianBlur(warped.astype(np.float32), (0, 0), ALIGN_BLUR_SIGMA)
    wb = cv2.GaussianBlur(b.grey.astype(np.float32), (0, 0), ALIGN_BLUR_SIGMA)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    cells = []
    for i in range(GRID):
        for j in range(GRID):
            ya, yb = y0 + (y1 - y0) * i // GRID, y0 + (y1 - y0) * (i + 1) // GRID
            xa, xb = x0 + (x1 - x0) * j // GRID, x0 + (x1 - x0) * (j + 1) // GRID
            m = cover[ya:yb, xa:xb]
            if m.size == 0 or m.mean() < MIN_CELL_COVER:
                continue
            p, q = wa[ya:yb, xa:xb][m], wb[ya:yb, xa:xb][m]
            p, q = p - p.mean(), q - q.mean()
            d = float(np.sqrt((p * p).sum() * (q * q).sum()))
            if d > 1e-6:
                cells.append(float((p * q).sum()) / d)
    return float(np.median(cells)) if cells else 0.0


def compare(a: Features, b: Features) -> Verification:
    inliers, h = _homography(a, b)
    if h is None or inliers < MIN_MATCHES:
        return Verification(inliers)
    return Verification(inliers, _agreement(a, b, h), _distortion(h, a.grey.shape))


def verify(
    views: list[np.ndarray],
    candidate: np.ndarray,
    features: list[Features] | None = None,
    good_enough: int = 50,
) -> Verification:
    """Best verification of any query view (or its mirror) against the candidate.

    Mirrors are tried only when the direct views fail, since ORB descriptors are not mirror-invariant.
    """
    feats = features or [extract(v) for v in views]
    cf = extract(candidate)
    results = [compare(f, cf) for f in feats]
    if max(r.inliers for r in results) < good_enough:
        results += [compare(extract(np.ascontiguousarray(v[:, ::-1])), cf) for v in views]
    return max(results, key=_rank)


def _rank(r: Verification) -> tuple[float, int]:
    return (r.agreement if r.inliers >= MIN_MATCHES else -1.0, r.inliers)
