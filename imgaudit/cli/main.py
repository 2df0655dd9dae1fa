"""``imgaudit`` commands. The only place (with the API) that prints, exits, or formats errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from imgaudit.config import Settings, config_file_in_use, load_settings
from imgaudit.errors import ImgauditError

app = typer.Typer(
    help="imgaudit: image review for e-commerce content.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show the configuration.", no_args_is_help=True)
worker_app = typer.Typer(help="The always-on worker and its management.", no_args_is_help=True)
index_app = typer.Typer(help="Maintain the vector and hash indexes.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(index_app, name="index")
app.add_typer(worker_app, name="worker")

console = Console(stderr=True, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file.", exists=True, dir_okay=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON Lines on stdout, for scripts.")]
TargetArg = Annotated[
    str, typer.Argument(help="A folder (recursive), an image file, or a .txt list of URLs.")
]

T = TypeVar("T")


def _settings(config: Path | None) -> Settings:
    return load_settings(config)


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")


@contextmanager
def _errors() -> Iterator[None]:
    """Every ImgauditError becomes one clear line and exit code 1; nothing else is swallowed."""
    try:
        yield
    except ImgauditError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


def _service(settings: Settings):
    from imgaudit.bootstrap import dedup_service

    return dedup_service(settings)


def _with_progress(total: int, label: str, fn: Callable[[Callable[[int], None]], T], quiet: bool) -> T:
    if quiet:
        return fn(lambda n: None)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(label, total=total, rate="")

        def step(n: int) -> None:
            bar.advance(task, n)
            t = bar.tasks[0]
            if t.elapsed:
                bar.update(task, rate=f"{t.completed / t.elapsed:.1f} img/s")

        return fn(step)


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
        source = source_for(target, settings.fetch.cdn_base)
        with _service(settings) as svc:
            added, known = svc.enqueue(source.refs(), source.name)
            pending = svc.store.counts()["status"]
            todo = sum(pending.get(s, 0) for s in ("queued", "processing", "failed_retryable"))
            if not as_json:
                console.print(f"queued {added} new, {known} already known; {todo} to process")
            summary = _with_progress(
                todo,
                "ingest",
                lambda step: svc.process_queue(lambda n, _r: step(n), batch_size=batch_size),
                as_json,
            )
            summary.enqueued, summary.skipped_known = added, known
        if as_json:
            _emit({"event": "ingest", **summary.as_dict()})
        else:
            out.print(
                f"processed {summary.processed} in {summary.seconds:.1f}s "
                f"({summary.images_per_second:.1f} img/s): {summary.duplicates} duplicates, "
                f"{summary.failed} failed"
            )
            if summary.moderation:
                out.print(
                    "moderation: "
                    + ", ".join(f"{k} {summary.moderation.get(k, 0)}" for k in ("pass", "review", "violate"))
                    + (
                        " (" + ", ".join(f"{k} {v}" for k, v in summary.reasons.most_common()) + ")"
                        if summary.reasons
                        else ""
                    )
                )
            if summary.errors:
                out.print("failures: " + ", ".join(f"{k} {v}" for k, v in summary.errors.most_common()))


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
        source = source_for(target, settings.fetch.cdn_base)
        with open_store(settings) as store:
            added, known = store.enqueue(source.refs(), source.name)
        if as_json:
            _emit({"event": "enqueue", "enqueued": added, "skipped_known": known})
        else:
            out.print(f"queued {added} new, {known} already known")


MODERATION_COLOUR = {"pass": "green", "review": "yellow", "violate": "red"}


def _moderation_lines(decision: str | None, reasons: list[dict[str, Any]] | None) -> list[str]:
    if decision is None:
        return []
    colour = MODERATION_COLOUR.get(decision, "white")
    lines = [f"  moderation: [{colour}]{decision}[/{colour}]"]
    for r in reasons or []:
        c = MODERATION_COLOUR.get(str(r["decision"]), "white")
        lines.append(f"    - [{c}]{r['decision']}[/{c}] {r['category']}: {r['message']}")
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
                out.print(f"{r.ref.uri}: [red]failed[/red] ({r.error_reason}: {r.error})")
            else:
                v = r.verdict
                if v.decision == "duplicate":
                    out.print(
                        f"{r.ref.uri}: [yellow]duplicate[/yellow] of #{v.duplicate_of} "
                        f"{row['original']} (score {v.score:.3f}, stage {v.stage.value})"
                    )
                else:
                    near = f", nearest cosine {v.score:.3f}" if v.score is not None else ""
                    out.print(f"{r.ref.uri}: [green]unique[/green]{near}")
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
        out.print(f"#{rec.id} {rec.uri}")
        if rec.status != "done":
            out.print(
                f"  status {rec.status}"
                + (f": {rec.error_reason}: {rec.last_error}" if rec.error_reason else "")
            )
            return
        if rec.decision == "duplicate" and original is not None:
            out.print(
                f"  dedup: [yellow]duplicate[/yellow] of #{original.id} {original.uri} "
                f"(stage {rec.stage}, score {rec.score:.3f})"
            )
        else:
            near = f" (nearest cosine {rec.score:.3f})" if rec.score is not None else ""
            out.print(f"  dedup: [green]unique[/green]{near}")
        if rec.evidence:
            out.print("    evidence: " + ", ".join(f"{k} {v:.3g}" for k, v in rec.evidence.items()))
        if rec.moderation is None:
            out.print("  moderation: not run")
            return
        for line in _moderation_lines(rec.moderation, rec.reasons):
            out.print(line)
        sig = rec.moderation_signals or {}
        out.print("  signals:")
        ocr = sig.get("ocr")
        if ocr is None:
            out.print("    ocr: off")
        elif not ocr:
            out.print(
                "    ocr: no text" if sig.get("text_found") is False else "    ocr: text seen, none read"
            )
        else:
            for ln in ocr:
                out.print(f"    ocr {ln['score']:.2f}: {ln['text']}")
        codes = sig.get("codes")
        out.print(
            "    codes: "
            + ("off" if codes is None else ", ".join(f"{c['format']} {c['text']}" for c in codes) or "none")
        )
        nsfw = sig.get("nsfw")
        if nsfw is not None:
            out.print(f"    nsfw: {nsfw:.3f}")
        elif sig.get("skin") is not None:
            out.print(f"    nsfw: not scored (skin-coloured pixels {sig['skin']:.0%}, below the floor)")
        else:
            out.print("    nsfw: off")
        q = sig.get("quality")
        if q:
            out.print(
                f"    quality: sharpness {q['sharpness']:.0f}, contrast {q['contrast']:.1f}, "
                f"one colour {q['dominant_fraction']:.0%}, {q['width']}x{q['height']}"
            )
        if sig.get("labels"):
            out.print("    labels: " + ", ".join(f"{n} {p:.2f}" for n, p in sig["labels"]))
        cls = sig.get("classifier")
        if cls:
            probs = ", ".join(
                f"{k} {v:.2f}" for k, v in sorted(cls["probabilities"].items(), key=lambda kv: -kv[1])
            )
            out.print(f"    classifier {cls['model']}: {probs}")


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
            if not svc.labels_ready() and not as_json:
                console.print("embedding the 1,000 label names once (1-2 minutes, cached afterwards)...")
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
            flags = "".join(
                f" [{c}]{v}[/{c}]"
                for v, c in ((h.record.moderation, MODERATION_COLOUR.get(h.record.moderation or "", "")),)
                if v and v != "pass"
            )
            table.add_row(
                str(rank),
                str(h.record.id),
                f"{h.score:.4f}",
                h.record.uri + flags,
                "\n".join(map(_marked, h.why)),
            )
        out.print(table)
        pages = -(-results.total // results.per_page)
        out.print(
            f"{results.total} matches, page {results.page} of {max(pages, 1)} "
            f"({results.seconds * 1000:.0f} ms)"
        )


def _marked(text: str) -> str:
    """A snippet's <b>matches</b> (HTML-escaped text) as Rich markup."""
    import html

    from rich.markup import escape

    parts = text.split("<b>")
    out = escape(html.unescape(parts[0]))
    for part in parts[1:]:
        hit, _, rest = part.partition("</b>")
        out += f"[bold yellow]{escape(html.unescape(hit))}[/bold yellow]{escape(html.unescape(rest))}"
    return out


