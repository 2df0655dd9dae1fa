"""``imgaudit explain``, ``status``, ``recalc`` and ``reset``: one item, or all of them, after the fact.

``imgaudit.bootstrap`` is imported inside the commands: it loads numpy, ONNX Runtime and SQLAlchemy
(seconds), which ``--help`` and the other groups' commands never need.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from imgaudit.cli.common import ConfigOpt, JsonOpt, KeyArg, command_settings, emit, moderation_lines, plain
from imgaudit.cli.output import cell, clean, out, safe

STATUS_FIELDS = (
    "id",
    "uri",
    "external_key",
    "status",
    "decision",
    "duplicate_of",
    "score",
    "stage",
    "evidence",
    "attempts",
    "error_reason",
    "last_error",
    "processed_by",
    "processed_at",
)


def _spellings(key: str) -> Iterator[str]:
    """Other ways the store may know ``key``: a path that exists here is stored absolute. A generator, so
    the file system is only asked when the key itself matches nothing."""
    if Path(key).exists():
        yield str(Path(key).resolve())


def explain(key: KeyArg, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Why an ingested image got its verdicts: the duplicate evidence, each moderation reason, and the
    signals behind them (OCR lines, codes, NSFW score, quality, labels, classifier)."""
    from imgaudit.bootstrap import items_service

    with command_settings(config) as settings:
        with items_service(settings) as svc:
            found = svc.explain(key, also=_spellings(key))
        if as_json:
            emit(found.as_dict())
            return
        rec, original = found.item, found.original
        plain(f"#{rec.id} {rec.uri}")
        if rec.status != "done":
            plain(
                f"  status {rec.status}"
                + (f": {rec.error_reason}: {rec.last_error}" if rec.error_reason else "")
            )
            return
        if rec.decision == "duplicate" and original is not None:
            out.print(
                f"  dedup: [yellow]duplicate[/yellow] of #{original.id} {safe(original.uri)} "
                f"(stage {safe(rec.stage)}, score {rec.score:.3f})"
            )
        else:
            near = f" (nearest cosine {rec.score:.3f})" if rec.score is not None else ""
            out.print(f"  dedup: [green]unique[/green]{near}")
        if rec.evidence:
            plain("    evidence: " + ", ".join(f"{k} {v:.3g}" for k, v in rec.evidence.items()))
        if rec.moderation is None:
            plain("  moderation: not run")
            return
        for line in moderation_lines(rec.moderation, rec.reasons):
            out.print(line)
        _print_signals(rec.moderation_signals or {})


def _print_signals(sig: Mapping[str, Any]) -> None:
    """The moderation signals of an item: what the OCR read, the codes, NSFW, quality, labels, classifier."""
    plain("  signals:")
    ocr = sig.get("ocr")
    if ocr is None:
        plain("    ocr: off")
    elif not ocr:
        plain("    ocr: no text" if sig.get("text_found") is False else "    ocr: text seen, none read")
    else:
        for ln in ocr:
            plain(f"    ocr {ln['score']:.2f}: {ln['text']}")
    codes = sig.get("codes")
    plain(
        "    codes: "
        + ("off" if codes is None else ", ".join(f"{c['format']} {c['text']}" for c in codes) or "none")
    )
    nsfw = sig.get("nsfw")
    if nsfw is not None:
        plain(f"    nsfw: {nsfw:.3f}")
    elif sig.get("skin") is not None:
        plain(f"    nsfw: not scored (skin-coloured pixels {sig['skin']:.0%}, below the floor)")
    else:
        plain("    nsfw: off")
    q = sig.get("quality")
    if q:
        plain(
            f"    quality: sharpness {q['sharpness']:.0f}, contrast {q['contrast']:.1f}, "
            f"one colour {q['dominant_fraction']:.0%}, {q['width']}x{q['height']}"
        )
    if sig.get("labels"):
        plain("    labels: " + ", ".join(f"{n} {p:.2f}" for n, p in sig["labels"]))
    cls = sig.get("classifier")
    if cls:
        probs = ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(cls["probabilities"].items(), key=lambda kv: -kv[1])
        )
        plain(f"    classifier {cls['model']}: {probs}")


def status(key: KeyArg, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """One item's current state and history."""
    from imgaudit.bootstrap import items_service

    with command_settings(config) as settings:
        with items_service(settings) as svc:
            found = svc.history(key, also=_spellings(key))
        if as_json:
            emit(found.as_dict())
            return
        d = found.item.as_dict()
        for k in STATUS_FIELDS:
            if d.get(k) is not None:
                plain(f"{k:>14}: {d[k]}")
        table = Table("at", "event", "worker", "detail")
        for h in found.events:
            table.add_row(str(h["at"]), cell(h["event"]), cell(h["worker"]), cell(h["detail"]))
        out.print(table)


def recalc(
    permanent: Annotated[bool, typer.Option(help="Also re-queue permanent failures.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-queue failed items for another attempt (retryable ones; with --permanent, all)."""
    from imgaudit.bootstrap import items_service

    with command_settings(config) as settings:
        with items_service(settings) as svc:
            n = svc.requeue_failed(permanent=permanent)
        if as_json:
            emit({"event": "recalc", "requeued": n})
        else:
            out.print(f"re-queued {n} failed items")


def reset(
    config: ConfigOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete every image record, the indexes and the thumbnails (the images themselves are untouched)."""
    from imgaudit.bootstrap import dedup_service

    with command_settings(config) as settings:
        if not yes and not typer.confirm(f"Delete all imgaudit data in {clean(settings.data_dir)}?"):
            raise typer.Exit(1)
        with dedup_service(settings) as svc:
            svc.reset()
        if as_json:
            emit({"event": "reset", "data_dir": str(settings.data_dir)})
        else:
            plain(f"reset {settings.data_dir}")
