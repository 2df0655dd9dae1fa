"""The dedup decision cascade: exact -> pHash -> embedding -> geometric verification.

Each stage is cheaper and more certain than the next; the first that decides wins and is recorded.
The cascade is a pure function of the lookups handed to it, so it can be tested without models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from imgaudit.config import DedupSettings
from imgaudit.signals.local_features import Verification
from imgaudit.types import Decision, Stage, Verdict


@dataclass(frozen=True, slots=True)
class Lookups:
    """What the indexes said about one image."""

    exact: tuple[int, Stage] | None  # original id and EXACT_BYTES / EXACT_PIXELS
    hash_neighbours: list[tuple[int, int]]  # (id, Hamming distance), nearest first
    neighbours: list[tuple[int, float]]  # (id, cosine), best first
    cosine_of: Callable[[int], float]  # cosine to any indexed id (for pHash candidates off the list)


Verifier = Callable[[int], Verification]  # candidate id -> geometric verification


def confirmed(v: Verification, cfg: DedupSettings) -> bool:
    return v.confirms(cfg.verify_min_inliers, cfg.verify_min_agreement, cfg.verify_max_distortion)


def match_score(cosine: float, verification: Verification | None, cfg: DedupSettings) -> float:
    """One ranking score per candidate, consistent with the decision: >= embed_duplicate iff duplicate.

    Verification moves a candidate of the uncertain band either up to the duplicate threshold
    (confirmed, ordered by pixel agreement) or below the band (rejected), keeping the cosine order
    within each group.
    """
    if verification is None:
        return cosine
    if confirmed(verification, cfg):
        return max(cosine, cfg.embed_duplicate) + max(verification.agreement, 0) * 1e-2
    return min(cosine, cfg.embed_verify) - 1e-3


def decide(lookups: Lookups, verify: Verifier, cfg: DedupSettings) -> Verdict:
    if lookups.exact is not None:
        original, stage = lookups.exact
        return Verdict(Decision.DUPLICATE, stage, 1.0, original)

    for cand, dist in lookups.hash_neighbours:
        if dist > cfg.phash_max_distance:
            break
        # A pHash match is trusted only if the descriptors do not contradict it: near-blank and
        # flat images share hashes without being copies.
        cos = lookups.cosine_of(cand)
        if cos >= cfg.embed_verify:
            return Verdict(
                Decision.DUPLICATE,
                Stage.PHASH,
                round(max(cos, cfg.embed_duplicate), 6),
                cand,
                {"hamming": dist, "cosine": round(cos, 6)},
            )

    if lookups.neighbours:
        best, cos = lookups.neighbours[0]
        if cos >= cfg.embed_duplicate:
            return Verdict(
                Decision.DUPLICATE, Stage.EMBEDDING, round(cos, 6), best, {"cosine": round(cos, 6)}
            )
    band = [(c, s) for c, s in lookups.neighbours if cfg.embed_verify <= s < cfg.embed_duplicate]
    first_rejected: Verification | None = None
    failed = 0  # verifications that could not run: decided without them, and the evidence says so
    for cand, cos in band[: cfg.verify_candidates]:
        v = verify(cand)
        failed += v.error is not None
        detail = {
            "cosine": round(cos, 6),
            "inliers": v.inliers,
            "agreement": round(v.agreement, 4),
            "distortion": round(v.distortion, 2),
        }
        if confirmed(v, cfg):
            return Verdict(
                Decision.DUPLICATE, Stage.VERIFIED, round(match_score(cos, v, cfg), 6), cand, detail
            )
        first_rejected = first_rejected or v
    if lookups.neighbours:
        cand, cos = lookups.neighbours[0]
        detail = {"nearest": cand, "cosine": round(cos, 6)}
        if first_rejected is not None:
            detail.update(inliers=first_rejected.inliers, agreement=round(first_rejected.agreement, 4))
        if failed:
            detail["verification_failed"] = failed
        return Verdict(Decision.UNIQUE, Stage.NONE, round(cos, 6), None, detail)
    return Verdict(Decision.UNIQUE, Stage.NONE, None, None)


def rank_candidates(lookups: Lookups, verify: Verifier, cfg: DedupSettings) -> list[tuple[int, float]]:
    """Every candidate with its match score (see ``match_score``), best first: what ``check --top-k``
    shows and what the benchmark ranks."""
    scores: dict[int, float] = {}
    if lookups.exact is not None:
        scores[lookups.exact[0]] = 1.0 + 1e-3
    for cand, dist in lookups.hash_neighbours:
        if dist <= cfg.phash_max_distance:
            cos = lookups.cosine_of(cand)
            if cos >= cfg.embed_verify:
                scores[cand] = max(scores.get(cand, -1.0), max(cos, cfg.embed_duplicate))
    verified = 0
    for cand, cos in lookups.neighbours:
        if cand in scores:
            continue
        if cfg.embed_verify <= cos < cfg.embed_duplicate and verified < cfg.verify_candidates:
            verified += 1
            scores[cand] = match_score(cos, verify(cand), cfg)
        else:
            scores[cand] = cos
    return sorted(scores.items(), key=lambda kv: -kv[1])
