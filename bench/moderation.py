"""Moderation benchmark, part (a): contact information drawn on photos, and the pipeline's speed.

    python bench/moderation.py --photos DIR                  # DIR made by ../shared/data/fetch-dev-photos.sh
    python bench/moderation.py --photos DIR --variant unseen # also the held-out set, side by side

The set (``bench/overlays.py``; built once per seed and cached in ``bench/results/moderation-set-<seed>/``
with ``labels.jsonl``, the held-out one in ``moderation-set-unseen-<seed>/``):

- 300 ``violate`` images, 50 per kind: phone (plain, spaced, dashed, dotted, full-width, Chinese numerals,
  mixed, with or without "电话/手机/Tel/call/+86"), wechat ("微信: abc_123", "VX：shop8888", ...), qq
  (with a cue), url / domain, email, and qr (a segno QR code with a weixin:// or https:// payload);
- 300 ``pass`` overlays of benign commercial text (prices, 包邮 / 正品保证 ..., sizes, dates, model and
  order numbers, brand-like words, payment mentions such as 微信支付 without an ID);
- 300 ``pass`` clean photos (no overlay).

Rendering varies font (Noto Sans / Serif CJK SC, Regular / Bold, WenQuanYi when present), size (from
~2.5 % of the height, at least 16 px, to banners), colour (some low contrast), position, rotation
(-20..20 degrees), opacity 0.55-1, box / outline / none, one or two lines, then downscaling and JPEG /
PNG / WebP re-encoding like a user upload; each rendering is checked to be legible. The ``unseen`` variant
uses other font families (WenQuanYi Zen Hei, fetched with ``apt-get download`` if missing; Noto Mono /
TC / JP faces; Latin fonts) and other templates (other cue words, +86 / landline / financial numerals,
obfuscated URLs and e-mails, QR codes with logos and other payloads, some 90-degree text). Rules are to
be tuned on the default set only; the unseen one says whether they generalise.

Accuracy (in-process, ``DedupService.check`` on a fresh data dir, nothing stored): an image is flagged
when a reason of category ``contact_info`` or ``qr_code`` asks for violate ("flagged violate"), or for
violate or review ("flagged violate-or-review"). Reported: precision, recall, recall per kind / format /
rendering condition, benign texts wrongly flagged (with the reason messages) and missed violations (with
what OCR read), seconds per image. Targets: P >= 0.98, R >= 0.95, no benign commercial text flagged.

Speed (real ingest: ``enqueue`` + ``process_queue``, each configuration on a fresh data dir, models
loaded and warmed before the clock starts): a mix of 300 images from distinct photos, 70 % with no text
(clean photos) and 30 % overlays, ingested with dedup only, moderation without OCR, and the full
pipeline; then the no-text part alone with and without moderation. Targets: full pipeline >= 5 images/s
on the mix, and no-text per-image time <= 1.5x dedup only.

Prints markdown tables; writes ``bench/results/moderation.json`` (and the tables to ``moderation.md``).
``--set KEY=VALUE`` tries other settings (``--set ocr_det_side=320``, ``--set decode.max_side=960``);
``--classifier`` then runs the classifier benchmark (``bench/classifier.py``, part b) with the same
``--photos`` / ``--out``, ``--classifier-args "--no-finetune"`` passing it more options.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from overlays import VIOLATE_KINDS, build_set

from imgaudit.bootstrap import build_encoder, dedup_service
from imgaudit.config import load_settings
from imgaudit.types import ImageRef

CONTACT_CATEGORIES = frozenset({"contact_info", "qr_code"})
CHECK_BATCH = 32
LIST_LIMIT = 20
TARGET_PRECISION, TARGET_RECALL = 0.98, 0.95
TARGET_MIX_RATE, TARGET_NO_TEXT_RATIO = 5.0, 1.5
BENIGN_ORDER = ("price", "promo", "size", "date", "model", "order", "brand", "payment", "clean")


# --------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------


def contact_flag(moderation: Any) -> str | None:
    """ "violate", "review" or None: the strongest contact-info / QR reason of a verdict."""
    if moderation is None:
        return None
    decisions = {str(r.decision) for r in moderation.reasons if r.category in CONTACT_CATEGORIES}
    if "violate" in decisions:
        return "violate"
    return "review" if "review" in decisions else None


def _ocr_text(signals: Any) -> list[str]:
    lines = getattr(signals, "ocr", None) if signals is not None else None
    return [f"{ln.text} ({ln.score:.2f})" for ln in lines or ()]


def _settings(data_dir: Path, base: dict[str, dict[str, Any]], moderation: dict[str, Any]) -> Any:
    """Settings on ``data_dir``: ``base`` groups (models, decode, ...) plus the moderation group."""
    return load_settings(data_dir=data_dir, moderation=moderation, **base)


def run_check(
    rows: Sequence[dict], set_dir: Path, moderation: dict[str, Any], base: dict[str, dict[str, Any]]
) -> tuple[list[dict], float]:
    """Check every image of the set on a fresh data dir; per-image outcomes and seconds per image."""
    out: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="imgaudit-mod-") as tmp:
        settings = _settings(Path(tmp) / "data", base, moderation)
        with dedup_service(settings) as svc:
            clean = [r for r in rows if r["kind"] == "clean"]
            warm = clean[:1] + [r for r in rows if r["kind"] == "phone"][:1]
            svc.check([ImageRef(str(set_dir / r["path"])) for r in warm])  # loads the models
            started = time.perf_counter()
            for start in range(0, len(rows), CHECK_BATCH):
                chunk = rows[start : start + CHECK_BATCH]
                results = svc.check([ImageRef(str(set_dir / r["path"])) for r in chunk])
                for row, res in zip(chunk, results, strict=True):
                    mod = getattr(res, "moderation", None)
                    out.append(
                        {
                            "id": row["id"],
                            "decision": str(mod.decision) if mod is not None else None,
                            "contact": contact_flag(mod),
                            "reasons": [
                                {
                                    "category": r.category,
                                    "decision": str(r.decision),
                                    "message": r.message,
                                    "kind": r.evidence.get("kind"),
                                }
                                for r in (mod.reasons if mod is not None else ())
                            ],
                            "ocr": _ocr_text(getattr(res, "signals", None)),
                            "text_found": getattr(getattr(res, "signals", None), "text_found", None),
                            "error": res.error,
                        }
                    )
                done = start + len(chunk)
                if done % (CHECK_BATCH * 5) == 0 or done == len(rows):
                    rate = done / (time.perf_counter() - started)
                    print(f"  checked {done}/{len(rows)} ({rate:.1f} images/s)", file=sys.stderr)
            seconds = time.perf_counter() - started
    return out, seconds / max(1, len(rows))


def _pr(rows: Sequence[dict], flagged: Sequence[bool]) -> dict[str, float | int]:
    tp = sum(f and r["label"] == "violate" for r, f in zip(rows, flagged, strict=True))
    fp = sum(f and r["label"] != "violate" for r, f in zip(rows, flagged, strict=True))
    positives = sum(r["label"] == "violate" for r in rows)
    return {
        "tp": tp,
        "fp": fp,
        "fn": positives - tp,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / positives if positives else 0.0,
    }


def _size_bucket(px: int) -> str:
    return "<20 px" if px < 20 else "20-31 px" if px < 32 else "32-63 px" if px < 64 else ">=64 px"


def _angle_bucket(angle: float) -> str:
    a = abs(angle)
    return "0°" if a == 0 else "90°" if a == 90 else "≤10°" if a <= 10 else "10-20°"


def _recall_by(rows: Sequence[dict], outcomes: dict[str, dict], key: Any) -> dict[str, dict[str, float]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["label"] == "violate":
            k = key(r)
            if k is not None:
                groups[str(k)].append(r)
    return {
        k: {
            "n": len(g),
            "violate": sum(outcomes[r["id"]]["contact"] == "violate" for r in g) / len(g),
            "any": sum(outcomes[r["id"]]["contact"] is not None for r in g) / len(g),
        }
        for k, g in sorted(groups.items())
    }


def evaluate(rows: Sequence[dict], outcomes: dict[str, dict], seconds_per_image: float) -> dict[str, Any]:
    """Precision / recall at both flag levels, per-kind and per-condition recall, error lists."""
    by_violate = [outcomes[r["id"]]["contact"] == "violate" for r in rows]
    by_any = [outcomes[r["id"]]["contact"] is not None for r in rows]
    benign_kinds: dict[str, dict[str, int]] = {}
    for kind in BENIGN_ORDER:
        g = [r for r in rows if r["label"] == "pass" and r["kind"] == kind]
        if g:
            benign_kinds[kind] = {
                "n": len(g),
                "violate": sum(outcomes[r["id"]]["contact"] == "violate" for r in g),
                "any": sum(outcomes[r["id"]]["contact"] is not None for r in g),
            }
    detected_as: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        if r["label"] == "violate":
            kinds = {x["kind"] for x in outcomes[r["id"]]["reasons"] if x["category"] in CONTACT_CATEGORIES}
            detected_as[r["kind"]].update(str(k) for k in kinds or {"(none)"})
    false_pos = [
        {
            "id": r["id"],
            "kind": r["kind"],
            "text": r["text"],
            "source_photo": r["source_photo"] if r["kind"] == "clean" else None,
            "level": outcomes[r["id"]]["contact"],
            "reasons": [
                x["message"] for x in outcomes[r["id"]]["reasons"] if x["category"] in CONTACT_CATEGORIES
            ],
        }
        for r in rows
        if r["label"] == "pass" and outcomes[r["id"]]["contact"] is not None
    ]
    misses = [
        {
            "id": r["id"],
            "kind": r["kind"],
            "format": r.get("format"),
            "text": r["text"] if r["kind"] != "qr" else r.get("payload"),
            "size_px": r.get("size_px"),
            "module_px": r.get("module_px"),
            "angle": r.get("angle"),
            "font": r.get("font"),
            "level": outcomes[r["id"]]["contact"],
            "ocr": outcomes[r["id"]]["ocr"],
            "text_found": outcomes[r["id"]].get("text_found"),
            "reasons": [x["message"] for x in outcomes[r["id"]]["reasons"]],
        }
        for r in rows
        if r["label"] == "violate" and outcomes[r["id"]]["contact"] != "violate"
    ]
    decisions = Counter(
        f"{r['label'] if r['kind'] != 'clean' else 'clean'}:{outcomes[r['id']]['decision']}" for r in rows
    )
    other_reasons = Counter(
        f"{'clean' if r['kind'] == 'clean' else r['label']}:{x['category']}:{x['decision']}"
        for r in rows
        for x in outcomes[r["id"]]["reasons"]
        if x["category"] not in CONTACT_CATEGORIES
    )
    return {
        "n": len(rows),
        "counts": dict(Counter(f"{r['label']}:{r['kind']}" for r in rows)),
        "flagged_violate": _pr(rows, by_violate),
        "flagged_violate_or_review": _pr(rows, by_any),
        "recall_per_kind": _recall_by(rows, outcomes, lambda r: r["kind"]),
        "recall_per_format": _recall_by(
            rows, outcomes, lambda r: f"{r['kind']}/{str(r.get('format', '')).replace('+2lines', '')}"
        ),
        "recall_by_size": _recall_by(
            rows, outcomes, lambda r: _size_bucket(int(r["size_px"])) if "size_px" in r else None
        ),
        "recall_by_angle": _recall_by(rows, outcomes, lambda r: _angle_bucket(float(r.get("angle", 0)))),
        "recall_by_background": _recall_by(rows, outcomes, lambda r: r.get("background")),
        "recall_by_contrast": _recall_by(rows, outcomes, lambda r: r.get("contrast_mode")),
        "recall_by_lines": _recall_by(rows, outcomes, lambda r: r.get("lines")),
        "recall_by_encoding": _recall_by(rows, outcomes, lambda r: r.get("encoding")),
        "recall_by_font": _recall_by(rows, outcomes, lambda r: r.get("font")),
        "benign_flagged": benign_kinds,
        "detected_as": {k: dict(v) for k, v in detected_as.items()},
        "false_positives": false_pos,
        "misses": misses,
        "decisions": dict(sorted(decisions.items())),
        "other_reasons": dict(sorted(other_reasons.items())),
        "errors": sum(1 for o in outcomes.values() if o["error"]),
        "error_examples": [o["error"] for o in outcomes.values() if o["error"]][:5],
        "seconds_per_image": seconds_per_image,
    }


# --------------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------------


def speed_mix(rows: Sequence[dict], n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(mix, no-text part): ``n`` images from distinct photo groups, 70 % clean photos, 30 % overlays
    (violating and benign alternately), so the ingest finds no copies inside the mix."""
    rng = random.Random(f"imgaudit-moderation-speed:{seed}")
    n_clean = round(n * 0.7)
    used: set[int] = set()
    clean = []
    for r in rows:
        if r["kind"] == "clean" and r["group"] not in used and len(clean) < n_clean:
            clean.append(r)
            used.add(r["group"])
    pools = [[r for r in rows if r["label"] == lab and r["kind"] != "clean"] for lab in ("violate", "pass")]
    for pool in pools:
        rng.shuffle(pool)
    text: list[dict] = []
    turn = 0
    while len(text) < n - n_clean and any(pools):
        pool = pools[turn % 2] or pools[(turn + 1) % 2]
        r = pool.pop()
        if r["group"] not in used:
            text.append(r)
            used.add(r["group"])
            turn += 1
    if len(clean) < n_clean or len(text) < n - n_clean:
        print(
            f"warning: speed mix has {len(clean)} clean + {len(text)} text images (distinct photos ran out)",
            file=sys.stderr,
        )
    mix = clean + text
    rng.shuffle(mix)
    return mix, clean


