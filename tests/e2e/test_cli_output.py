"""Text-mode output cannot be hijacked by what it shows; JSON mode keeps the exact text.

File names, captions, OCR text, QR payloads, error messages and config values below carry Rich markup
(``[/x]`` used to crash the command, ``[blink]`` to restyle it), ANSI escape sequences, a bell and a
right-to-left override. Every command must survive them, show them literally (escaped), and let no
control character through; ``--json`` must give them back exactly.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbs import db_env
from typer.testing import CliRunner

from imgaudit.cli.main import app
from imgaudit.cli.output import cell, clean, dumps, safe
from imgaudit.config import load_settings
from imgaudit.testing.fakes import jpeg_bytes, textured_image

CLI = [sys.executable, "-m", "imgaudit.cli"]
MARKUP_CLOSE = "[/x]"
BLINK = "[blink]x[/blink]"
ESC_RED = "\x1b[31m"
BELL = "\x07"
RLO = "\u202e"
TITLE_OSC = "\x1b]0;pwned\x07[/x]"  # sets the terminal's title, then closes a tag that was never opened
HOSTILE = f"{MARKUP_CLOSE} {BLINK} {ESC_RED}red {BELL}bell {RLO}gpj.exe :warning:"
# The same text as a terminal must show it: markup literal, controls as \uXXXX escapes, no emoji.
SHOWN = "[/x] [blink]x[/blink] \\u001b[31mred \\u0007bell \\u202egpj.exe :warning:"

# Relative paths: "/" cannot be in a file name, but a folder "a[" with "x]b.jpg" in it gives the path
# ".../a[/x]b.jpg" (a URL can carry it as it is).
NAMES = {  # path in the folder -> its seed
    "a[/x]b.jpg": 278,
    "[blink]x[/blink].jpg": 371,
    "esc\x1b[31mred.jpg": 246,
    "bell\x07.jpg": 126,
    "rtl\u202egpj.jpg": 98,
}
COPY = "copy[/x]of a.jpg"  # a byte copy of a[/x]b.jpg: a duplicate group
BROKEN = "[/b]broken\x1b[2J.jpg"


def no_controls(text: str) -> None:
    """Nothing a terminal would act on: no ESC, BEL or other C0/C1 control, no bidi override."""
    bad = [ch for ch in text if (ord(ch) < 32 and ch not in "\n\t") or 0x7F <= ord(ch) <= 0x9F]
    bad += [ch for ch in text if "\u202a" <= ch <= "\u202e" or "\u2066" <= ch <= "\u2069"]
    assert not bad, f"control characters reached the output: {bad!r}\n{text!r}"


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines()]


def run(*args: str | Path, data: Path | None, cwd: Path, expect: int | None = 0, **env: str) -> Run:
    """The real CLI in a subprocess, wide (no table wraps a path) and not on a terminal (no styling)."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("IMGAUDIT_", "FORCE_COLOR", "TTY_", "COLUMNS")) and k != "NO_COLOR"
    }
    base.update(COLUMNS="400", TERM="dumb")
    if data is not None:
        base.update({**db_env(data), "IMGAUDIT_DATA_DIR": str(data)})
    base.update(env)
    proc = subprocess.run(
        [*CLI, *map(str, args)], cwd=cwd, env=base, capture_output=True, text=True, timeout=300
    )
    if expect is not None:
        assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return Run(proc.returncode, proc.stdout, proc.stderr)


# -- the helpers ---------------------------------------------------------------------------------------


def test_clean_escapes_every_control_and_keeps_the_rest() -> None:
    assert clean(HOSTILE) == SHOWN
    assert clean("a\nb\tc\r") == "a\\u000ab\\u0009c\\u000d"
    assert clean("a\nb\tc\r", multiline=True) == "a\nb\tc\\u000d"
    assert clean("\x85\u2066\u2069\u200f中文 ok") == "\\u0085\\u2066\\u2069\\u200f中文 ok"
    assert safe("a[/x]b") == "a\\[/x]b" and cell("[b]x[/b]").plain == "[b]x[/b]"


def test_json_keeps_the_exact_text_but_stays_inert() -> None:
    line = dumps({"t": HOSTILE + "\x85中文"})
    assert json.loads(line) == {"t": HOSTILE + "\x85中文"} and "中文" in line
    no_controls(line)


# -- the commands, over a store full of hostile text --------------------------------------------------


