"""``imgaudit search`` and ``groups``: find things among everything ingested.

``imgaudit.bootstrap`` and the search service are imported inside the commands: they load numpy, ONNX
Runtime, FAISS and tantivy (seconds), which ``--help`` and the other groups' commands never need.
"""

from __future__ import annotations

import html
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from imgaudit.cli.common import (
    MODERATION_COLOUR,
    ConfigOpt,
    JsonOpt,
    command_settings,
    emit,
    parse_since,
    step_progress,
    with_totals_progress,
)
from imgaudit.cli.output import cell, clean, console, out


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
    from imgaudit.bootstrap import search_service
    from imgaudit.services.search import SearchFilters, image_ref

    if not (query and query.strip()) and image is None:
        raise typer.BadParameter("give a text query, --image, or both")
    with command_settings(config) as settings:
        filters = SearchFilters(
            decision=decision or None,
            moderation=moderation or None,
            source=source or None,
            label=label,
            has_text=has_text,
            since=parse_since(since),
            until=parse_since(until),
        )
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
            if svc.pending():
                with_totals_progress("indexing for search", svc.sync, as_json)
            results = svc.search(
                query,
                image_ref(str(image)) if image else None,
                filters,
                page=page,
                per_page=top_k or settings.search.per_page,
                sync=False,
            )
        first_rank = (page - 1) * results.per_page + 1
        if as_json:
            for rank, h in enumerate(results.hits, first_rank):
                emit({"rank": rank, **h.as_dict()})
            return
        table = Table("rank", "id", "score", "image", "why", show_lines=True)
        for rank, h in enumerate(results.hits, first_rank):
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
    parts = text.split("<b>")
    marked = Text(clean(html.unescape(parts[0])))
    for part in parts[1:]:
        hit, _, rest = part.partition("</b>")
        marked.append(clean(html.unescape(hit)), "bold yellow").append(clean(html.unescape(rest)))
    return marked


class GroupKind(StrEnum):
    duplicates = "duplicates"
    similar = "similar"


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

    with command_settings(config) as settings:
        with search_service(settings) as svc:
            found = svc.groups(kind.value, min_size=min_size, limit=limit, threshold=threshold)
        if as_json:
            for g in found:
                emit(
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
