"""Geometric verification never crashes or raises, whatever the images and whatever RANSAC returns.

The OpenCV 5.1 regression: ``cv2.warpPerspective`` (IPP path: CV_8U, INTER_LINEAR, BORDER_CONSTANT)
segfaults on a numerically singular homography, and MAGSAC returned exactly such a matrix for the CLI
sample's o5 (mirrored) against o4's thumbnail. Cases that could crash run in a subprocess, so a
segfault is a failed test rather than a dead pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from imgaudit.signals import local_features as lf
from imgaudit.testing.fakes import textured_image

# What MAGSAC returned for that pair (a's 480x360 grey to b's 480x360): rank 2 to float64 precision
# (singular values 205, 0.11, 4e-16), so the inverse that warpPerspective computes has entries ~1e15.
CRASH_H = [
    [-0.08300793286413073, -0.2629930714492179, 204.71290672041718],
    [0.0692292982861926, 0.1127160152636076, -14.702618563407903],
    [-0.0007022201720864468, -0.0017247594979173217, 1.0],
]
SHAPE = (360, 480)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def _crashed(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode} (<0: killed by a signal)\nstdout:{proc.stdout}\nstderr:{proc.stderr}"


def test_the_crashing_homography_is_rejected_before_any_warp() -> None:
    problem = lf.homography_problem(np.array(CRASH_H), SHAPE, SHAPE)
    assert problem is not None and "ill-conditioned" in problem


def test_compare_survives_the_crashing_homography_in_a_subprocess() -> None:
    proc = _run(
        f"""
        import json, numpy as np
        from imgaudit.signals import local_features as lf
        grey = np.random.default_rng(0).integers(0, 256, {SHAPE}, dtype=np.uint8)
        a = lf.Features(np.zeros((0, 2), np.float32), None, grey)
        lf._homography = lambda a, b: (24, np.array({CRASH_H}))
        v = lf.compare(a, a)
        print(json.dumps([v.inliers, v.agreement, v.distortion]))
        """
    )
    assert proc.returncode == 0, _crashed(proc)
    inliers, agreement, distortion = json.loads(proc.stdout)
    assert (inliers, agreement, distortion) == (24, 0.0, 90.0)


def test_the_cli_sample_pair_that_crashed_verifies_in_a_subprocess() -> None:
    """The same images as tests/e2e/test_cli.py's o5 (query, decoded at 512) and o4 (its stored thumbnail)."""
    proc = _run(
        """
        from imgaudit.media.decode import decode
        from imgaudit.signals import local_features as lf
        from imgaudit.store.thumbs import ThumbStore
        from imgaudit.testing.fakes import jpeg_bytes, textured_image

        def decoded(seed):
            data = jpeg_bytes(textured_image(seed, (640, 480)), quality=92)
            return decode(data, max_pixels=64_000_000, max_side=512).pixels

        v = lf.verify([decoded(114)], ThumbStore.decode(ThumbStore.encode(decoded(98))))
        print(v.confirms(12, 0.8, 10.0), v.error)
        """
    )
    assert proc.returncode == 0, _crashed(proc)
    assert proc.stdout.split() == ["False", "None"]


DEGENERATE = {
    "nan": np.full((3, 3), np.nan),
    "inf": np.array([[1, 0, np.inf], [0, 1, 0], [0, 0, 1.0]]),
    "zeros": np.zeros((3, 3)),
    "rank_1": np.ones((3, 3)),
    "rank_2": np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1.0]]),
    "crash": np.array(CRASH_H),
    "tiny_det": np.diag([1e-9, 1e-9, 1.0]),
    "huge_scale": np.diag([1e6, 1e6, 1.0]),
    "far_away": np.array([[1, 0, 1e9], [0, 1, 1e9], [0, 0, 1.0]]),
    "horizon_inside": np.array([[1, 0, 0], [0, 1, 0], [-0.004, -0.004, 1.0]]),
    "h22_zero": np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0.0]]),
    "mirrored": np.array([[1, 0, 0], [0, -1, 360], [0, 0.0055, 1.0]]),
    "bow_tie": np.array([[-0.9, 0.1, 450], [0.0, 1.0, 0.0], [-0.0042, 0.0, 1.0]]),
    "wrong_shape": np.eye(4),
}


@pytest.mark.parametrize("name", list(DEGENERATE))
def test_degenerate_homographies_are_rejected(name: str) -> None:
    assert lf.homography_problem(DEGENERATE[name], SHAPE, SHAPE) is not None