@dataclass
class Hostile:
    root: Path
    folder: Path
    data: Path
    ids: dict[str, int]  # file name -> item id


def _store_url(data: Path) -> str:
    return load_settings(data_dir=data, database_url=db_env(data).get("IMGAUDIT_DATABASE_URL", "")).store_url


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    """Images with hostile names and captions, ingested by the real CLI; then OCR lines, a QR payload, a
    moderation reason and an error written into the store as a hostile image or source would make them."""
    from sqlalchemy import select, update

    from imgaudit.store.schema import ImageRow
    from imgaudit.store.sql import SqlStore

    root = tmp_path_factory.mktemp("hostile")
    folder, data = root / "imgs", root / "data"
    folder.mkdir()
    for name, seed in NAMES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(jpeg_bytes(textured_image(seed, (480, 360)), quality=90))
        (folder / f"{name}.json").write_text(json.dumps({"title": f"caption {HOSTILE}", "shop": HOSTILE}))
    for name in (COPY, BROKEN):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / COPY).write_bytes((folder / "a[/x]b.jpg").read_bytes())
    (folder / BROKEN).write_text("not an image\n")
    run("ingest", folder, "--json", data=data, cwd=root)

    store = SqlStore(_store_url(data))
    try:
        with store.engine.begin() as conn:
            rows = conn.execute(select(ImageRow.id, ImageRow.uri, ImageRow.signals)).all()
            ids = {str(Path(uri).relative_to(folder)): int(i) for i, uri, _ in rows}
            a = ids["a[/x]b.jpg"]
            signals = next(s for i, _, s in rows if i == a) or {}
            signals = {
                **signals,
                "ocr": [{"text": HOSTILE, "score": 0.93}],
                "codes": [{"format": "QRCode", "text": TITLE_OSC}],
            }
            reason = {"decision": "review", "category": "[/b]words", "message": HOSTILE}
            conn.execute(
                update(ImageRow)
                .where(ImageRow.id == a)
                .values(ocr_text=HOSTILE, signals=signals, reasons=[reason], moderation="review")
            )
            conn.execute(
                update(ImageRow)
                .where(ImageRow.id == ids[BROKEN])
                .values(last_error=f"cannot read {HOSTILE}", error_reason="[/x]\x1b[31m")
            )
    finally:
        store.close()
    return Hostile(root, folder, data, ids)


def _text(h: Hostile, *args: str | Path, expect: int = 0) -> str:
    r = run(*args, data=h.data, cwd=h.root, expect=expect)
    no_controls(r.stdout + r.stderr)
    return r.stdout + r.stderr


@pytest.mark.model
def test_status_and_explain_show_hostile_text_literally(hostile: Hostile) -> None:
    a = str(hostile.ids["a[/x]b.jpg"])
    out = _text(hostile, "status", a)
    assert "a[/x]b.jpg" in out and "status: done" in out
    out = _text(hostile, "explain", a)
    assert "a[/x]b.jpg" in out
    assert f"ocr 0.93: {SHOWN}" in out  # OCR text read from an image
    assert "QRCode \\u001b]0;pwned\\u0007[/x]" in out  # a QR code's payload
    assert f"[/b]words: {SHOWN}" in out  # a moderation reason quoting the text

    out = _text(hostile, "status", str(hostile.ids[BROKEN]))
    assert f"last_error: cannot read {SHOWN}" in out and "[/b]broken\\u001b[2J.jpg" in out
    out = _text(hostile, "explain", str(hostile.ids[BROKEN]))
    assert "[/x]\\u001b[31m: cannot read" in out

    for name in NAMES:  # every hostile file name, through status
        shown = clean(name)
        assert shown in _text(hostile, "status", str(hostile.ids[name]))


@pytest.mark.model
def test_json_mode_keeps_the_exact_text(hostile: Hostile) -> None:
    a = hostile.ids["a[/x]b.jpg"]
    r = run("explain", str(a), "--json", data=hostile.data, cwd=hostile.root)
    no_controls(r.stdout)
    (row,) = r.rows
    assert row["ocr_text"] == HOSTILE and row["uri"] == str(hostile.folder / "a[/x]b.jpg")
    assert row["moderation_signals"]["codes"][0]["text"] == TITLE_OSC
    (row,) = run(
        "status", str(hostile.ids["rtl\u202egpj.jpg"]), "--json", data=hostile.data, cwd=hostile.root
    ).rows
    assert row["uri"] == str(hostile.folder / "rtl\u202egpj.jpg")


