"""The HTML duplicate report: its sections, and user-supplied text escaped instead of becoming markup."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from imgaudit.services.report import write_report
from imgaudit.testing.fakes import jpeg_bytes, textured_image
from imgaudit.types import ItemRecord

HOSTILE = "<script>alert(1)</script>"


def record(id: int, uri: str, kind: str = "path", **fields: object) -> ItemRecord:
    base = ItemRecord(
        id=id,
        source="folder",
        uri=uri,
        kind=kind,
        external_key=None,
        status="done",
        attempts=1,
        error_reason=None,
        last_error=None,
        sha256=None,
        format="JPEG",
        width=320,
        height=240,
        phash=None,
        decision="duplicate",
        duplicate_of=None,
        score=0.91234,
        stage="phash",
        evidence={"hamming": 3.0},
        indexed=True,
        processed_by=None,
        writeback=None,
        created_at=datetime.now(UTC),
        processed_at=None,
    )
    return replace(base, **fields)


def test_pairs_show_thumbnails_score_stage_and_evidence(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(jpeg_bytes(textured_image(1)))
    pairs = [(record(2, str(image)), record(1, str(tmp_path / "gone.jpg")))]
    page = write_report(pairs, tmp_path / "out" / "report.html", "dups", "2 images").read_text()
    assert "<title>dups</title>" in page and "<h1>dups</h1><p>2 images</p>" in page
    assert "<th>duplicate</th><th>matched original</th><th>score / stage</th>" in page
    assert page.count('<img src="data:image/jpeg;base64,') == 1  # the missing original cannot be shown
    assert "<div class=missing>(unavailable)</div>" in page
    assert "#2 a.jpg<br>320×240 JPEG" in page and "#1 gone.jpg" in page
    assert "0.912<br><b>phash</b>" in page and "<div class=ev>hamming 3.0</div>" in page


def test_no_pairs_says_so(tmp_path: Path) -> None:
    page = write_report([], tmp_path / "report.html").read_text()
    assert "<title>imgaudit duplicates</title>" in page
    assert "<tr><td colspan=3>no duplicates found</td></tr>" in page


def test_hostile_names_urls_stages_and_evidence_are_escaped(tmp_path: Path) -> None:
    named = tmp_path / '"><img src=x onerror=alert(1)>.jpg'
    named.write_bytes(jpeg_bytes(textured_image(2)))
    url = f'https://example.com/{HOSTILE}" onload="alert(2)'
    pairs = [
        (
            record(2, str(named), stage=HOSTILE, evidence={HOSTILE: 1.0}),
            record(1, url, kind="url", format=HOSTILE),
        )
    ]
    page = write_report(pairs, tmp_path / "report.html", HOSTILE, HOSTILE).read_text()
    assert "<script>" not in page and "onerror=alert(1)>" not in page and '" onload="' not in page
    # title twice, summary, stage, evidence key, format, and the URL as image source, alt text and caption
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 9
    assert page.count("<img ") == 2  # only the report's own two images are elements