def test_every_degenerate_homography_goes_through_compare_without_crashing() -> None:
    cases = {k: v.tolist() for k, v in DEGENERATE.items() if v.shape == (3, 3)}
    proc = _run(
        f"""
        import json, numpy as np
        from imgaudit.signals import local_features as lf
        grey = np.random.default_rng(1).integers(0, 256, {SHAPE}, dtype=np.uint8)
        a = lf.Features(np.zeros((0, 2), np.float32), None, grey)
        out = {{}}
        for name, h in json.loads({json.dumps(json.dumps(cases))}).items():
            lf._homography = lambda a, b, h=h: (30, np.array(h, dtype=np.float64))
            v = lf.compare(a, a)
            out[name] = [v.agreement, v.distortion, v.error]
        print(json.dumps(out))
        """
    )
    assert proc.returncode == 0, _crashed(proc)
    for name, (agreement, distortion, error) in json.loads(proc.stdout).items():
        assert (agreement, distortion, error) == (0.0, 90.0, None), name


@pytest.mark.parametrize(
    "h",
    [
        np.eye(3),
        np.diag([0.5, 0.5, 1.0]),  # the copy is half size
        np.diag([2.0, 2.0, 1.0]) @ np.array([[1, 0, -120], [0, 1, -90], [0, 0, 1.0]]),  # a 50% crop
        np.array([[0.978, -0.208, 40], [0.208, 0.978, -50], [0, 0, 1.0]]),  # rotated 12 degrees
        np.array([[0, -1, 360], [1, 0, 0], [0, 0, 1.0]]),  # rotated 90 degrees
        np.array([[1.1, 0.05, 10], [0.02, 0.95, 5], [3e-4, -2e-4, 1.0]]),  # a mild perspective
    ],
    ids=["identity", "half", "crop", "rot12", "rot90", "perspective"],
)
def test_plausible_homographies_pass(h: np.ndarray) -> None:
    assert lf.homography_problem(h, SHAPE, SHAPE) is None


def test_copies_still_verify_with_the_checks() -> None:
    """The checks only remove impossible maps: the usual copies keep their high agreement."""
    original = np.asarray(textured_image(21, (480, 360)))
    crop = np.ascontiguousarray(original[60:300, 80:400])
    for view, candidate in [(crop, original), (original, crop), (original[::2, ::2], original)]:
        v = lf.verify([np.ascontiguousarray(view)], original if candidate is original else candidate)
        assert v.confirms(12, 0.8, 10.0), v


# --- degenerate sizes and arrays ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [(1, 1, 3), (1, 2, 3), (2, 2, 3), (1, 800, 3), (800, 1, 3), (1, 200, 3), (5, 2000, 3), (63, 480, 3)],
)
def test_tiny_and_thin_images_give_empty_features(shape: tuple[int, ...]) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    features = lf.extract(pixels)
    assert len(features.points) == 0 and features.descriptors is None and features.error is None
    v = lf.verify([pixels], pixels)
    assert v == lf.NOT_VERIFIED


def test_thin_strip_against_a_shorter_one() -> None:
    long, short = (np.full((1, n, 3), 120, np.uint8) for n in (800, 200))
    assert lf.verify([long], short) == lf.NOT_VERIFIED
    assert lf.verify([short], long) == lf.NOT_VERIFIED


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((0, 100, 3), np.uint8),
        np.zeros((100,), np.uint8),
        np.zeros((100, 100, 2), np.uint8),
        np.array(5),
        np.full((120, 120, 3), "x", dtype=object),
    ],
    ids=["empty", "no_rows", "1d", "2_channels", "scalar", "objects"],
)
def test_unusable_arrays_never_raise(pixels: np.ndarray) -> None:
    good = np.asarray(textured_image(3, (200, 150)))
    assert not lf.verify([pixels], good).confirms(1, -1.0, 90.0)
    assert not lf.verify([good], pixels).confirms(1, -1.0, 90.0)
    assert len(lf.extract(pixels).points) == 0


def test_other_layouts_and_dtypes_are_accepted() -> None:
    rgb = np.asarray(textured_image(4, (320, 240)))
    grey = rgb.mean(axis=2)
    for variant in (grey.astype(np.uint8), grey[:, :, None].astype(np.uint8), grey, rgb.astype(np.float32)):
        assert len(lf.extract(variant).points) > 50
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert lf.verify([rgba[:, ::-1][:, ::-1]], rgb).confirms(12, 0.8, 10.0)  # non-contiguous RGBA


def test_no_views_is_not_verified() -> None:
    assert lf.verify([], np.asarray(textured_image(5, (200, 150)))) == lf.NOT_VERIFIED


def test_an_opencv_error_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    image = np.asarray(textured_image(6, (320, 240)))

    def broken(*args: object, **kwargs: object) -> None:
        raise cv2.error("simulated failure")

    monkeypatch.setattr(cv2, "findHomography", broken)
    v = lf.verify([image], image)
    assert not v.confirms(0, -1.0, 90.0)
    assert v.error is not None and "simulated failure" in v.error


def test_failed_features_carry_their_error_into_the_verification() -> None:
    features = lf.Features(np.zeros((0, 2), np.float32), None, np.zeros((0, 0), np.uint8), "ValueError: x")
    good = lf.extract(np.asarray(textured_image(7, (200, 150))))
    assert lf.compare(features, good).error == "ValueError: x"
    assert lf.compare(good, features).error == "ValueError: x"
