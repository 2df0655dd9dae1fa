"""``imgaudit`` commands. The only place (with the API) that prints, exits, or formats errors.

Untrusted text (file names, URLs, OCR, captions, error messages, config values) goes through
``imgaudit.cli.output`` (``safe`` inside markup, ``cell`` in tables) before it reaches the terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.progress import (
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from imgaudit.cli.app import App, json_error, json_mode
from imgaudit.cli.output import RATE, cell, clean, console, dumps, out, progress, safe
from imgaudit.config import Settings, config_file_in_use, load_settings
from imgaudit.errors import ImgauditError

__all__ = ["app", "cell", "clean", "console", "out", "safe"]

app = App(
    help="imgaudit: image review for e-commerce content.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = App(help="Show the configuration.", no_args_is_help=True)
worker_app = App(help="The always-on worker and its management.", no_args_is_help=True)
index_app = App(help="Maintain the vector and hash indexes.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(index_app, name="index")
app.add_typer(worker_app, name="worker")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file.", exists=True, dir_okay=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON Lines on stdout, for scripts.")]
TargetArg = Annotated[
    str, typer.Argument(help="A folder (recursive), an image file, or a .txt list of URLs.")
]

T = TypeVar("T")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("imgaudit")
        except PackageNotFoundError:  # running from a source tree that was never installed
            from imgaudit import __version__ as number
        out.print(f"imgaudit {number}", markup=False)
        raise typer.Exit()


@app.callback()
def _root(
    _show_version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True),
    ] = False,
) -> None:
    """imgaudit: image review for e-commerce content."""


def _settings(config: Path | None) -> Settings:
    return load_settings(config)


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(dumps(obj) + "\n")


@contextmanager
def _errors(as_json: bool | None = None) -> Iterator[None]:
    """Every ImgauditError becomes one clear line (with ``--json``: one JSON object, on stderr) and exit
    code 1; nothing else is swallowed. ``as_json`` defaults to the running command's ``--json``."""
    try:
        yield
    except (ImgauditError, FileNotFoundError) as exc:
        if as_json is None:
            as_json = json_mode()
        if isinstance(exc, ImgauditError):
            reason, message = exc.reason, exc.message
        else:
            reason, message = "not_found", str(exc)
        if as_json:
            json_error(reason, message)
        else:
            console.print(f"[red]error:[/red] {safe(message, multiline=True)}")
        raise typer.Exit(1) from exc


def _service(settings: Settings):
    from imgaudit.bootstrap import dedup_service

    return dedup_service(settings)


def _with_progress(total: int, label: str, fn: Callable[[Callable[[int], None]], T], quiet: bool) -> T:
    if quiet:
        return fn(lambda n: None)
    with progress(RATE) as bar:
        task = bar.add_task(label, total=total, rate="")

        def step(n: int) -> None:
            bar.advance(task, n)
            t = bar.tasks[0]
            if t.elapsed:
                bar.update(task, rate=f"{t.completed / t.elapsed:.1f} img/s")

        return fn(step)


STEP_LABELS = {
    "visual_model": "export the visual encoder to ONNX",
    "label_space": "embed the label space for search",
}