def ingest(
    name: str,
    paths: Sequence[Path],
    moderation: dict[str, Any],
    base: dict[str, dict[str, Any]],
    encoder: Any,
) -> dict[str, Any]:
    """Enqueue and process ``paths`` on a fresh data dir; the models are warmed up first."""
    with tempfile.TemporaryDirectory(prefix="imgaudit-speed-") as tmp:
        settings = _settings(Path(tmp) / "data", base, moderation)
        with dedup_service(settings, encoder) as svc:
            svc.check([ImageRef(str(p)) for p in paths[:4]])  # load and warm every model; stores nothing
            svc.enqueue([ImageRef(str(p)) for p in paths], "bench")
            summary = svc.process_queue()
    result = {"name": name, "settings": moderation, **summary.as_dict()}
    result["seconds_per_image"] = summary.seconds / summary.processed if summary.processed else 0.0
    print(
        f"  {name}: {summary.processed} images in {summary.seconds:.1f} s = "
        f"{summary.images_per_second:.2f} images/s",
        file=sys.stderr,
    )
    return result


def run_speed(
    rows: Sequence[dict],
    set_dir: Path,
    n: int,
    seed: int,
    moderation: dict[str, Any],
    base: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    mix, no_text = speed_mix(rows, n, seed)
    mix_paths = [(set_dir / r["path"]).resolve() for r in mix]
    no_text_paths = [(set_dir / r["path"]).resolve() for r in no_text]
    for p in mix_paths:  # page cache warm for every configuration alike
        p.read_bytes()
    encoder = build_encoder(load_settings(**base))
    off = {"enabled": False}
    runs = [
        ingest("mix: dedup only", mix_paths, off, base, encoder),
        ingest("mix: moderation without OCR", mix_paths, {**moderation, "ocr": False}, base, encoder),
        ingest("mix: full pipeline", mix_paths, moderation, base, encoder),
        ingest("no-text: dedup only", no_text_paths, off, base, encoder),
        ingest("no-text: full pipeline", no_text_paths, moderation, base, encoder),
    ]
    by = {r["name"]: r for r in runs}
    ratio = by["no-text: full pipeline"]["seconds_per_image"] / max(
        1e-9, by["no-text: dedup only"]["seconds_per_image"]
    )
    return {
        "mix": {
            "n": len(mix),
            "no_text": len(no_text),
            "text": len(mix) - len(no_text),
            "violate": sum(r["label"] == "violate" for r in mix),
        },
        "runs": runs,
        "no_text_ratio": ratio,
        "mix_full_images_per_second": by["mix: full pipeline"]["images_per_second"],
    }


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def _f(x: float) -> str:
    return f"{x:.3f}"


def _ok(good: bool) -> str:
    return "✅" if good else "❌"


def accuracy_tables(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    head = "| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    out = ["### Contact information: precision and recall\n", head]

    def row(label: str, fn: Any) -> None:
        out.append(f"| {label} | " + " | ".join(fn(results[n]) for n in names) + " |\n")

    for level, title in (("flagged_violate", "violate"), ("flagged_violate_or_review", "violate-or-review")):
        row(
            f"precision, flagged {title}",
            lambda r, lv=level: f"{_f(r[lv]['precision'])} {_ok(r[lv]['precision'] >= TARGET_PRECISION)}",
        )
        row(
            f"recall, flagged {title}",
            lambda r, lv=level: f"{_f(r[lv]['recall'])} {_ok(r[lv]['recall'] >= TARGET_RECALL)}",
        )
        row(f"TP / FP / FN, flagged {title}", lambda r, lv=level: "{tp} / {fp} / {fn}".format(**r[lv]))

    def benign(r: dict, kinds: Iterable[str]) -> str:
        b = [r["benign_flagged"][k] for k in kinds if k in r["benign_flagged"]]
        v, a, n = sum(x["violate"] for x in b), sum(x["any"] for x in b), sum(x["n"] for x in b)
        return f"{v} / {a} of {n}"

    row("benign overlays flagged (violate / any)", lambda r: benign(r, BENIGN_ORDER[:-1]))
    row("clean photos flagged (violate / any)", lambda r: benign(r, ["clean"]))
    row("seconds per image (check)", lambda r: f"{r['seconds_per_image']:.3f}")
    row("errors", lambda r: str(r["errors"]))
    out.append("\n### Recall per kind (flagged violate / violate-or-review)\n\n")
    out.append(head)
    for kind in VIOLATE_KINDS:
        row(
            kind,
            lambda r, k=kind: (
                f"{r['recall_per_kind'][k]['violate']:.2f} / {r['recall_per_kind'][k]['any']:.2f} "
                f"(n={r['recall_per_kind'][k]['n']})"
                if k in r["recall_per_kind"]
                else "–"
            ),
        )
    out.append("\n### Benign kinds flagged (violate / any, of n)\n\n")
    out.append(head)
    for kind in BENIGN_ORDER:
        row(
            kind,
            lambda r, k=kind: (
                "{violate} / {any} of {n}".format(**r["benign_flagged"][k])
                if k in r["benign_flagged"]
                else "–"
            ),
        )
    for title, key in (
        ("format", "recall_per_format"),
        ("text size (final px)", "recall_by_size"),
        ("rotation", "recall_by_angle"),
        ("background", "recall_by_background"),
        ("contrast", "recall_by_contrast"),
        ("lines", "recall_by_lines"),
        ("encoding", "recall_by_encoding"),
        ("font", "recall_by_font"),
    ):
        keys = sorted({k for n in names for k in results[n][key]})
        out.append(f"\n### Recall by {title} (flagged violate / violate-or-review)\n\n")
        out.append(f"| {title} | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n")
        for k in keys:
            cells = []
            for n in names:
                v = results[n][key].get(k)
                cells.append(f"{v['violate']:.2f} / {v['any']:.2f} (n={v['n']})" if v else "–")
            out.append(f"| {k} | " + " | ".join(cells) + " |\n")
    for n in names:
        r = results[n]
        out.append(f"\n### {n}: benign images flagged ({len(r['false_positives'])})\n\n")
        for fp in r["false_positives"][:LIST_LIMIT]:
            what = fp["text"].replace("\n", " / ") or f"(clean photo {fp['source_photo']})"
            out.append(f"- {fp['id']} [{fp['kind']}, {fp['level']}] “{what}” → {'; '.join(fp['reasons'])}\n")
        out.append(f"\n### {n}: violations not flagged violate ({len(r['misses'])})\n\n")
        for m in r["misses"][:LIST_LIMIT]:
            what = str(m["text"]).replace("\n", " / ")
            geometry = f"{m['size_px']} px" if m["size_px"] is not None else f"{m['module_px']} px/module"
            out.append(
                f"- {m['id']} [{m['kind']}/{m['format']}, {geometry}, {m['angle']}°, {m['font']}, "
                f"{m['level'] or 'not flagged'}] “{what}” — OCR: "
                f"{' | '.join(m['ocr']) or ('(no text detected)' if m['text_found'] is False else '(none)')}"
                + (f" — reasons: {'; '.join(m['reasons'])}" if m["reasons"] else "")
                + "\n"
            )
        out.append(f"\nOverall decisions: {r['decisions']}\n")
        if r["other_reasons"]:
            out.append(f"Other reasons: {r['other_reasons']}\n")
        if r["errors"]:
            out.append(f"Errors: {r['errors']}, e.g. {r['error_examples']}\n")
    return "".join(out)


def speed_table(speed: dict[str, Any]) -> str:
    m = speed["mix"]
    out = [
        f"\n### Ingest speed ({m['n']} images from distinct photos: {m['no_text']} with no text, "
        f"{m['text']} overlays of which {m['violate']} violating)\n\n",
        "| configuration | images | seconds | images/s | s / image | moderation outcomes |\n"
        "|---|---|---|---|---|---|\n",
    ]
    for r in speed["runs"]:
        out.append(
            f"| {r['name']} | {r['processed']} | {r['seconds']:.1f} | {r['images_per_second']:.2f} | "
            f"{r['seconds_per_image']:.3f} | {r.get('moderation') or '–'} |\n"
        )
    ratio, rate = speed["no_text_ratio"], speed["mix_full_images_per_second"]
    out.append(
        f"\nNo-text images, full pipeline vs dedup only: {ratio:.2f}× per image "
        f"(target ≤ {TARGET_NO_TEXT_RATIO}×) {_ok(ratio <= TARGET_NO_TEXT_RATIO)}; full pipeline on the mix: "
        f"{rate:.2f} images/s (target ≥ {TARGET_MIX_RATE}) {_ok(rate >= TARGET_MIX_RATE)}.\n"
    )
    out.append("\nStage seconds (summed over batches):\n\n")
    for r in speed["runs"]:
        out.append(f"- {r['name']}: {r['timings']}\n")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def _setting(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    if not key or not _:
        raise argparse.ArgumentTypeError("expected KEY=VALUE, e.g. ocr_side=1280")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def run_classifier_bench(args: argparse.Namespace) -> None:
    """Part (b): ``bench/classifier.py``'s own command line, with the same --photos and --out, when the
    module exists (``--classifier-args`` passes its other options, e.g. "--no-finetune --timing-n 0")."""
    try:
        from bench.classifier import main as classifier_main
    except ImportError as exc:
        print(f"--classifier: bench/classifier.py is not available ({exc})", file=sys.stderr)
        return
    argv = sys.argv
    sys.argv = [
        "bench/classifier.py",
        "--photos",
        str(args.photos),
        "--out",
        str(args.out / "classifier.json"),
        *shlex.split(args.classifier_args),
    ]
    try:
        classifier_main()
    finally:
        sys.argv = argv


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, required=True, help="folder made by fetch-dev-photos.sh")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--variant",
        choices=("default", "unseen"),
        default="default",
        help="unseen: also evaluate the held-out set (other fonts and templates), beside the default",
    )
    ap.add_argument("--violate", type=int, default=300, help="violating images (balanced over the kinds)")
    ap.add_argument("--benign", type=int, default=300, help="benign text overlays")
    ap.add_argument("--clean", type=int, default=300, help="clean photos")
    ap.add_argument("--speed-n", type=int, default=300, help="images in the speed mix (70 %% without text)")
    ap.add_argument("--no-speed", action="store_true", help="skip the ingest speed part")
    ap.add_argument("--no-accuracy", action="store_true", help="skip the contact-info accuracy part")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all cores)")
    ap.add_argument(
        "--set",
        dest="overrides",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the runs (repeatable): KEY is a moderation key (ocr_det_side=320; not applied to "
        "the dedup-only runs) or GROUP.KEY for another group (decode.max_side=960; applied to every run)",
    )
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached sets")
    ap.add_argument("--classifier", action="store_true", help="then run bench/classifier.py (part b)")
    ap.add_argument("--classifier-args", default="", help="extra options for bench/classifier.py")
    args = ap.parse_args(argv)
    moderation = {k: v for k, v in args.overrides if "." not in k}
    base: dict[str, dict[str, Any]] = {"models": {"threads": args.threads}}
    for key, value in args.overrides:
        if "." in key:
            group, _, name = key.partition(".")
            base.setdefault(group, {})[name] = value

    variants = ["default"] + (["unseen"] if args.variant == "unseen" else [])
    sets: dict[str, tuple[Path, list[dict]]] = {}
    for variant in variants:
        set_dir = args.out / (
            f"moderation-set-{args.seed}" if variant == "default" else f"moderation-set-unseen-{args.seed}"
        )
        t = time.perf_counter()
        rows = build_set(
            args.photos,
            set_dir,
            seed=args.seed,
            variant=variant,
            n_violate=args.violate,
            n_benign=args.benign,
            n_clean=args.clean,
            font_cache=args.out / "fonts",
            force=args.rebuild,
        )
        print(
            f"set {variant}: {len(rows)} images in {set_dir} ({time.perf_counter() - t:.0f} s)",
            file=sys.stderr,
        )
        sets[variant] = (set_dir, rows)

    report: dict[str, Any] = {
        "seed": args.seed,
        "moderation_overrides": moderation,
        "other_settings": base,
        "sets": {},
    }
    md = []
    if not args.no_accuracy:
        accuracy: dict[str, dict[str, Any]] = {}
        for variant, (set_dir, rows) in sets.items():
            print(f"checking the {variant} set ...", file=sys.stderr)
            outcomes, spi = run_check(rows, set_dir, moderation, base)
            accuracy[variant] = evaluate(rows, {o["id"]: o for o in outcomes}, spi)
            report["sets"][variant] = str(set_dir)
        report["accuracy"] = accuracy
        md.append(accuracy_tables(accuracy))
    if not args.no_speed:
        set_dir, rows = sets["default"]
        print("ingest speed ...", file=sys.stderr)
        report["speed"] = run_speed(rows, set_dir, args.speed_n, args.seed, moderation, base)
        md.append(speed_table(report["speed"]))
    if md:  # nothing measured (--no-accuracy --no-speed): keep the last report
        text = "\n".join(md)
        print(text)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "moderation.json").write_text(
            json.dumps(report, indent=1, ensure_ascii=False, default=str)
        )
        (args.out / "moderation.md").write_text(text, encoding="utf-8")
    if args.classifier:
        run_classifier_bench(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
