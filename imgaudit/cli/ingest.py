"""``imgaudit ingest``, ``enqueue``, ``check`` and ``demo``: images in, verdicts out.

``imgaudit.bootstrap``, the sources and the value types are imported inside the commands: they load
numpy, ONNX Runtime and SQLAlchemy (seconds), which ``--help`` and the other groups' commands never need.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from imgaudit.cli.common import (
    ConfigOpt,
    JsonOpt,
    TargetArg,
    command_settings,
    emit,
    errors,
    moderation_lines,
    plain,
    with_totals_progress,
)
from imgaudit.cli.output import cell, clean, console, out, safe

if TYPE_CHECKING:
    from imgaudit.services.dedup import IngestSummary
    from imgaudit.types import Enqueued


def ingest(
    target: TargetArg,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    batch_size: Annotated[int, typer.Option(help="Images per pipeline batch.", min=1, max=1024)] = 64,
) -> None:
    """Add images to the queue and process it: decode, hash, embed, decide unique/duplicate, index.

    Resumable: images already known (same path or URL) are skipped, and unfinished ones are picked up.
    """
    from imgaudit.bootstrap import dedup_service, open_source

    def run(report: Callable[[int, int], None]) -> IngestSummary:
        done = todo = 0

        def queued(enqueued: Enqueued, to_process: int) -> None:
            nonlocal todo
            todo = to_process
            if not as_json:
                console.print(
                    f"queued {enqueued.added} new, {enqueued.skipped} already known; {todo} to process"
                )
                _print_refusals(enqueued.refusals)
            report(0, todo)

        def step(n: int, _report: object) -> None:
            nonlocal done
            done += n
            report(done, todo)

        return svc.ingest(source, batch_size=batch_size, on_queued=queued, progress=step)

    with command_settings(config) as settings:
        source = open_source(settings, target)
        with dedup_service(settings) as svc:
            summary = with_totals_progress("ingest", run, as_json)
        if as_json:
            emit({"event": "ingest", **summary.as_dict()})
            return
        if summary.reclaimed:
            console.print(f"took back {summary.reclaimed} items claimed by an ingest that had died")
        if summary.still_leased:
            until = summary.leased_until.isoformat(timespec="seconds") if summary.leased_until else "?"
            console.print(
                f"{summary.still_leased} items are still leased by another process (until {until}); "
                "they are processed when it finishes or its lease runs out",
                markup=False,
            )
        out.print(
            f"processed {summary.processed} in {summary.seconds:.1f}s "
            f"({summary.images_per_second:.1f} img/s): {summary.duplicates} duplicates, "
            f"{summary.failed} failed"
        )
        if summary.moderation:
            out.print(
                clean(
                    "moderation: "
                    + ", ".join(f"{k} {summary.moderation.get(k, 0)}" for k in ("pass", "review", "violate"))
                    + (
                        " (" + ", ".join(f"{k} {v}" for k, v in summary.reasons.most_common()) + ")"
                        if summary.reasons
                        else ""
                    )
                ),
                markup=False,
            )
        if summary.errors:
            out.print(
                clean("failures: " + ", ".join(f"{k} {v}" for k, v in summary.errors.most_common())),
                markup=False,
            )


def enqueue(target: TargetArg, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Add images to the queue without processing them (a running worker picks them up)."""
    from imgaudit.bootstrap import items_service, open_source

    with command_settings(config) as settings:
        source = open_source(settings, target)
        with items_service(settings) as svc:
            enqueued = svc.enqueue_source(source)
        added, known = enqueued
        refusals = dict(enqueued.refusals)
        if as_json:
            emit(
                {
                    "event": "enqueue",
                    "enqueued": added,
                    "skipped_known": known,
                    "refused": sum(refusals.values()),
                    "refusals": refusals,
                }
            )
        else:
            out.print(f"queued {added} new, {known} already known")
            _print_refusals(refusals)