def _as_totals(step: Callable[[int], None]) -> Callable[[int, int], None]:
    """A progress bar's step (items just done) fed by a callback that reports running totals."""
    done = 0

    def progress(n: int, _total: int) -> None:
        nonlocal done
        step(n - done)
        done = n

    return progress


@app.command()
def groups(
    kind: Annotated[
        str, typer.Option(help="duplicates (copies of one original) or similar (look-alikes).")
    ] = "duplicates",
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
            found = svc.groups(kind, min_size=min_size, limit=limit, threshold=threshold)
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
                f"#{g.representative.id} {g.representative.uri}",
                " ".join(f"#{m}" for m in g.members[:12]) + more,
            )
        out.print(table)
        out.print(f"{len(found)} {kind} groups of {min_size} or more")


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
        }
        if as_json:
            _emit(data)
            return
        table = Table("group", "key", "count")
        for group in ("status", "decision", "duplicate_stage", "error"):
            for k, v in counts[group].items():
                table.add_row(group, str(k), str(v))
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
                    w["worker"],
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
        if not yes and not typer.confirm(f"Delete all imgaudit data in {settings.data_dir}?"):
            raise typer.Exit(1)
        with _service(settings) as svc:
            svc.reset()
        if as_json:
            _emit({"event": "reset", "data_dir": str(settings.data_dir)})
        else:
            out.print(f"reset {settings.data_dir}")


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
        if as_json:
            _emit({"config_file": source, "settings": data})
            return
        out.print(f"# config file: {source}")
        import tomli_w

        out.print(tomli_w.dumps(data))


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
        out.print(f"samples: {result['samples']} images in {result['sample_dir']}")
        s = result["summary"]
        out.print(
            f"ingested {s['processed']} in {s['seconds']}s ({s['images_per_second']} img/s), "
            f"{s['duplicates']} duplicates, {s['failed']} failed"
        )
        table = Table("duplicate", "original", "score", "stage")
        for p in result["pairs"]:
            table.add_row(p["duplicate"], p["original"], f"{p['score']:.3f}", p["stage"])
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
            out.print(
                f"moderation: {m.get('pass', 0)} pass, {m.get('review', 0)} review, "
                f"{m.get('violate', 0)} violate" + (f" ({why}); `imgaudit explain ID` says why" * bool(why))
            )
        out.print(f"report: {result['report']}")


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
            out.print(
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
                out.print(f"{k:>14}: {d[k]}")
        table = Table("at", "event", "worker", "detail")
        for h in history:
            table.add_row(str(h["at"]), str(h["event"]), str(h["worker"] or ""), str(h["detail"] or ""))
        out.print(table)


def main() -> None:  # pragma: no cover
    app()


from imgaudit.cli.daemon import register as _register_daemon  # noqa: E402 - needs worker_app defined

_register_daemon(worker_app)

from imgaudit.cli.models import models_app, train_command  # noqa: E402 - uses main's helpers late

app.command("train")(train_command)
app.add_typer(models_app, name="models")
