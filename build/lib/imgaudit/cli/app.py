"""The Typer application class every ``imgaudit`` command group is built from.

Two things Typer does not do on its own:

- boolean flags (``--json``, ``--yes``, ``--help``...) take no value, but Typer's help shows a ``<bool>``
  metavar after them as if they did; here they render as plain flags;
- with ``--json`` on the command line, *every* error is one JSON object on stderr, usage errors (a bad
  choice, a missing argument) included, with the same exit codes as in text mode (2 for usage, 1 for the
  rest); stdout then only ever carries result rows.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from imgaudit.cli.output import dumps

try:  # Typer >= 0.20 ships its own copy of Click: its exceptions and context stack are the ones in use
    from typer._click.exceptions import ClickException
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - older Typer on the real Click
    from click import get_current_context  # type: ignore[assignment,no-redef]
    from click.exceptions import ClickException  # type: ignore[assignment,no-redef]

EXIT_USAGE = 2


def json_error(reason: str, message: str) -> None:
    """The one JSON object an error becomes in ``--json`` mode, on stderr (stdout carries results)."""
    sys.stderr.write(dumps({"error": {"reason": reason, "message": message}}) + "\n")
    sys.stderr.flush()


def json_mode() -> bool:
    """Whether the running command was given ``--json`` (its parameter is ``as_json`` everywhere)."""
    ctx = get_current_context(silent=True)
    return bool(ctx is not None and ctx.params.get("as_json"))


def _flags_as_flags(params: list[Any]) -> list[Any]:
    for p in params:
        if getattr(p, "is_flag", False) and getattr(p, "metavar", "") is None:
            p.metavar = ""  # Typer's rich help then leaves the type column empty
    return params


class Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_as_flags(super().get_params(ctx))


class Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_as_flags(super().get_params(ctx))

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or "--json" not in argv:
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            rc = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            json_error("usage" if exc.exit_code == EXIT_USAGE else "error", exc.format_message())
            sys.exit(exc.exit_code)
        except typer.Abort:
            json_error("aborted", "aborted")
            sys.exit(1)
        sys.exit(rc if isinstance(rc, int) else 0)


class App(typer.Typer):
    """``typer.Typer`` whose groups and commands use the classes above."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", Group)
        super().__init__(**kwargs)

    def command(
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any
    ) -> Any:
        return super().command(name, cls=cls or Command, **kwargs)
