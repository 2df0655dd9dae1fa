"""The decision cascade, stage by stage, without models."""

from __future__ import annotations

import pytest

from imgaudit.config import DedupSettings
from imgaudit.policy.cascade import Lookups, decide, match_score, rank_candidates
from imgaudit.signals.local_features import Verification
from imgaudit.types import Decision, Stage

CFG = DedupSettings(
    phash_max_distance=4,
    embed_duplicate=0.86,
    embed_verify=0.6,
    verify_min_inliers=20,
    verify_min_agreement=0.8,
    verify_max_distortion=30,
)
COPY = Verification(60, 0.97, 2.0)
LOOKALIKE_KEYPOINTS = Verification(3, 0.0, 0.0)
LOOKALIKE_PIXELS = Verification(80, 0.55, 3.0)  # a stereo pair: keypoints agree, aligned pixels do not
PERSPECTIVE = Verification(80, 0.95, 45.0)  # the same wall seen from another viewpoint


def lookups(exact=None, hashes=(), neighbours=(), cos=None) -> Lookups:
    table = dict(neighbours) | (cos or {})
    return Lookups(exact, list(hashes), list(neighbours), lambda i: table.get(i, -1.0))


def never(_: int) -> int:
    raise AssertionError("verification should not run")


def test_exact_match_wins_and_points_at_the_original() -> None:
    v = decide(lookups(exact=(7, Stage.EXACT_BYTES), neighbours=[(3, 0.99)]), never, CFG)
    assert (v.decision, v.stage, v.duplicate_of, v.score) == (Decision.DUPLICATE, Stage.EXACT_BYTES, 7, 1.0)


def test_phash_within_threshold_needs_descriptor_agreement() -> None:
    v = decide(lookups(hashes=[(5, 3)], neighbours=[(5, 0.7)]), never, CFG)
    assert (v.decision, v.stage, v.duplicate_of) == (Decision.DUPLICATE, Stage.PHASH, 5)
    assert v.detail["hamming"] == 3
    # Flat images share hashes: a pHash hit whose descriptor disagrees is not a duplicate.
    v = decide(lookups(hashes=[(5, 0)], cos={5: 0.2}), never, CFG)
    assert v.decision == Decision.UNIQUE


def test_phash_beyond_threshold_falls_through() -> None:
    v = decide(lookups(hashes=[(5, 5)], neighbours=[(5, 0.5)]), never, CFG)
    assert v.decision == Decision.UNIQUE and v.stage == Stage.NONE and v.detail["nearest"] == 5


def test_embedding_above_threshold() -> None:
    v = decide(lookups(neighbours=[(9, 0.90), (4, 0.7)]), never, CFG)
    assert (v.decision, v.stage, v.duplicate_of, v.score) == (Decision.DUPLICATE, Stage.EMBEDDING, 9, 0.9)


def test_borderline_band_is_verified_geometrically() -> None:
    calls: list[int] = []

    def verify(cand: int) -> Verification:
        calls.append(cand)
        return {1: LOOKALIKE_KEYPOINTS, 2: COPY}[cand]

    v = decide(lookups(neighbours=[(1, 0.8), (2, 0.7), (3, 0.5)]), verify, CFG)
    assert calls == [1, 2]
    assert (v.decision, v.stage, v.duplicate_of) == (Decision.DUPLICATE, Stage.VERIFIED, 2)
    assert v.score >= CFG.embed_duplicate and v.detail["inliers"] == 60 and v.detail["agreement"] == 0.97


@pytest.mark.parametrize("lookalike", [LOOKALIKE_KEYPOINTS, LOOKALIKE_PIXELS, PERSPECTIVE])
def test_lookalike_rejected_by_verification(lookalike: Verification) -> None:
    v = decide(lookups(neighbours=[(1, 0.8)]), lambda c: lookalike, CFG)
    assert v.decision == Decision.UNIQUE and v.detail["inliers"] == lookalike.inliers


def test_match_score_agrees_with_the_decision() -> None:
    assert match_score(0.7, COPY, CFG) >= CFG.embed_duplicate
    assert match_score(0.8, LOOKALIKE_PIXELS, CFG) < CFG.embed_verify
    assert match_score(0.5, None, CFG) == 0.5


def test_rank_candidates_orders_verified_above_rejected() -> None:
    ranked = rank_candidates(
        lookups(neighbours=[(1, 0.8), (2, 0.7)]), lambda c: {1: LOOKALIKE_PIXELS, 2: COPY}[c], CFG
    )
    assert [c for c, _ in ranked] == [2, 1]


def test_empty_index_is_unique() -> None:
    v = decide(lookups(), never, CFG)
    assert v.decision == Decision.UNIQUE and v.score is None
