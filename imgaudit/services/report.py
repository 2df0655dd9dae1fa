"""An HTML report of duplicate pairs side by side: thumbnails, score, deciding stage.

The page is the Jinja2 template ``templates/report.html.j2`` with autoescaping on: file names, URLs,
stages and evidence keys are user-supplied and must not become markup."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jinja2
from PIL import Image

from imgaudit.fsio import atomic_write_text
from imgaudit.types import ItemRecord

REPORT_THUMB = 240


@dataclass(frozen=True, slots=True)
class _Cell:
    """One image of a pair as the template shows it; ``src`` is empty when the image cannot be shown."""

    id: int
    name: str
    src: str
    width: int | None
    height: int | None
    format: str


@dataclass(frozen=True, slots=True)
class _Row:
    duplicate: _Cell
    original: _Cell
    score: str
    stage: str
    evidence: list[tuple[str, float]]


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("imgaudit.services", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template("report.html.j2")


def _thumb_data_uri(path: str) -> str:
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        rgb.thumbnail((REPORT_THUMB, REPORT_THUMB))
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=80)
    except OSError:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _cell(rec: ItemRecord) -> _Cell:
    local = rec.kind == "path"
    return _Cell(
        id=rec.id,
        name=Path(rec.uri).name if local else rec.uri,
        src=_thumb_data_uri(rec.uri) if local else rec.uri,
        width=rec.width,
        height=rec.height,
        format=rec.format or "",
    )


def write_report(
    pairs: list[tuple[ItemRecord, ItemRecord]],
    dest: Path,
    title: str = "imgaudit duplicates",
    summary: str = "",
) -> Path:
    rows = [
        _Row(
            duplicate=_cell(dup),
            original=_cell(orig),
            score=f"{dup.score:.3f}" if dup.score is not None else "–",
            stage=dup.stage or "",
            evidence=list((dup.evidence or {}).items()),
        )
        for dup, orig in pairs
    ]
    page = _template().render(title=title, summary=summary, rows=rows, thumb=REPORT_THUMB)
    atomic_write_text(dest, page)
    return dest
