"""What every ``imgaudit`` command shares: the Typer classes, the options, the error boundary (with the
settings it loads), result rows, time options and progress bars.

Two things Typer does not do on its own:

- boolean flags (``--json``, ``--yes``, ``--help``...) take no value, but Typer's help shows a ``<bool>``
  metavar after them as if they did; here they render as plain flags;
- with ``--json`` on the command line, *every* error is one JSON object on stderr, usage errors (a bad
  choice, a missing argument) included, with the same exit codes as in text mode (2 for usage, 1 for the
  rest); stdout then only ever carries result rows.

Untrusted text (file names, URLs, OCR, captions, error messages, config values) goes through
``imgaudit.cli.output`` (``safe`` inside markup, ``cell`` in tables) before it reaches the terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer.core import TyperCommand, TyperGroup

from imgaudit.cli.output import clean, console, dumps, out, safe
from imgaudit.config import Settings, load_settings
from imgaudit.errors import ImgauditError

try:  # Typer >= 0.20 ships its own copy of Click: its exceptions and context stack are the ones in use
    from typer._click.exceptions import ClickException
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - older Typer on the real Click
    # The same API from Click itself; mypy sees the names bound twice.
    from click import get_current_context  # type: ignore[no-redef]
    from click.exceptions import ClickException  # type: ignore[assignment]

T = TypeVar("T")

EXIT_USAGE = 2

# -- options ---------------------------------------------------------------------------------------------

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file.", exists=True, dir_okay=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON Lines on stdout, for scripts.")]
TargetArg = Annotated[
    str, typer.Argument(help="A folder (recursive), an image file, or a .txt list of URLs.")
]
KeyArg = Annotated[str, typer.Argument(help="Item id, external key, path or URL.")]


# -- the Typer classes -----------------------------------------------------------------------------------


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
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or "--json" not in argv:
            return super().main(argv, prog_name, complete_var, standalone_mode, windows_expand_args, **extra)
        try:
            rc = super().main(
                argv,
                prog_name,
                complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
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


# -- the error boundary ----------------------------------------------------------------------------------


@contextmanager
def errors(as_json: bool | None = None) -> Iterator[None]:
    """Every ImgauditError becomes one clear line (with ``--json``: one JSON object, on stderr) and exit
    code 1; nothing else is swallowed. ``as_json`` defaults to the running command's ``--json``."""
    try:
        yield
    except (ImgauditError, FileNotFoundError) as exc:
        if as_json is None:
            as_json = json_mode()
        if isinstance(exc, ImgauditError):
            reason, message = exc.reason, exc.message
        else:
            reason, message = "not_found", str(exc)
        if as_json:
            json_error(reason, message)
        else:
            console.print(f"[red]error:[/red] {safe(message, multiline=True)}")
        raise typer.Exit(1) from exc


@contextmanager
def command_settings(config: Path | None) -> Iterator[Settings]:
    """The settings (``--config`` file, environment, defaults), loaded inside the error boundary: an
    invalid configuration is one clear error like any other."""
    with errors():
        yield load_settings(config)


# -- results ---------------------------------------------------------------------------------------------


def emit(obj: dict[str, Any]) -> None:
    """One result row on stdout, in ``--json`` mode."""
    sys.stdout.write(dumps(obj) + "\n")


def plain(text: str) -> None:
    """One line of results that carries no markup of ours: untrusted parts shown as they are, inert."""
    out.print(clean(text), markup=False)


MODERATION_COLOUR = {"pass": "green", "review": "yellow", "violate": "red"}


def moderation_lines(decision: str | None, reasons: list[dict[str, Any]] | None) -> list[str]:
    """A moderation verdict and each reason behind it, in colour (``check`` and ``explain``)."""
    if decision is None:
        return []
    colour = MODERATION_COLOUR.get(decision, "white")
    lines = [f"  moderation: [{colour}]{safe(decision)}[/{colour}]"]
    for r in reasons or []:
        c = MODERATION_COLOUR.get(str(r["decision"]), "white")
        lines.append(f"    - [{c}]{safe(r['decision'])}[/{c}] {safe(r['category'])}: {safe(r['message'])}")
    return lines


def parse_since(value: str | None) -> datetime | None:
    """'15m', '2h', '7d', or an ISO date/time (UTC when no zone is given)."""
    if not value:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[:-1].isdigit() and value[-1] in units:
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r}: use 15m, 2h, 7d or an ISO date") from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)


# -- progress --------------------------------------------------------------------------------------------

RATE = "{task.fields[rate]}"

STEP_LABELS = {
    "visual_model": "export the visual encoder to ONNX",
    "label_space": "embed the label space for search",
}


def progress(*extra: str | ProgressColumn) -> Progress:
    """A progress display on stderr: label, bar, done of total, ``extra`` columns (text templates or
    columns), time left; the one look every command's bars share."""
    middle = [TextColumn(c) if isinstance(c, str) else c for c in extra]
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *middle,
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def with_totals_progress(label: str, fn: Callable[[Callable[[int, int], None]], T], quiet: bool) -> T:
    """``fn(report)`` under an images-per-second bar; ``report(done, total)`` gives running totals, so
    the bar learns its length from the job itself (0 when it never reports: nothing to do)."""
    if quiet:
        return fn(lambda done, total: None)
    with progress(RATE) as bar:
        task = bar.add_task(label, total=None, rate="")

        def report(done: int, total: int) -> None:
            if bar.tasks[0].total is None:  # the length is known now: count time (img/s) from here
                bar.reset(task, total=total, completed=done)
            bar.update(task, completed=done, total=total)
            t = bar.tasks[0]
            if t.elapsed:
                bar.update(task, rate=f"{t.completed / t.elapsed:.1f} img/s")

        try:
            return fn(report)
        finally:
            if bar.tasks[0].total is None:
                bar.update(task, total=0)


@contextmanager
def step_progress(quiet: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """One Rich bar per step of a one-time job, on stderr, fed ``(step, done so far, total)``; nothing
    in JSON mode."""
    if quiet:
        yield None
        return
    with progress(TimeElapsedColumn()) as bar:
        tasks: dict[str, Any] = {}

        def update(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(STEP_LABELS.get(step, step), total=total)
            bar.update(tasks[step], completed=done, total=total)

        yield update
