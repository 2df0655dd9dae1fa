"""The docs document every setting and every CLI command, the configuration reference is the one the code
generates, and every relative link between the docs lands on a file and heading that exist."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel
from real_cli import command_names

from imgaudit.config import Settings
from imgaudit.config_reference import GENERATOR, render

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text(encoding="utf-8")
USAGE = (DOCS / "usage.md").read_text(encoding="utf-8")


def setting_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names += setting_names(ann, f"{prefix}{name}.")
        else:
            names.append(prefix + name)
    return names


def test_configuration_reference_is_current() -> None:
    assert render() == CONFIGURATION, f"docs/configuration.md is stale: run `python {GENERATOR}`"


def test_every_setting_is_documented() -> None:
    missing = [n for n in setting_names(Settings) if f"`{n}`" not in CONFIGURATION]
    assert not missing, f"settings missing from docs/configuration.md: {missing}"


def test_every_command_is_documented() -> None:
    missing = [n for n in command_names() if f"imgaudit {n.replace('_', '-')}" not in USAGE]
    assert not missing, f"commands missing from docs/usage.md: {missing}"


def test_every_setting_has_a_description() -> None:
    def walk(model: type[BaseModel]) -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                out += walk(ann)
            elif not field.description:
                out.append(name)
        return out

    assert not walk(Settings)


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, each space a hyphen (code blocks skipped)."""
    out, fence = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"#{1,6} (.+)", line)):
            out.add(re.sub(r"[^\w\- ]", "", m[1].strip().lower()).replace(" ", "-"))
    return out


def test_relative_links_resolve() -> None:
    broken = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target}")
            elif (
                anchor
                and linked.suffix == ".md"
                and anchor not in _anchors(linked.read_text(encoding="utf-8"))
            ):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_repository_paths_exist() -> None:
    """A file the docs name (`tests/...`, `imgaudit/...`) still exists: modules and tests move."""
    named = re.compile(r"`((?:imgaudit|tests|bench|scripts|deploy|requirements|docs)/[^`\s]*)`")
    missing = [
        f"{page.name}: {path}"
        for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
        for path in named.findall(page.read_text(encoding="utf-8"))
        if not path.startswith("bench/results/") and not (ROOT / path).exists()  # results are generated
    ]
    assert not missing, missing
