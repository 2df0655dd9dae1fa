"""An HTML report of duplicate pairs side by side: thumbnails, score, deciding stage."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from imgaudit.store.repo import ItemRecord

REPORT_THUMB = 240


def _thumb_data_uri(path: str) -> str:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((REPORT_THUMB, REPORT_THUMB))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
    except OSError:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _cell(rec: ItemRecord) -> str:
    src = _thumb_data_uri(rec.uri) if rec.kind == "path" else html.escape(rec.uri)
    name = html.escape(Path(rec.uri).name if rec.kind == "path" else rec.uri)
    img = f'<img src="{src}" alt="{name}">' if src else "<div class=missing>(unavailable)</div>"
    return (
        f"<td>{img}<div class=cap>#{rec.id} {name}<br>{rec.width}×{rec.height} {rec.format or ''}</div></td>"
    )


def write_report(
    pairs: list[tuple[ItemRecord, ItemRecord]],
    dest: Path,
    title: str = "imgaudit duplicates",
    summary: str = "",
) -> Path:
    rows = []
    for dup, orig in pairs:
        detail = f"{dup.score:.3f}" if dup.score is not None else "–"
        evidence = "<br>".join(f"{html.escape(k)} {v}" for k, v in (dup.evidence or {}).items())
        rows.append(
            f"<tr>{_cell(dup)}{_cell(orig)}<td class=score>{detail}<br><b>{html.escape(dup.stage or '')}"
            f"</b><div class=ev>{evidence}</div></td></tr>"
        )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.5em;vertical-align:top;text-align:center}}
img{{max-width:{REPORT_THUMB}px;max-height:{REPORT_THUMB}px}}
.cap{{font-size:.8em;color:#555;max-width:{REPORT_THUMB}px;word-break:break-all}} .score{{font-size:1.2em}}
.ev{{font-size:.75em;color:#555;margin-top:.5em}}
</style></head><body>
<h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>
<table><tr><th>duplicate</th><th>matched original</th><th>score / stage</th></tr>
{"".join(rows) or "<tr><td colspan=3>no duplicates found</td></tr>"}
</table></body></html>
"""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(page, encoding="utf-8")
    return dest
