"""Descriptor design study: which pooling, framing and flip handling make the best copy detector?

    python bench/descriptor.py --set bench/results/set-200-2-200-0     # a set made by bench/dedup.py

Raw descriptor cosine only (no pHash, no verification), so the variants are compared on equal terms:
µAP over pooled (query, reference, cosine) predictions, recall at precision 0.99, and the mean cosine of
the hardest negatives (the distractors' best match). Also PCA whitening fitted on a disjoint half of
the references, to see whether learned whitening pays for itself on this kind of data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dedup import micro_ap, recall_at_precision

from imgaudit.config import load_settings
from imgaudit.media.decode import decode
from imgaudit.models.session import OrtSession
from imgaudit.models.visual import VisualEncoder, l2n

VARIANTS = [
    ("mean", "whole", False),
    ("gem", "whole", False),
    ("max", "whole", False),
    ("gem", "center", False),
    ("gem", "whole", True),
    ("mean", "whole", True),
]


def scores(ref_desc: np.ndarray, q_desc: np.ndarray, rows: list[dict], ref_ids: list[str]) -> dict:
    sims = q_desc @ ref_desc.T
    preds, positives, neg_best = [], 0, []
    for q, s in zip(rows, sims, strict=True):
        top = np.argsort(-s)[:10]
        positives += q["role"] == "query"
        preds += [(float(s[i]), ref_ids[i] == q["ref"]) for i in top]
        if q["role"] == "distractor":
            neg_best.append(float(s[top[0]]))
    return {
        "uAP": micro_ap(preds, positives),
        "R@P99": recall_at_precision(preds, positives, 0.99),
        "distractor_best_cos_p99": float(np.percentile(neg_best, 99)) if neg_best else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", type=Path, required=True)
    args = ap.parse_args()
    rows = [json.loads(line) for line in (args.set / "bench.jsonl").read_text().splitlines()]
    refs = [r for r in rows if r["role"] == "ref"]
    queries = [r for r in rows if r["role"] != "ref"]
    settings = load_settings()

    def pixels(r: dict) -> np.ndarray:
        return decode((args.set / r["path"]).read_bytes(), max_pixels=10**8, max_side=640).pixels

    ref_px = [pixels(r) for r in refs]
    q_px = [pixels(r) for r in queries]
    from imgaudit.models.export import VISUAL_MODEL_NAME, export_efficientnet_lite0

    path = settings.cache_dir / VISUAL_MODEL_NAME
    if not path.is_file():
        export_efficientnet_lite0(path)
    session = OrtSession(path)
    print("| pooling | framing | flip-summed | µAP | recall @ P≥0.99 | p99 distractor cosine | ms/image |")
    print("|---|---|---|---|---|---|---|")
    best = None
    for pooling, framing, flip in VARIANTS:
        enc = VisualEncoder(session, pooling=pooling, framing=framing, flip_invariant=flip)
        t = time.perf_counter()
        rd = enc.encode(ref_px).descriptors
        ms = (time.perf_counter() - t) / len(ref_px) * 1000
        qd = enc.encode(q_px).descriptors
        s = scores(rd, qd, queries, [r["id"] for r in refs])
        print(
            f"| {pooling} | {framing} | {'yes' if flip else 'no'} | {s['uAP']:.3f} | {s['R@P99']:.3f} | "
            f"{s['distractor_best_cos_p99']:.3f} | {ms:.1f} |"
        )
        if pooling == "gem" and framing == "whole" and flip:
            best = (rd, qd)
    # PCA whitening fitted on the first half of the references' descriptors, evaluated on the rest.
    rd, qd = best
    half = len(refs) // 2
    fit = rd[:half]
    mu = fit.mean(axis=0)
    _, sv, vt = np.linalg.svd(fit - mu, full_matrices=False)
    for dims in (64, 96):
        proj = vt[:dims].T / np.maximum(sv[:dims], 1e-6)
        ids = [r["id"] for r in refs[half:]]
        keep = [i for i, q in enumerate(queries) if q["role"] == "distractor" or q["ref"] in set(ids)]
        w_r, w_q = l2n((rd[half:] - mu) @ proj), l2n((qd[keep] - mu) @ proj)
        s = scores(w_r, w_q, [queries[i] for i in keep], ids)
        plain = scores(rd[half:], qd[keep], [queries[i] for i in keep], ids)
        print(
            f"\nPCA-whitened to {dims} dims (fitted on {half} other references): µAP {s['uAP']:.3f}, "
            f"R@P99 {s['R@P99']:.3f} vs unwhitened on the same half: µAP {plain['uAP']:.3f}, "
            f"R@P99 {plain['R@P99']:.3f}"
        )


if __name__ == "__main__":
    main()
