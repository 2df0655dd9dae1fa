"""The README documents every setting and every CLI command, or this fails."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from imgaudit.cli.main import app
from imgaudit.config import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def setting_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names += setting_names(ann, f"{prefix}{name}.")
        else:
            names.append(prefix + name)
    return names


def command_names() -> list[str]:
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    for group in app.registered_groups:
        names += [
            f"{group.name} {c.name or c.callback.__name__}" for c in group.typer_instance.registered_commands
        ]
    return names


def test_every_setting_is_documented() -> None:
    missing = [n for n in setting_names(Settings) if f"`{n}`" not in README]
    assert not missing, f"settings missing from the README's table: {missing}"


def test_every_command_is_documented() -> None:
    missing = [n for n in command_names() if f"imgaudit {n.replace('_', '-')}" not in README]
    assert not missing, f"commands missing from the README: {missing}"


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
