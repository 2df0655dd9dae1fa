"""Geometric verification: ORB keypoints, ratio-tested matches, a RANSAC homography, then a check that
the aligned pixels agree.

Used in the cascade's uncertain band, where global descriptors cannot tell a cropped, framed or
overlaid copy from a look-alike (the same product or building photographed twice, a stereo pair, burst
shots). A copy shares many keypoints that one homography maps onto each other *and*, once aligned, its
pixels match the original almost everywhere; a look-alike fails one of the two: parallax and other
lighting leave the aligned patches poorly correlated. Measured on bench/dedup.py's set: median cell
correlation >= 0.93 for nearly all true copies, 0.50-0.72 for the look-alikes that pass on keypoints.

Nothing here raises. Images too small or too thin for ORB give empty features; a homography no copy
could produce (numerically singular, folding the frame over the horizon, shrinking it to a sliver or
flinging it far away) is rejected before any warp, because OpenCV 5.1's IPP-backed ``warpPerspective``
(INTER_LINEAR, BORDER_CONSTANT) segfaults on numerically singular matrices that MAGSAC can return for
look-alikes; and any remaining OpenCV error becomes ``Verification.error`` so the caller can record it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ORB_FEATURES = 600
ORB_EDGE = 31  # ORB's default edgeThreshold (= patchSize): no keypoint within this many pixels of a border
RATIO = 0.8  # Lowe's ratio test
RANSAC_REPROJ_PX = 5.0
RANSAC_ITERS = 1000
VERIFY_SIDE = 480  # both images are compared at this longest side
# Below this short side ORB finds no keypoint at all (the border margin covers the image) and its pyramid
# shrinks levels to zero pixels, which raises; such images are not verified.
MIN_SIDE = 2 * ORB_EDGE + 2
MIN_MATCHES = 8
GRID = 4  # the aligned overlap is split into GRID x GRID cells; overlays spoil only a few
MIN_CELL_COVER = 0.9
ALIGN_BLUR_SIGMA = 2.0  # removes JPEG noise and blur differences before correlating

# Plausibility of a homography between a copy and its original, both at most VERIFY_SIDE. Generous on
# purpose: they only reject maps no crop/scale/rotation/perspective copy produces, so that agreement and
# distortion still decide every real case. In coordinates where each image's longest side is 1:
MAX_COND = 1e6  # condition number: a copy's map is ~1-100; the crashing one ~1e17 (float64 fails ~1e15)
MAX_AREA_SCALE = 100.0  # local area change |det| at the origin, either way: 10x linear zoom or crop
MAX_SPAN = 16.0  # mapped corners stay within this many longest sides of the candidate's frame
MIN_W = 1e-3  # the projective divisor at each corner: <= 0 means the frame crosses the horizon


@dataclass(frozen=True, slots=True)
class Features:
    points: np.ndarray  # (n, 2) float32
    descriptors: np.ndarray | None  # (n, 32) uint8
    grey: np.ndarray  # the image the points refer to
    error: str | None = None  # why extraction failed, when it did (the features are then empty)


@dataclass(frozen=True, slots=True)
class Verification:
    inliers: int = 0
    agreement: float = 0.0  # median normalised cross-correlation of aligned cells, -1..1
    distortion: float = 0.0  # degrees: how far the mapped frame's corners are from right angles
    error: str | None = None  # "verification failed: ..." material when OpenCV refused the inputs

    def confirms(self, min_inliers: int, min_agreement: float, max_distortion: float) -> bool:
        return (
            self.error is None
            and self.inliers >= min_inliers
            and self.agreement >= min_agreement
            and self.distortion <= max_distortion
        )


NOT_VERIFIED = Verification()
_DEGENERATE = 90.0  # the distortion reported for a frame that a homography does not map to a quadrilateral


def _empty(grey: np.ndarray | None = None, error: str | None = None) -> Features:
    grey = np.zeros((0, 0), np.uint8) if grey is None else grey
    return Features(np.zeros((0, 2), np.float32), None, grey, error)


def _as_grey_uint8(pixels: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA) of any numeric dtype to contiguous uint8 grey."""
    a = np.asarray(pixels)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"unsupported pixel array shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise ValueError(f"unsupported pixel dtype {a.dtype}")
        a = np.clip(np.nan_to_num(a.astype(np.float64)), 0, 255).astype(np.uint8)
    a = np.ascontiguousarray(a)
    if a.ndim == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY if a.shape[2] == 3 else cv2.COLOR_RGBA2GRAY)
    return a


