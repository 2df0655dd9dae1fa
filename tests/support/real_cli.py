"""The real ``imgaudit`` command line for the tests: run it in a subprocess, read its JSON Lines, list its
commands."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbs import db_env

from imgaudit.cli.main import app

if importlib.util.find_spec("imgaudit.cli.__main__") is not None:
    CLI = [sys.executable, "-m", "imgaudit.cli"]
else:  # pragma: no cover - older checkouts without __main__.py
    CLI = [str(Path(sys.executable).parent / "imgaudit")]


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without any IMGAUDIT_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGAUDIT_")}
    env.update(extra)
    return env


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` must be one JSON object (no progress bars, no banners)."""
    assert text == "" or text.endswith("\n"), text
    rows = []
    for line in text.splitlines():
        row = json.loads(line)  # fails on anything that is not JSON
        assert isinstance(row, dict), line
        rows.append(row)
    return rows


@dataclass
class Run:
    rc: int
    rows: list[dict[str, Any]]
    stdout: str
    stderr: str


def cli(*args: str | Path, data_dir: Path | None, cwd: Path, expect: int | None = 0, **env: str) -> Run:
    """Run the real ``imgaudit`` in a subprocess with an isolated environment (and, on a server backend,
    the data directory's own database)."""
    if data_dir is not None:
        env = {**db_env(data_dir), **env, "IMGAUDIT_DATA_DIR": str(data_dir)}
    proc = subprocess.run(
        [*CLI, *map(str, args)], cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=180
    )
    if expect is not None:
        detail = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        assert proc.returncode == expect, detail
    assert "Traceback" not in proc.stderr, proc.stderr
    rows = json_lines(proc.stdout) if "--json" in args else []
    return Run(proc.returncode, rows, proc.stdout, proc.stderr)


def command_names() -> list[str]:
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    for group in app.registered_groups:
        names += [
            f"{group.name} {c.name or c.callback.__name__}" for c in group.typer_instance.registered_commands
        ]
    return names