def _print_refusals(refusals: dict[str, int]) -> None:
    """Entries of the folder or list that became failed items at once (each with its reason)."""
    if refusals:
        detail = ", ".join(f"{k} {v}" for k, v in sorted(refusals.items()))
        console.print(
            clean(f"refused {sum(refusals.values())} entries ({detail}); see imgaudit stats"), markup=False
        )


def check(
    images: Annotated[list[str], typer.Argument(help="Image files or URLs to check.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check images without storing them: copy of something indexed? and the moderation verdict
    (pass / review / violate) with the evidence behind it."""
    from imgaudit.bootstrap import dedup_service
    from imgaudit.types import ImageRef, moderation_signals_json, reasons_json

    with command_settings(config) as settings:
        refs = [
            ImageRef(i, "url")
            if i.startswith(("http://", "https://"))
            else ImageRef(str(Path(i).resolve()), "path")
            for i in images
        ]
        with dedup_service(settings) as svc:
            results = svc.check(refs)
        failed = False
        for r in results:
            row: dict[str, Any] = {"image": r.ref.uri}
            if r.verdict is None:
                failed = True
                row.update(status="failed", error_reason=r.error_reason, error=r.error)
            else:
                v = r.verdict
                row.update(
                    decision=v.decision.value,
                    stage=v.stage.value,
                    score=v.score,
                    duplicate_of=v.duplicate_of,
                    original=r.original.uri if r.original else None,
                    detail=v.detail,
                )
                if r.moderation is not None:
                    row["moderation"] = r.moderation.decision.value
                    row["reasons"] = reasons_json(r.moderation)
                if r.signals is not None:
                    row["signals"] = moderation_signals_json(r.signals)
            if as_json:
                emit(row)
            elif r.verdict is None:
                out.print(f"{safe(r.ref.uri)}: [red]failed[/red] ({safe(r.error_reason)}: {safe(r.error)})")
            else:
                v = r.verdict
                if v.decision == "duplicate":
                    out.print(
                        f"{safe(r.ref.uri)}: [yellow]duplicate[/yellow] of #{v.duplicate_of} "
                        f"{safe(row['original'])} (score {v.score:.3f}, stage {v.stage.value})"
                    )
                else:
                    near = f", nearest cosine {v.score:.3f}" if v.score is not None else ""
                    out.print(f"{safe(r.ref.uri)}: [green]unique[/green]{near}")
                for line in moderation_lines(row.get("moderation"), row.get("reasons")):
                    out.print(line)
        if failed:
            raise typer.Exit(1)


def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where samples, data and the report go.")] = Path(
        "demo"
    ),
    as_json: JsonOpt = False,
) -> None:
    """Build a sample set offline, ingest it, print the duplicate pairs and write an HTML report."""
    from imgaudit.bootstrap import dedup_service
    from imgaudit.services.demo import run_demo

    with errors():
        result = run_demo(out_dir, dedup_service)
        if as_json:
            emit({"event": "demo", **result})
            return
        plain(f"samples: {result['samples']} images in {result['sample_dir']}")
        s = result["summary"]
        out.print(
            f"ingested {s['processed']} in {s['seconds']}s ({s['images_per_second']} img/s), "
            f"{s['duplicates']} duplicates, {s['failed']} failed"
        )
        table = Table("duplicate", "original", "score", "stage")
        for p in result["pairs"]:
            table.add_row(cell(p["duplicate"]), cell(p["original"]), f"{p['score']:.3f}", cell(p["stage"]))
        out.print(table)
        e = result["evaluation"]
        out.print(
            f"against the known answers: {e['true_positives']} right, {e['false_positives']} wrong, "
            f"{e['missed']} missed"
        )
        if s.get("moderation"):
            m = s["moderation"]
            why = ", ".join(
                f"{k} {v}" for k, v in sorted(s.get("reasons", {}).items(), key=lambda kv: -kv[1])
            )
            plain(
                f"moderation: {m.get('pass', 0)} pass, {m.get('review', 0)} review, "
                f"{m.get('violate', 0)} violate" + (f" ({why}); `imgaudit explain ID` says why" * bool(why))
            )
        plain(f"report: {result['report']}")