@pytest.mark.model
def test_check_stats_and_groups_survive_hostile_names(hostile: Hostile) -> None:
    files = [hostile.folder / n for n in (*NAMES, COPY)]
    out = _text(hostile, "check", *files)
    for name in (*NAMES, COPY):
        assert clean(name) in out
    assert "duplicate" in out

    out = _text(hostile, "stats")
    assert "[/x]\\u001b[31m" in out  # a failure reason, in the table
    assert "moderation" in out and "review" in out

    out = _text(hostile, "groups")
    assert "a[/x]b.jpg" in out and "1 duplicates groups of 2 or more" in out


@pytest.mark.model
def test_search_shows_captions_and_snippets_literally(hostile: Hostile) -> None:
    out = _text(hostile, "search", "caption", "--top-k", "10")
    assert "[blink]x[/blink]" in out and "\\u001b[31m" in out
    assert "a[/x]b.jpg" in out and "matches" in out
    r = run("search", "caption", "--json", data=hostile.data, cwd=hostile.root)
    no_controls(r.stdout)
    captions = [row["caption"] for row in r.rows if row["caption"]]  # the copy has no sidecar
    assert captions and set(captions) == {f"caption {HOSTILE}"}


def test_error_printer_shows_hostile_messages_literally(tmp_path: Path) -> None:
    target = f"no{MARKUP_CLOSE}such{ESC_RED}{RLO}"
    r = run("ingest", target, data=tmp_path / "data", cwd=tmp_path, expect=1)
    no_controls(r.stderr)
    assert r.stdout == "" and r.stderr.startswith(
        "error: no such folder or file: no[/x]such\\u001b[31m\\u202e"
    )
    r = run("ingest", target, "--json", data=tmp_path / "data", cwd=tmp_path, expect=1)
    assert r.stdout == ""
    error = json.loads(r.stderr)["error"]
    assert error["reason"] == "not_found" and error["message"].endswith(target)
    r = run("explain", BLINK, data=tmp_path / "data", cwd=tmp_path, expect=1)
    assert "[blink]x[/blink]" in r.stderr


def test_config_show_with_hostile_values(tmp_path: Path) -> None:
    r = run("config", "show", data=tmp_path / "d", cwd=tmp_path, IMGAUDIT_FETCH__CDN_BASE=HOSTILE)
    no_controls(r.stdout)
    assert "[/x] [blink]x[/blink]" in r.stdout and "[fetch]" in r.stdout  # table headers survive too
    r = run("config", "show", "--json", data=tmp_path / "d", cwd=tmp_path, IMGAUDIT_FETCH__CDN_BASE=HOSTILE)
    no_controls(r.stdout)
    assert r.rows[0]["settings"]["fetch"]["cdn_base"] == HOSTILE


def test_worker_logs_are_shown_inert(tmp_path: Path) -> None:
    log = tmp_path / "data" / "logs" / "worker-default.log"
    log.parent.mkdir(parents=True)
    log.write_text(f"2026-01-01T00:00:00.000Z WARNING imgaudit fetch failed: {HOSTILE}\n\tat line 2\n")
    result = CliRunner().invoke(app, ["worker", "logs"], env={"IMGAUDIT_DATA_DIR": str(tmp_path / "data")})
    assert result.exit_code == 0, result.output
    no_controls(result.stdout)
    assert f"fetch failed: {SHOWN}\n\tat line 2\n" in result.stdout


def test_training_metrics_with_hostile_class_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Class folder names end up in table cells and column headers: never parsed as markup."""
    from rich.console import Console

    from imgaudit.cli import models

    recorder = Console(record=True, width=200, file=io.StringIO())
    monkeypatch.setattr(models, "out", recorder)
    metrics = {
        "per_class": {MARKUP_CLOSE: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 3}},
        "confusion": {"labels": [MARKUP_CLOSE, BLINK + ESC_RED], "matrix": [[3, 0], [0, 2]]},
        **dict.fromkeys(("accuracy", "roc_auc", "brier", "ece", "log_loss"), 1.0),
        "roc_auc_of": "x",
    }
    models._print_metrics({"metrics": metrics})
    text = recorder.export_text()
    no_controls(text)
    assert "[/x]" in text and "[blink]x[/blink]\\u001b[31m" in text