@contextmanager
def step_progress(quiet: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """One Rich bar per step of a one-time job, on stderr, fed ``(step, done so far, total)``; nothing
    in JSON mode."""
    if quiet:
        yield None
        return
    with progress(TimeElapsedColumn()) as bar:
        tasks: dict[str, Any] = {}

        def update(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(STEP_LABELS.get(step, step), total=total)
            bar.update(tasks[step], completed=done, total=total)

        yield update


@app.command()
def ingest(
    target: Annotated[
        str, typer.Argument(help="A folder (recursive), an image file, or a .txt list of URLs.")
    ],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    batch_size: Annotated[int, typer.Option(help="Images per pipeline batch.", min=1, max=1024)] = 64,
) -> None:
    """Add images to the queue and process it: decode, hash, embed, decide unique/duplicate, index.

    Resumable: images already known (same path or URL) are skipped, and unfinished ones are picked up.
    """
    from imgaudit.sources.files import source_for

    with _errors():
        settings = _settings(config)
        source = source_for(target, settings.fetch.cdn_base, follow_symlinks=settings.sources.follow_symlinks)
        with _service(settings) as svc:
            enqueued = svc.enqueue(source.refs(), source.name)
            added, known = enqueued
            pending = svc.store.counts()["status"]
            todo = sum(pending.get(s, 0) for s in ("queued", "processing", "failed_retryable"))
            if not as_json:
                console.print(f"queued {added} new, {known} already known; {todo} to process")
                _print_refusals(enqueued.refusals)
            summary = _with_progress(
                todo,
                "ingest",
                lambda step: svc.process_queue(lambda n, _r: step(n), batch_size=batch_size),
                as_json,
            )
            summary.count_enqueue(enqueued)
        if as_json:
            _emit({"event": "ingest", **summary.as_dict()})
        else:
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
                        + ", ".join(
                            f"{k} {summary.moderation.get(k, 0)}" for k in ("pass", "review", "violate")
                        )
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


@app.command()
def enqueue(
    target: TargetArg,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add images to the queue without processing them (a running worker picks them up)."""
    from imgaudit.bootstrap import open_store
    from imgaudit.sources.files import source_for

    with _errors():
        settings = _settings(config)
        source = source_for(target, settings.fetch.cdn_base, follow_symlinks=settings.sources.follow_symlinks)
        with open_store(settings) as store:
            enqueued = store.enqueue(source.refs(), source.name)
        added, known = enqueued
        refusals = dict(enqueued.refusals)
        if as_json:
            _emit(
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


MODERATION_COLOUR = {"pass": "green", "review": "yellow", "violate": "red"}


def _moderation_lines(decision: str | None, reasons: list[dict[str, Any]] | None) -> list[str]:
    if decision is None:
        return []
    colour = MODERATION_COLOUR.get(decision, "white")
    lines = [f"  moderation: [{colour}]{safe(decision)}[/{colour}]"]
    for r in reasons or []:
        c = MODERATION_COLOUR.get(str(r["decision"]), "white")
        lines.append(f"    - [{c}]{safe(r['decision'])}[/{c}] {safe(r['category'])}: {safe(r['message'])}")
    return lines


@app.command()
def check(
    images: Annotated[list[str], typer.Argument(help="Image files or URLs to check.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check images without storing them: copy of something indexed? and the moderation verdict
    (pass / review / violate) with the evidence behind it."""
    from imgaudit.types import ImageRef, moderation_signals_json, reasons_json

    with _errors():
        settings = _settings(config)
        refs = [
            ImageRef(i, "url")
            if i.startswith(("http://", "https://"))
            else ImageRef(str(Path(i).resolve()), "path")
            for i in images
        ]
        with _service(settings) as svc:
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
                _emit(row)
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
                for line in _moderation_lines(row.get("moderation"), row.get("reasons")):
                    out.print(line)
        if failed:
            raise typer.Exit(1)


@app.command()
def explain(
    key: Annotated[str, typer.Argument(help="Item id, external key, path or URL.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Why an ingested image got its verdicts: the duplicate evidence, each moderation reason, and the
    signals behind them (OCR lines, codes, NSFW score, quality, labels, classifier)."""
    from imgaudit.bootstrap import open_store
    from imgaudit.errors import NotFound

    with _errors():
        with open_store(_settings(config)) as store:
            rec = store.find(key) or (store.find(str(Path(key).resolve())) if Path(key).exists() else None)
            if rec is None:
                raise NotFound(f"no item matches {key!r}")
            original = store.get(rec.duplicate_of) if rec.duplicate_of else None
        d = rec.as_dict()
        if as_json:
            _emit(
                {
                    k: d[k]
                    for k in (
                        "id",
                        "uri",
                        "status",
                        "error_reason",
                        "last_error",
                        "decision",
                        "duplicate_of",
                        "score",
                        "stage",
                        "evidence",
                        "moderation",
                        "reasons",
                        "moderation_signals",
                        "ocr_text",
                    )
                }
                | {"original": original.uri if original else None}
            )
            return
        _plain(f"#{rec.id} {rec.uri}")
        if rec.status != "done":
            _plain(
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
            _plain("    evidence: " + ", ".join(f"{k} {v:.3g}" for k, v in rec.evidence.items()))
        if rec.moderation is None:
            _plain("  moderation: not run")
            return
        for line in _moderation_lines(rec.moderation, rec.reasons):
            out.print(line)
        sig = rec.moderation_signals or {}
        _plain("  signals:")
        ocr = sig.get("ocr")
        if ocr is None:
            _plain("    ocr: off")
        elif not ocr:
            _plain("    ocr: no text" if sig.get("text_found") is False else "    ocr: text seen, none read")
        else:
            for ln in ocr:
                _plain(f"    ocr {ln['score']:.2f}: {ln['text']}")
        codes = sig.get("codes")
        _plain(
            "    codes: "
            + ("off" if codes is None else ", ".join(f"{c['format']} {c['text']}" for c in codes) or "none")
        )
        nsfw = sig.get("nsfw")
        if nsfw is not None:
            _plain(f"    nsfw: {nsfw:.3f}")
        elif sig.get("skin") is not None:
            _plain(f"    nsfw: not scored (skin-coloured pixels {sig['skin']:.0%}, below the floor)")
        else:
            _plain("    nsfw: off")
        q = sig.get("quality")
        if q:
            _plain(
                f"    quality: sharpness {q['sharpness']:.0f}, contrast {q['contrast']:.1f}, "
                f"one colour {q['dominant_fraction']:.0%}, {q['width']}x{q['height']}"
            )
        if sig.get("labels"):
            _plain("    labels: " + ", ".join(f"{n} {p:.2f}" for n, p in sig["labels"]))
        cls = sig.get("classifier")
        if cls:
            probs = ", ".join(
                f"{k} {v:.2f}" for k, v in sorted(cls["probabilities"].items(), key=lambda kv: -kv[1])
            )
            _plain(f"    classifier {cls['model']}: {probs}")


def _plain(text: str) -> None:
    """One line of results that carries no markup of ours: untrusted parts shown as they are, inert."""
    out.print(clean(text), markup=False)


@app.command()
def search(
    query: Annotated[str | None, typer.Argument(help="Text to look for, in Chinese or English.")] = None,
    image: Annotated[
        Path | None,
        typer.Option(
            "--image", help="An example image: find what looks like it.", exists=True, dir_okay=False
        ),
    ] = None,
    decision: Annotated[list[str] | None, typer.Option(help="Only unique / duplicate (repeatable).")] = None,
    moderation: Annotated[
        list[str] | None, typer.Option(help="Only pass / review / violate (repeatable).")
    ] = None,
    source: Annotated[
        list[str] | None, typer.Option(help="Only images from this source (repeatable).")
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="Only images with this ImageNet label (English or 中文).")
    ] = None,
    has_text: Annotated[
        bool | None, typer.Option("--has-text/--no-text", help="Only images with / without text.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Ingested since: 15m, 2h, 7d or an ISO date.")] = None,
    until: Annotated[str | None, typer.Option(help="Ingested before: 15m, 2h, 7d or an ISO date.")] = None,
    page: Annotated[int, typer.Option(help="Page of results.", min=1)] = 1,
    top_k: Annotated[
        int | None, typer.Option("--top-k", "-k", "--per-page", help="Results per page.", min=1, max=500)
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search everything ingested by text ("红色连衣裙", "phone number on a box"), by an example image, or
    both (the image's look-alikes refined by the text). Every hit says why it matched."""
    from imgaudit.services.search import SearchFilters, image_ref

    with _errors():
        if not (query and query.strip()) and image is None:
            raise typer.BadParameter("give a text query, --image, or both")
        settings = _settings(config)
        filters = SearchFilters(
            decision=decision or None,
            moderation=moderation or None,
            source=source or None,
            label=label,
            has_text=has_text,
            since=_parse_since(since),
            until=_parse_since(until),
        )
        from imgaudit.bootstrap import search_service

        with search_service(settings) as svc:
            if not svc.labels_ready():
                if not as_json:
                    console.print(
                        "embedding the label space once (1-5 minutes, cached afterwards; "
                        "`imgaudit models prepare` does it ahead of time)"
                    )
                with step_progress(as_json) as update:
                    step = None if update is None else lambda n, total: update("label_space", n, total)
                    svc.prepare_labels(step)
            pending = svc.pending()
            if pending:
                _with_progress(
                    pending, "indexing for search", lambda step: svc.sync(_as_totals(step)), as_json
                )
            results = svc.search(
                query,
                image_ref(str(image)) if image else None,
                filters,
                page=page,
                per_page=top_k or settings.search.per_page,
                sync=False,
            )
        if as_json:
            for rank, h in enumerate(results.hits, (page - 1) * results.per_page + 1):
                _emit({"rank": rank, **h.as_dict()})
            return
        table = Table("rank", "id", "score", "image", "why", show_lines=True)
        for rank, h in enumerate(results.hits, (page - 1) * results.per_page + 1):
            image_cell = cell(h.record.uri)
            if h.record.moderation and h.record.moderation != "pass":
                image_cell.append(" ").append(
                    clean(h.record.moderation), MODERATION_COLOUR.get(h.record.moderation, "")
                )
            table.add_row(
                str(rank),
                str(h.record.id),
                f"{h.score:.4f}",
                image_cell,
                Text("\n").join(map(_marked, h.why)),
            )
        out.print(table)
        pages = -(-results.total // results.per_page)
        out.print(
            f"{results.total} matches, page {results.page} of {max(pages, 1)} "
            f"({results.seconds * 1000:.0f} ms)"
        )


def _marked(text: str) -> Text:
    """A snippet's <b>matches</b> (HTML-escaped text) highlighted, everything else shown as it is."""
    import html

    parts = text.split("<b>")
    marked = Text(clean(html.unescape(parts[0])))
    for part in parts[1:]:
        hit, _, rest = part.partition("</b>")
        marked.append(clean(html.unescape(hit)), "bold yellow").append(clean(html.unescape(rest)))
    return marked


def _as_totals(step: Callable[[int], None]) -> Callable[[int, int], None]:
    """A progress bar's step (items just done) fed by a callback that reports running totals."""
    done = 0

    def progress(n: int, _total: int) -> None:
        nonlocal done
        step(n - done)
        done = n

    return progress


class GroupKind(StrEnum):
    duplicates = "duplicates"
    similar = "similar"


@app.command()
def groups(
    kind: Annotated[
        GroupKind, typer.Option(help="duplicates (copies of one original) or similar (look-alikes).")
    ] = GroupKind.duplicates,
    min_size: Annotated[int, typer.Option(help="Smallest group listed.", min=2)] = 2,
    limit: Annotated[int, typer.Option(help="Groups listed, largest first.", min=1)] = 50,
    threshold: Annotated[
        float, typer.Option(help="For similar: descriptor cosine that links two images.", min=-1, max=1)
    ] = 0.8,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Near-duplicate groups and similar-content clusters, largest first, with a representative each."""
    from imgaudit.bootstrap import search_service

    with _errors():
        settings = _settings(config)
        with search_service(settings) as svc:
            found = svc.groups(kind.value, min_size=min_size, limit=limit, threshold=threshold)
        if as_json:
            for g in found:
                _emit(
                    {
                        "kind": g.kind,
                        "size": g.size,
                        "representative": g.representative.uri,
                        "members": g.members,
                    }
                )
            return
        table = Table("size", "representative", "members")
        for g in found:
            more = "…" if len(g.members) > 12 else ""
            table.add_row(
                str(g.size),
                cell(f"#{g.representative.id} {g.representative.uri}"),
                " ".join(f"#{m}" for m in g.members[:12]) + more,
            )
        out.print(table)
        out.print(f"{len(found)} {kind.value} groups of {min_size} or more")


def _parse_since(value: str | None) -> datetime | None:
    """'15m', '2h', '7d', or an ISO date/time (UTC when no zone is given)."""
    if not value:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[:-1].isdigit() and value[-1] in units:
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r}: use 15m, 2h, 7d or an ISO date") from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@app.command()
def stats(
    since: Annotated[
        str | None, typer.Option(help="Only decisions, errors and workers since: 15m, 2h, 7d or an ISO date.")
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Counts by status and decision, duplicate rate, throughput, error reasons, queue depth, workers."""
    from imgaudit.bootstrap import open_store

    with _errors():
        settings = _settings(config)
        start = _parse_since(since)
        with open_store(settings) as store:
            counts = store.counts(start)
            activity = store.activity(start)
            indexed = store.count_indexed()
        decided = sum(counts["decision"].values())
        dup = counts["decision"].get("duplicate", 0)
        status = counts["status"]
        data = {
            **counts,
            "indexed": indexed,
            "total": sum(status.values()),
            "queue_depth": sum(status.get(k, 0) for k in ("queued", "processing", "failed_retryable")),
            "duplicate_rate": round(dup / decided, 4) if decided else 0.0,
            "throughput": {k: activity[k] for k in ("last_minute", "last_hour", "last_day")},
            "workers": activity["workers"],
            "in_flight": activity["in_flight"],
            "since": start.isoformat() if start else None,
            "data_dir": str(settings.data_dir.absolute()),
            "database": settings.database_in_use,
        }
        if as_json:
            _emit(data)
            return
        _plain(f"data dir {data['data_dir']} ({settings.data_dir_origin}); database {data['database']}")
        table = Table("group", "key", "count")
        for group in ("status", "decision", "duplicate_stage", "moderation", "error"):
            for k, v in counts.get(group, {}).items():
                table.add_row(group, cell(k), str(v))
        out.print(table)
        out.print(
            f"total {data['total']}, indexed {indexed}, queue depth {data['queue_depth']}, "
            f"duplicate rate {data['duplicate_rate']:.1%}"
            + (f" (since {start:%Y-%m-%d %H:%M} UTC)" if start else "")
        )
        t = data["throughput"]
        out.print(
            "throughput: "
            + ", ".join(
                f"{k.replace('_', ' ')} {v['processed']} ({v['per_minute']}/min)" for k, v in t.items()
            )
        )
        if data["workers"]:
            wt = Table("worker", "processed", "last item at", "in flight")
            for w in data["workers"]:
                wt.add_row(
                    cell(w["worker"]),
                    str(w["processed"]),
                    str(w["last_at"]),
                    str(data["in_flight"].get(w["worker"], 0)),
                )
            out.print(wt)


@app.command()
def reset(
    config: ConfigOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete every image record, the indexes and the thumbnails (the images themselves are untouched)."""
    with _errors():
        settings = _settings(config)
        if not yes and not typer.confirm(f"Delete all imgaudit data in {clean(settings.data_dir)}?"):
            raise typer.Exit(1)
        with _service(settings) as svc:
            svc.reset()
        if as_json:
            _emit({"event": "reset", "data_dir": str(settings.data_dir)})
        else:
            _plain(f"reset {settings.data_dir}")


@index_app.command("rebuild")
def index_rebuild(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Rebuild the dedup indexes (vector, hash) and the search indexes from the store."""
    from imgaudit.bootstrap import search_service

    with _errors():
        settings = _settings(config)
        with search_service(settings) as svc:
            n = svc.dedup.rebuild_index()  # type: ignore[union-attr]
            searchable = _with_progress(
                svc.store.last_search_seq(),
                "search indexes",
                lambda step: svc.rebuild(_as_totals(step)),
                as_json,
            )
        if as_json:
            _emit({"event": "index_rebuild", "indexed": n, "searchable": searchable})
        else:
            out.print(f"rebuilt the indexes with {n} images; {searchable} searchable")


@config_app.command("show")
def config_show(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Print the effective settings (file + environment + defaults)."""
    with _errors():
        settings = _settings(config)
        data = json.loads(settings.model_dump_json())
        source = str(config or config_file_in_use() or "(defaults and environment only)")
        where = {
            "data_dir": str(settings.data_dir.absolute()),
            "data_dir_origin": settings.data_dir_origin,
            "database": settings.database_in_use,
        }
        if as_json:
            _emit({"config_file": source, **where, "settings": data})
            return
        head = (
            f"# config file: {source}\n# data dir: {where['data_dir']} ({settings.data_dir_origin})\n"
            f"# database: {where['database']}\n"
        )
        out.print(clean(head + _toml(data), multiline=True), markup=False)


def _toml(data: dict[str, Any]) -> str:
    """The settings as TOML; unset values (TOML has no null) become ``# key: not set`` in their table."""
    import re

    import tomli_w

    unset: dict[tuple[str, ...], list[str]] = {}

    def without_none(table: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
        kept: dict[str, Any] = {}
        for key, value in table.items():
            if value is None:
                unset.setdefault(path, []).append(key)
            else:
                kept[key] = without_none(value, (*path, key)) if isinstance(value, dict) else value
        return kept

    lines = tomli_w.dumps(without_none(data, ())).splitlines()
    for path, keys in unset.items():
        notes = [f"# {key}: not set" for key in keys]
        if not path:
            lines[:0] = notes
            continue
        header = (
            "[" + ".".join(k if re.fullmatch(r"[\w-]+", k, re.ASCII) else json.dumps(k) for k in path) + "]"
        )
        if header in lines:
            at = lines.index(header) + 1
        else:  # a table holding nothing else: tomli_w writes no header for it
            at, notes = len(lines), [f"# {'.'.join(path)}.{key}: not set" for key in keys]
        lines[at:at] = notes
    return "\n".join(lines) + "\n"


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where samples, data and the report go.")] = Path(
        "demo"
    ),
    as_json: JsonOpt = False,
) -> None:
    """Build a sample set offline, ingest it, print the duplicate pairs and write an HTML report."""
    from imgaudit.bootstrap import dedup_service
    from imgaudit.services.demo import run_demo

    with _errors():
        result = run_demo(out_dir, dedup_service)
        if as_json:
            _emit({"event": "demo", **result})
            return
        _plain(f"samples: {result['samples']} images in {result['sample_dir']}")
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
            _plain(
                f"moderation: {m.get('pass', 0)} pass, {m.get('review', 0)} review, "
                f"{m.get('violate', 0)} violate" + (f" ({why}); `imgaudit explain ID` says why" * bool(why))
            )
        _plain(f"report: {result['report']}")


@worker_app.command("run")
def worker_run(
    name: Annotated[
        str, typer.Option(help="Worker name (pid, status and log files are per name).")
    ] = "default",
    once: Annotated[bool, typer.Option(help="Stop when the queue is empty instead of waiting.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    daemon: Annotated[
        bool, typer.Option("--daemon", hidden=True, help="Started by `worker start`: log to the file only.")
    ] = False,
) -> None:
    """Run a worker in the foreground until SIGTERM/SIGINT (or, with --once, until the queue is empty)."""
    from imgaudit.bootstrap import worker_service
    from imgaudit.cli.logs import check_worker_name, configure_logging
    from imgaudit.worker import Worker

    with _errors():
        settings = _settings(config)
        # Detached (`worker start`), stdout/stderr already are the log file: stderr logging would double
        # every line, and the summary below would be a stray line in a JSON Lines log.
        configure_logging(settings, check_worker_name(name), to_stderr=not daemon, capture_std=daemon)
        with worker_service(settings) as svc:
            worker = Worker(settings, svc, name)
            worker.install_signal_handlers()
            stats = worker.run(once=once)
        if daemon:
            return
        if as_json:
            _emit({"event": "worker_stopped", **worker.status()})
        else:
            _plain(
                f"worker {name} stopped: {stats.processed} processed, {stats.duplicates} duplicates, "
                f"{stats.failed} failed"
            )


@app.command()
def recalc(
    permanent: Annotated[bool, typer.Option(help="Also re-queue permanent failures.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-queue failed items for another attempt (retryable ones; with --permanent, all)."""
    from imgaudit.bootstrap import open_store

    with _errors():
        with open_store(_settings(config)) as store:
            n = store.requeue_failed(permanent=permanent)
        if as_json:
            _emit({"event": "recalc", "requeued": n})
        else:
            out.print(f"re-queued {n} failed items")


@app.command()
def status(
    key: Annotated[str, typer.Argument(help="Item id, external key, path or URL.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One item's current state and history."""
    from imgaudit.bootstrap import open_store
    from imgaudit.errors import NotFound

    with _errors():
        with open_store(_settings(config)) as store:
            rec = store.find(key) or (store.find(str(Path(key).resolve())) if Path(key).exists() else None)
            if rec is None:
                raise NotFound(f"no item matches {key!r}")
            history = store.events(rec.id)
        if as_json:
            _emit({**rec.as_dict(), "history": history})
            return
        d = rec.as_dict()
        for k in (
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
        ):
            if d.get(k) is not None:
                _plain(f"{k:>14}: {d[k]}")
        table = Table("at", "event", "worker", "detail")
        for h in history:
            table.add_row(str(h["at"]), cell(h["event"]), cell(h["worker"]), cell(h["detail"]))
        out.print(table)


def main() -> None:  # pragma: no cover
    app()


from imgaudit.cli.daemon import register as _register_daemon  # noqa: E402 - needs worker_app defined

_register_daemon(worker_app)

from imgaudit.cli.models import models_app, train_command  # noqa: E402 - uses main's helpers late

app.command("train")(train_command)
app.add_typer(models_app, name="models")
