"""The quick-start job: sample set -> ingest -> duplicate pairs -> HTML report, scored against the
known answers so the demo also shows how well it did."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from imgaudit.config import Settings, load_settings
from imgaudit.services.dedup import DedupService
from imgaudit.services.report import write_report
from imgaudit.services.samples import build_samples
from imgaudit.sources.files import FolderSource


def run_demo(
    out_dir: Path,
    open_service: Callable[[Settings], AbstractContextManager[DedupService]],
    step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """``open_service`` comes from the composition root, so this service never picks backends."""
    out_dir = out_dir.resolve()
    sample_dir = out_dir / "samples"
    answers = build_samples(sample_dir)
    # The demo owns its own SQLite store: it resets it, so it must never touch a configured database.
    settings = load_settings(data_dir=out_dir / "data", database_url="")
    with open_service(settings) as svc:
        svc.reset()
        enqueued, _ = svc.enqueue(FolderSource(sample_dir).refs(), "folder")
        summary = svc.process_queue((lambda n, _r: step(n)) if step else None)
        summary.enqueued = enqueued
        pairs = svc.duplicate_pairs()
    found = {Path(d.uri).name: Path(o.uri).name for d, o in pairs}
    expected = {k: v for k, v in answers.items() if v not in (None, "failure")}
    tp = sum(1 for k, v in found.items() if expected.get(k) == v)
    s = summary.as_dict()
    report = write_report(
        pairs,
        out_dir / "report.html",
        "imgaudit demo: duplicate pairs",
        f"{s['processed']} images, {s['duplicates']} duplicates, {s['failed']} failed; "
        f"{tp}/{len(expected)} known copies found, {len(found) - tp} wrong",
    )
    return {
        "sample_dir": str(sample_dir),
        "samples": len(answers),
        "summary": s,
        "pairs": [
            {
                "duplicate": Path(d.uri).name,
                "original": Path(o.uri).name,
                "score": d.score or 0.0,
                "stage": d.stage,
            }
            for d, o in pairs
        ],
        "evaluation": {
            "true_positives": tp,
            "false_positives": len(found) - tp,
            "missed": len(expected) - tp,
            "expected": len(expected),
        },
        "report": str(report),
        "answers": json.loads((sample_dir / "answers.json").read_text()),
    }