def _target_size(h: int, w: int, side: int) -> tuple[int, int]:
    """(rows, cols) after reducing the longest side to ``side``; never enlarges, never below 1."""
    scale = side / max(h, w)
    if scale >= 1:
        return h, w
    return max(1, round(h * scale)), max(1, round(w * scale))


def _grey(pixels: np.ndarray, side: int = VERIFY_SIDE) -> np.ndarray:
    grey = _as_grey_uint8(pixels)
    h, w = grey.shape
    rows, cols = _target_size(h, w, side)
    if (rows, cols) != (h, w):
        grey = cv2.resize(grey, (cols, rows), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(grey)


def extract(pixels: np.ndarray) -> Features:
    """ORB features at VERIFY_SIDE. Never raises: unusable input gives empty features (with ``error``
    set when OpenCV or the array itself was the problem rather than the image being small)."""
    try:
        shape = np.shape(pixels)
        if len(shape) < 2 or min(shape[:2]) < 1:
            return _empty()
        if min(_target_size(int(shape[0]), int(shape[1]), VERIFY_SIDE)) < MIN_SIDE:
            return _empty()  # too small or too thin: ORB has nothing to look at, and its pyramid raises
        grey = _grey(pixels)
        orb = cv2.ORB.create(nfeatures=ORB_FEATURES, edgeThreshold=ORB_EDGE, patchSize=ORB_EDGE)
        keypoints, descriptors = orb.detectAndCompute(grey, None)
    except (cv2.error, ValueError, TypeError, MemoryError) as exc:
        return _empty(error=_describe(exc))
    pts = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    if descriptors is None or len(descriptors) != len(pts):
        return _empty(grey)
    return Features(pts, descriptors, grey)


def _describe(exc: BaseException) -> str:
    """One line: cv2.error messages span several lines and name build paths."""
    text = " ".join(str(exc).split())
    if isinstance(exc, cv2.error) and getattr(exc, "err", None):
        text = f"{exc.func}: {exc.err}" if getattr(exc, "func", None) else str(exc.err)
    return f"{type(exc).__name__}: {text}"[:300]


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


def _frame(shape: tuple[float, ...]) -> np.ndarray:
    """The corners of a ``shape`` image, homogeneous, one per column."""
    rows, cols = shape[:2]
    return np.array([[0.0, cols, cols, 0.0], [0.0, 0.0, rows, rows], [1.0, 1.0, 1.0, 1.0]])


def homography_problem(h: np.ndarray, a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> str | None:
    """Why ``h`` (a's pixels to b's) cannot be a copy's alignment, or None when it is plausible.

    Checked before any warp: a numerically singular ``h`` crashes OpenCV 5.1's warpPerspective, and the
    other maps (frame folded over the horizon, turned inside out, shrunk to a sliver, thrown far off) only
    ever come from matching look-alikes.
    """
    h = np.asarray(h, dtype=np.float64)
    if h.shape != (3, 3) or not np.all(np.isfinite(h)):
        return "homography is not a finite 3x3 matrix"
    if min(a_shape[:2]) < 1 or min(b_shape[:2]) < 1:
        return "empty image"
    sa, sb = float(max(a_shape[:2])), float(max(b_shape[:2]))
    # Conjugate into coordinates where each image's longest side is 1: scale-free thresholds.
    hn = np.diag([1 / sb, 1 / sb, 1.0]) @ h @ np.diag([sa, sa, 1.0])
    norm = float(np.linalg.norm(hn))
    if norm == 0 or not np.isfinite(norm):
        return "homography is zero"
    hn = hn / norm
    singular = np.linalg.svd(hn, compute_uv=False)
    if singular[-1] <= singular[0] / MAX_COND:
        cond = singular[0] / max(singular[-1], 1e-300)
        return f"homography is ill-conditioned (condition number {cond:.3g})"
    corners = hn @ _frame((a_shape[0] / sa, a_shape[1] / sa))
    w = corners[2]
    if w[0] < 0:  # the overall sign of a homography is arbitrary: make the first corner's divisor positive
        hn, corners, w = -hn, -corners, -w
    if np.any(w <= MIN_W * np.abs(w).max()):
        return "homography maps the frame across the horizon"
    area_scale = float(np.linalg.det(hn)) / float(w[0]) ** 3  # the Jacobian's determinant at a's origin
    if area_scale <= 0:
        return "homography mirrors the frame"  # mirrored copies are matched through the mirrored view
    if not 1 / MAX_AREA_SCALE <= area_scale <= MAX_AREA_SCALE:
        return f"homography changes area by {area_scale:.3g}x"
    q = corners[:2] / w
    if not np.all(np.isfinite(q)) or np.abs(q - 0.5).max() > MAX_SPAN:
        return "homography maps the frame far outside the candidate"
    edges = np.roll(q, -1, axis=1) - q
    turns = edges[0] * np.roll(edges[1], -1) - edges[1] * np.roll(edges[0], -1)
    if not np.all(turns > 0):  # image axes: the identity turns the same way at every corner
        return "homography folds or mirrors the frame (mapped corners not a convex quadrilateral)"
    bounds = (b_shape[0] / sb) * (b_shape[1] / sb)
    area = 0.5 * abs(float(np.dot(q[0], np.roll(q[1], -1)) - np.dot(q[1], np.roll(q[0], -1))))
    if not bounds / MAX_AREA_SCALE <= area <= bounds * MAX_AREA_SCALE:
        return f"mapped frame covers {area / bounds:.3g}x the candidate"
    return None


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
            return _DEGENERATE
        angle = float(np.degrees(np.arccos(np.clip(np.dot(u, v) / denom, -1, 1))))
        worst = max(worst, abs(angle - 90.0))
    return worst


def _agreement(a: Features, b: Features, h: np.ndarray) -> float:
    """Median over cells of the normalised cross-correlation between b and a warped onto b.

    ``h`` must have passed ``homography_problem``.
    """
    rows, cols = b.grey.shape
    h = np.ascontiguousarray(h, dtype=np.float64)
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
    """Verify query features ``a`` against candidate features ``b``. Never raises."""
    if a.error or b.error:
        return Verification(error=a.error or b.error)
    try:
        inliers, h = _homography(a, b)
        if h is None or inliers < MIN_MATCHES:
            return Verification(inliers)
        if homography_problem(h, a.grey.shape, b.grey.shape) is not None:
            return Verification(inliers, 0.0, _DEGENERATE)
        return Verification(inliers, _agreement(a, b, h), _distortion(h, a.grey.shape))
    except (cv2.error, ValueError, TypeError, IndexError, MemoryError, np.linalg.LinAlgError) as exc:
        return Verification(error=_describe(exc))


def verify(
    views: list[np.ndarray],
    candidate: np.ndarray,
    features: list[Features] | None = None,
    good_enough: int = 50,
) -> Verification:
    """Best verification of any query view (or its mirror) against the candidate. Never raises.

    Mirrors are tried only when the direct views fail, since ORB descriptors are not mirror-invariant.
    When nothing verifies and some step failed, the result carries that step's ``error``.
    """
    try:
        feats = features or [extract(v) for v in views]
        cf = extract(candidate)
        results = [compare(f, cf) for f in feats]
        if not results or max(r.inliers for r in results) < good_enough:
            results += [compare(extract(_mirror(v)), cf) for v in views]
    except Exception as exc:  # last resort: a verifier must never take the batch down
        return Verification(error=_describe(exc))
    if not results:
        return NOT_VERIFIED
    best = max(results, key=_rank)
    if best.inliers < MIN_MATCHES and best.error is None:
        failed = next((r for r in results if r.error), None)
        return failed or best
    return best


def _mirror(pixels: np.ndarray) -> np.ndarray:
    a = np.asarray(pixels)
    return np.ascontiguousarray(a[:, ::-1]) if a.ndim >= 2 else a


def _rank(r: Verification) -> tuple[float, int]:
    return (r.agreement if r.inliers >= MIN_MATCHES else -1.0, r.inliers)
