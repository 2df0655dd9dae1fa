"""Copy-detection benchmark: imgaudit's cascade against the legacy pHash rule, in one run.

    python bench/dedup.py --photos DIR       # DIR from ../shared/data/fetch-dev-photos.sh DIR

Builds (once, cached) references, transformed-copy queries and distractor queries from the dev photos
(bench/transforms.py), ingests the references through the real service (timed: decode + hashes +
embedding + lookup + store + index), then checks every query. Prints one markdown table:
- uAP (ISC2021 style: all (query, reference, score) predictions pooled and ranked),
- recall at precision 0.99 and 0.95 over the pooled ranking,
- recall, wrong matches and distractor false duplicates at the *default* thresholds,
- per-transform recall at the defaults,
- images/s, beside a bare imagehash pHash loop over the same reference files.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transforms import build_benchmark

from imgaudit.bootstrap import build_encoder, dedup_service
from imgaudit.config import load_settings
from imgaudit.policy.cascade import decide, rank_candidates
from imgaudit.types import ImageRef

LEGACY_HAMMING = 5
TOP_K = 10


def micro_ap(preds: list[tuple[float, bool]], n_positives: int) -> float:
    """ISC2021 uAP: pooled predictions sorted by score; average precision over recall steps."""
    if not preds or not n_positives:
        return 0.0
    order = sorted(preds, key=lambda p: -p[0])
    hits = np.cumsum([ok for _, ok in order])
    precision = hits / np.arange(1, len(order) + 1)
    return float(sum(p for p, (_, ok) in zip(precision, order, strict=True) if ok) / n_positives)


def recall_at_precision(preds: list[tuple[float, bool]], n_positives: int, target: float) -> float:
    order = sorted(preds, key=lambda p: -p[0])
    hits = np.cumsum([ok for _, ok in order])
    precision = hits / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(precision >= target)
    return float(hits[ok[-1]] / n_positives) if len(ok) else 0.0


def family(transform: str) -> str:
    return "chain" if transform.startswith("chain:") else transform


def evaluate(
    name: str,
    per_query: dict[str, list[tuple[str, float]]],
    decisions: dict[str, str | None],
    rows: dict[str, dict],
    seconds: float,
    n_images: int,
) -> dict:
    """per_query: query id -> ranked (ref id, score); decisions: query id -> matched ref id or None."""
    queries = [r for r in rows.values() if r["role"] in ("query", "distractor")]
    positives = sum(1 for r in queries if r["role"] == "query")
    preds = []
    for q in queries:
        for ref, score in per_query.get(q["id"], [])[:TOP_K]:
            preds.append((score, ref == q["ref"]))
    by_t: dict[str, list[bool]] = defaultdict(list)
    right = wrong = false_dup = 0
    for q in queries:
        got = decisions.get(q["id"])
        if q["role"] == "query":
            by_t[family(q["transform"])].append(got == q["ref"])
            right += got == q["ref"]
            wrong += got is not None and got != q["ref"]
        elif got is not None:
            false_dup += 1
    return {
        "method": name,
        "uAP": micro_ap(preds, positives),
        "R@P99": recall_at_precision(preds, positives, 0.99),
        "R@P95": recall_at_precision(preds, positives, 0.95),
        "recall@default": right / positives,
        "wrong_match": wrong,
        "distractor_false_dup": false_dup,
        "n_distractors": sum(1 for q in queries if q["role"] == "distractor"),
        "per_transform": {t: sum(v) / len(v) for t, v in sorted(by_t.items())},
        "images_per_s": n_images / seconds if seconds else 0.0,
    }


def run_legacy(rows: dict[str, dict], root: Path) -> tuple[dict, dict]:
    refs = [r for r in rows.values() if r["role"] == "ref"]
    queries = [r for r in rows.values() if r["role"] != "ref"]
    t = time.perf_counter()
    ref_hashes = [imagehash.phash(Image.open(root / r["path"])) for r in refs]
    ref_seconds = time.perf_counter() - t
    ref_bits = np.stack([h.hash.ravel() for h in ref_hashes])
    per_query, rule = {}, {}
    for q in queries:
        qb = imagehash.phash(Image.open(root / q["path"])).hash.ravel()
        d = (ref_bits != qb).sum(axis=1)
        order = np.argsort(d, kind="stable")[:TOP_K]
        per_query[q["id"]] = [(refs[i]["id"], 1.0 - d[i] / 64.0) for i in order]
        rule[q["id"]] = refs[order[0]]["id"] if d[order[0]] <= LEGACY_HAMMING else None
    rank = evaluate(
        "imagehash pHash ranking", per_query, {k: None for k in rule}, rows, ref_seconds, len(refs)
    )
    rank["decides"] = False  # a ranking only: no threshold, so no decisions to count
    legacy = evaluate(
        f"legacy rule (pHash Hamming <= {LEGACY_HAMMING})", per_query, rule, rows, ref_seconds, len(refs)
    )
    return legacy, rank


def run_imgaudit(rows: dict[str, dict], root: Path, work: Path, threads: int) -> tuple[dict, dict, dict]:
    settings = load_settings(data_dir=work / "data", models={"threads": threads})
    encoder = build_encoder(settings)
    encoder.encode([np.zeros((64, 64, 3), np.uint8)])  # load the model outside the timed part
    refs = [r for r in rows.values() if r["role"] == "ref"]
    queries = [r for r in rows.values() if r["role"] != "ref"]
    with dedup_service(settings, encoder) as svc:
        svc.reset()
        svc.enqueue([ImageRef(str((root / r["path"]).resolve())) for r in refs], "bench")
        t = time.perf_counter()
        summary = svc.process_queue()
        ingest_seconds = time.perf_counter() - t
        by_uri = {r.uri: r.id for r, _ in []}
        store_ids = {}
        for r in refs:
            rec = svc.store.find_by_uri(str((root / r["path"]).resolve()))
            store_ids[rec.id] = r["id"]
        pipe = svc.pipeline
        per_query, decisions, cosine_only = {}, {}, {}
        t = time.perf_counter()
        for start in range(0, len(queries), 64):
            chunk = queries[start : start + 64]
            analysed = pipe.analyse([ImageRef(str(root / q["path"])) for q in chunk], defaultdict(float))
            for q, a in zip(chunk, analysed, strict=True):
                lk = pipe.lookups(a.signals, {})
                verify = pipe.verifier(a)

                v = decide(lk, verify, settings.dedup)
                if q["role"] == "distractor" and v.duplicate_of:
                    print(
                        f"distractor flagged: {q['path']} ~ {store_ids[v.duplicate_of]} {v.stage} {v.score} "
                        f"{v.detail}",
                        file=sys.stderr,
                    )
                decisions[q["id"]] = store_ids.get(v.duplicate_of) if v.duplicate_of else None
                per_query[q["id"]] = [
                    (store_ids[c], s) for c, s in rank_candidates(lk, verify, settings.dedup)
                ]
                cosine_only[q["id"]] = [(store_ids[c], s) for c, s in lk.neighbours]
        query_seconds = time.perf_counter() - t
        del by_uri
    cascade = evaluate(
        "imgaudit cascade (defaults)", per_query, decisions, rows, ingest_seconds, summary.processed
    )
    cascade["check_images_per_s"] = len(queries) / query_seconds
    cascade["ingest_timings"] = {k: round(v, 2) for k, v in summary.timings.items()}
    thr = settings.dedup.embed_duplicate
    cos_dec = {q: (lst[0][0] if lst and lst[0][1] >= thr else None) for q, lst in cosine_only.items()}
    cos = evaluate(
        f"imgaudit descriptor cosine only (>= {thr})",
        cosine_only,
        cos_dec,
        rows,
        ingest_seconds,
        summary.processed,
    )
    return cascade, cos, {"ingest": summary.as_dict()}


def table(results: list[dict]) -> str:
    head = (
        "| method | µAP | recall @ P≥0.99 | recall @ P≥0.95 | recall at defaults | wrong matches | "
        "distractors flagged | images/s |\n|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['method']} | {r['uAP']:.3f} | {r['R@P99']:.3f} | {r['R@P95']:.3f} | "
        + (
            f"{r['recall@default']:.3f} | {r['wrong_match']} | "
            f"{r['distractor_false_dup']} / {r['n_distractors']}"
            if r.get("decides", True)
            else "– | – | –"
        )
        + f" | {r['images_per_s']:.1f} |\n"
        for r in results
    )
    transforms = sorted({t for r in results for t in r["per_transform"]})
    results = [r for r in results if r.get("decides", True)]  # per-transform recall needs decisions
    per = (
        "\n| transform | "
        + " | ".join(r["method"] for r in results)
        + " |\n|---|"
        + "---|" * len(results)
        + "\n"
    )
    per += "".join(
        f"| {t} | " + " | ".join(f"{r['per_transform'].get(t, 0):.2f}" for r in results) + " |\n"
        for t in transforms
    )
    return head + body + per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, required=True, help="folder made by fetch-dev-photos.sh")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--n-refs", type=int, default=200)
    ap.add_argument("--queries-per-ref", type=int, default=2)
    ap.add_argument("--distractors", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all cores)")
    args = ap.parse_args()

    set_dir = args.out / f"set-{args.n_refs}-{args.queries_per_ref}-{args.distractors}-{args.seed}"
    if not (set_dir / "bench.jsonl").is_file():
        build_benchmark(
            args.photos / "manifest.jsonl",
            set_dir,
            n_refs=args.n_refs,
            queries_per_ref=args.queries_per_ref,
            n_distractors=args.distractors,
            seed=args.seed,
        )
    rows = {r["id"]: r for r in map(json.loads, (set_dir / "bench.jsonl").read_text().splitlines())}
    counts = Counter(r["role"] for r in rows.values())
    print(f"set: {dict(counts)} in {set_dir}", file=sys.stderr)

    legacy, rank = run_legacy(rows, set_dir)
    with tempfile.TemporaryDirectory() as tmp:
        cascade, cos, extra = run_imgaudit(rows, set_dir, Path(tmp), args.threads)
    results = [cascade, cos, legacy, rank]
    md = table(results)
    speed = (
        f"\nIngest: imgaudit {cascade['images_per_s']:.1f} images/s (decode + hashes + embedding + lookup + "
        f"store + index) vs bare imagehash pHash loop {legacy['images_per_s']:.1f} images/s over the same "
        f"{counts['ref']} reference JPEGs: ratio {cascade['images_per_s'] / legacy['images_per_s']:.2f}×. "
        f"Check: {cascade['check_images_per_s']:.1f} images/s.\nIngest stage seconds: "
        f"{cascade['ingest_timings']}\n"
    )
    print(md + speed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dedup.json").write_text(json.dumps({"results": results, **extra}, indent=1, default=str))


if __name__ == "__main__":
    main()
